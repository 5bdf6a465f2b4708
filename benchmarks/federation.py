#!/usr/bin/env python
"""FederatedFactory vs FedAvg vs FedProx vs centralized on any dataset the data layer reads.

Runs the demo machinery (`federated_factory.demo.run_demo`) with the given options, then copies the small
artefacts (results.json, report.md, PNGs, the unlearning certificate) to benchmarks/results/<name>/ with
the command that produced them. Large outputs (Hub data, caches) stay in --work-dir.

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="results go to benchmarks/results/<name>/")
    parser.add_argument("--work-dir", default=None, help="where the run's full output goes (default: runs/<name>)")
    parser.add_argument("--factories-only", action="store_true",
                        help="run nothing: record the factories a --resume run has finished so far in "
                             "benchmarks/results/<name>/factories.json")
    parser.add_argument("demo_args", nargs=argparse.REMAINDER, help="options of `federated-factory demo` (after --)")
    args = parser.parse_args()
    demo_argv = [a for a in args.demo_args if a != "--"]
    demo_parser = demo_argument_parser(prog="federated-factory demo")
    work_dir = args.work_dir or f"runs/{args.name}"
    target = Path(__file__).resolve().parent / "results" / args.name
    if args.factories_only:
        return record_finished_factories(Path(work_dir), target / "factories.json")
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


if __name__ == "__main__":
    sys.exit(main())
