#!/usr/bin/env python
"""FederatedFactory vs FedAvg vs FedProx vs centralized on any dataset the data layer reads.

Runs the demo machinery (`federated_factory.demo.run_demo`) with the given options, then copies the small
artefacts (results.json, report.md, PNGs, the unlearning certificate) to benchmarks/results/<name>/ with
the command that produced them. Large outputs (Hub data, caches) stay in --work-dir.

A run longer than one session on a machine that does not keep --work-dir between sessions carries its
finished factories in the repository: `--save-factories` copies each published factory (the diffusers
pipeline as safetensors and JSON, factory.json, client_summary.json, the sample grid; never a checkpoint or
an image it trained on) and the run's demo_config.json to benchmarks/results/<name>/factories/, and
`--restore-factories` puts them back in a work dir, where `--resume` republishes them instead of training.

    python benchmarks/federation.py --name blood-cells-32-silos-cpu -- \\
        --dataset ../shared/data/blood-cells-32 --image-size 32 --channels 3 --preset cpu --flip hv --hflip --vflip
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from federated_factory.demo import config_from_args, demo_argument_parser, print_summary, run_demo  # noqa: E402

ARTEFACTS = ["results.json", "report.md", "methods.png", "partition_heatmap.png", "unlearning_recall.png",
             "real_vs_synthetic.png", "aggregate/confusion_matrix.png", "aggregate/synthetic_samples.png",
             "aggregate/synthetic_label_distribution.png", "aggregate/classifier_history.png",
             "unlearned/unlearning_certificate.json", "unlearned/confusion_matrix.png"]
KEPT_DIR = "factories"  # benchmarks/results/<name>/factories/: the run's finished factories (--save-factories)
# What a kept factory may hold, relative to its hospital's folder: the published pipeline's weights (safetensors
# only) and configs, and the hospital's records. Checkpoints (torch pickles) and anything else are never kept.
KEPT_FILES = ("factory.json", "client_summary.json", "samples.png")
KEPT_PIPELINE_SUFFIXES = (".json", ".safetensors")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="results go to benchmarks/results/<name>/")
    parser.add_argument("--work-dir", default=None, help="where the run's full output goes (default: runs/<name>)")
    parser.add_argument("--factories-only", action="store_true",
                        help="run nothing: record the factories a --resume run has finished so far in "
                             "benchmarks/results/<name>/factories.json")
    parser.add_argument("--save-factories", action="store_true",
                        help="run nothing: like --factories-only, and also copy each finished factory and the "
                             "run's demo_config.json to benchmarks/results/<name>/factories/")
    parser.add_argument("--restore-factories", action="store_true",
                        help="run nothing: copy the factories kept by --save-factories into --work-dir, where "
                             "a --resume run republishes them")
    parser.add_argument("demo_args", nargs=argparse.REMAINDER, help="options of `federated-factory demo` (after --)")
    args = parser.parse_args()
    demo_argv = [a for a in args.demo_args if a != "--"]
    demo_parser = demo_argument_parser(prog="federated-factory demo")
    work_dir = args.work_dir or f"runs/{args.name}"
    target = Path(__file__).resolve().parent / "results" / args.name
    if args.factories_only or args.save_factories:
        status = record_finished_factories(Path(work_dir), target / "factories.json")
        return status or (save_factories(Path(work_dir), target / KEPT_DIR) if args.save_factories else 0)
    if args.restore_factories:
        return restore_factories(target / KEPT_DIR, Path(work_dir))
    demo_args = demo_parser.parse_args(demo_argv + ["--output-dir", work_dir])
    t0 = time.time()
    results = run_demo(config_from_args(demo_args))
    print_summary(results)

    target.mkdir(parents=True, exist_ok=True)
    for name in ARTEFACTS:
        src = Path(work_dir) / name
        if src.exists():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, target / name)
    command = "python benchmarks/federation.py --name " + args.name + " -- " + " ".join(demo_argv)
    (target / "COMMAND.md").write_text(
        f"# {args.name}\n\nProduced by:\n\n```\n{command}\n```\n\nMachine: {json.dumps(results.machine)}\n\n"
        f"Wall time: {(time.time() - t0) / 60:.1f} min.\n"
    )
    print(f"results copied to {target}")
    return 0


def record_finished_factories(work_dir: Path, path: Path) -> int:
    """Write what each finished hospital's factory.json says about its training and audit (no weights)."""
    from federated_factory.atomic import atomic_write_json
    from federated_factory.client import FACTORY_METADATA_FILE
    from federated_factory.demo import CLIENT_SUMMARY_FILE

    if not (work_dir / "clients").is_dir():
        print(f"error: {work_dir} holds no clients/ folder: not the work dir of a demo run", file=sys.stderr)
        return 2
    finished = {}
    for folder in sorted((work_dir / "clients").glob("*")):
        if not (folder / CLIENT_SUMMARY_FILE).is_file():
            continue
        factory = json.loads((folder / FACTORY_METADATA_FILE).read_text())
        stats, audit = factory["train_stats"], factory["privacy_audit"]
        finished[folder.name] = {
            "classes": factory["classes"], "class_counts": factory["class_counts"], "steps": stats["steps"],
            "images_per_second": stats["images_per_second"], "train_seconds": stats["wall_seconds"],
            "final_loss": stats["final_loss"], "precision": stats.get("precision"),
            # A factory continued from a checkpoint: its rate and train time cover the steps after this one.
            "resumed_from_step": stats.get("resumed_from_step", 0),
            "privacy_copy_rate": audit["copy_rate"], "privacy_passed": audit["passed"],
            "training_set_fingerprint": factory["training_set_fingerprint"],
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"work_dir": str(work_dir), "finished": finished,
                             "recorded_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    print(f"{len(finished)} finished factories recorded in {path}")
    return 0


def _kept_files(folder: Path) -> list[Path]:
    """The files of a finished hospital's folder that --save-factories keeps, relative to the folder."""
    pipeline = sorted(p.relative_to(folder) for p in (folder / "pipeline").rglob("*") if p.is_file())
    strays = [str(p) for p in pipeline if p.suffix not in KEPT_PIPELINE_SUFFIXES]
    if strays:
        raise ValueError(f"{folder / 'pipeline'} holds files that are not safetensors or JSON: {strays}")
    return [Path(name) for name in KEPT_FILES] + pipeline


def _copy_folder(src: Path, files: list[Path], dest: Path) -> None:
    """Copy ``files`` (relative to ``src``) to a new folder ``dest``, all or nothing: they go to a temporary
    sibling first, renamed to ``dest`` once every file is there."""
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in files:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, tmp / name)
    tmp.rename(dest)


def _same_factory(a: Path, b: Path) -> bool:
    return all((a / name).read_bytes() == (b / name).read_bytes()
               for name in ("factory.json", "pipeline/unet/diffusion_pytorch_model.safetensors"))


def save_factories(work_dir: Path, kept: Path) -> int:
    """Copy each factory the run in ``work_dir`` has published, and its demo_config.json, into ``kept``.
    A factory kept earlier stays; one that differs from the run's (another run of the same name) is an error."""
    from federated_factory.atomic import atomic_write_bytes
    from federated_factory.demo import CLIENT_SUMMARY_FILE, RUN_CONFIG_FILE

    kept.mkdir(parents=True, exist_ok=True)
    config = (work_dir / RUN_CONFIG_FILE).read_bytes()
    if (kept / RUN_CONFIG_FILE).is_file() and not _same_factory_options(kept / RUN_CONFIG_FILE, config):
        print(f"error: {kept} keeps the factories of a run with other factory options than {work_dir}'s",
              file=sys.stderr)
        return 2
    new = 0
    for folder in sorted((work_dir / "clients").glob("*")):
        if not (folder / CLIENT_SUMMARY_FILE).is_file():
            continue  # still training: its checkpoint is not kept
        dest = kept / folder.name
        if dest.is_dir():
            if not _same_factory(folder, dest):
                print(f"error: {dest} keeps another factory than {folder}", file=sys.stderr)
                return 2
            continue
        try:
            files = _kept_files(folder)
        except ValueError as err:
            print(f"error: {err}; nothing of it is kept", file=sys.stderr)
            return 2
        _copy_folder(folder, files, dest)
        new += 1
    atomic_write_bytes(kept / RUN_CONFIG_FILE, config)
    total = sum(1 for p in kept.iterdir() if p.is_dir() and not p.name.startswith("."))
    print(f"{new} factories newly kept in {kept} ({total} in all)")
    return 0


def _same_factory_options(saved: Path, config: bytes) -> bool:
    from federated_factory.demo import FACTORY_OPTIONS

    then, now = json.loads(saved.read_text()), json.loads(config)
    return all(then.get(k) == now.get(k) for k in FACTORY_OPTIONS)


def restore_factories(kept: Path, work_dir: Path) -> int:
    """Copy the factories kept in ``kept`` into ``work_dir/clients/`` (with the run's demo_config.json when the
    work dir has none), so that `federated-factory demo --resume` there republishes them. A hospital the work
    dir already holds, finished or in training, is left as it is."""
    from federated_factory.atomic import atomic_write_bytes
    from federated_factory.demo import RUN_CONFIG_FILE

    if not (kept / RUN_CONFIG_FILE).is_file():
        print(f"error: {kept} keeps no factories (no {RUN_CONFIG_FILE}); save them with --save-factories",
              file=sys.stderr)
        return 2
    config = (kept / RUN_CONFIG_FILE).read_bytes()
    if (work_dir / RUN_CONFIG_FILE).is_file():
        if not _same_factory_options(work_dir / RUN_CONFIG_FILE, config):
            print(f"error: {work_dir} holds a run with other factory options than the kept factories'",
                  file=sys.stderr)
            return 2
    elif work_dir.exists() and any(work_dir.iterdir()):
        print(f"error: {work_dir} is not empty and holds no {RUN_CONFIG_FILE}: not a run's work dir",
              file=sys.stderr)
        return 2
    else:
        work_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(work_dir / RUN_CONFIG_FILE, config)
    restored = []
    for folder in sorted(p for p in kept.iterdir() if p.is_dir() and not p.name.startswith(".")):
        dest = work_dir / "clients" / folder.name
        if dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        _copy_folder(folder, _kept_files(folder), dest)
        restored.append(folder.name)
    print(f"{len(restored)} factories restored into {work_dir / 'clients'}: {', '.join(restored) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
