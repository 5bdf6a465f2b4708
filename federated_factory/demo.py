"""`federated-factory demo`: a whole federation simulated on one machine, against FedAvg, FedProx and centralized.

Stages (each timed, all numbers land in `results.json`):

1. start the project's Hub endpoint on loopback; every hospital gets its own user, token and private
   repo (an organization it shares with the aggregator's account, which may read it);
2. partition the real training split (silos by default: one class per hospital);
3. each hospital trains, audits and publishes its factory (one commit per hospital);
4. the manifest pins every factory to its commit; the aggregator pulls, synthesizes, trains, evaluates
   and publishes the classifier and the synthetic dataset (through `accelerate`);
5. FedAvg, FedProx and a centralized model train on the same partitions with the same classifier;
6. one hospital is unlearned (manifest minus its repo, rebuilt from the cache, verified from scratch);
7. `report.md` with plots.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_write_json


@dataclass
class DemoConfig:
    dataset: str = "mnist-5k"
    partition: str = "silos"
    num_clients: int | None = None
    alpha: float = 0.5
    classes_per_client: int = 2
    partition_seed: int = 0
    image_size: int | None = 16
    channels: int | None = 1
    preset: str = "demo"
    train_steps: int | None = None
    flip: str = "none"
    samples_per_class: int = 500
    sampler: str = "dpm++"
    num_inference_steps: int = 20
    synthesis_precision: str = "fp32"  # "bf16": UNet under bf16 autocast while sampling (~2x faster on CPU)
    classifier: str | None = None
    classifier_epochs: int = 15
    hflip: bool = False
    vflip: bool = False
    fl_rounds: int = 10
    fl_local_epochs: int = 1
    fedprox_mu: float = 0.01
    scaffold: bool = False  # also run SCAFFOLD (local SGD at scaffold_lr with control variates)
    scaffold_lr: float = 0.05
    unlearn: str | None = "last"  # a client index, "last", or None to skip
    verify_unlearning: bool = True
    audit_samples_per_class: int = 32
    workers: int = 2  # hospitals trained in parallel processes (1 thread each when > 1)
    output_dir: str = "demo_output"
    seed: int = 0
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    parser.add_argument("--dataset", default=d.dataset, help="mnist-5k (embedded), or any source the data layer reads")
    parser.add_argument("--partition", default=d.partition, help="silos | pathological | dirichlet | iid")
    parser.add_argument("--num-clients", type=int, default=None)
    parser.add_argument("--alpha", type=float, default=d.alpha, help="Dirichlet concentration")
    parser.add_argument("--classes-per-client", type=int, default=d.classes_per_client)
    parser.add_argument("--image-size", type=int, default=d.image_size, help="0 keeps the native size")
    parser.add_argument("--channels", type=int, default=d.channels, help="1 or 3; 0 keeps the native mode")
    parser.add_argument("--preset", default=d.preset, help="factory preset: tiny | demo | cpu | gpu")
    parser.add_argument("--train-steps", type=int, default=None, help="override the preset's factory steps")
    parser.add_argument("--flip", default=d.flip, choices=("none", "h", "hv"), help="factory flip augmentation")
    parser.add_argument("--samples-per-class", type=int, default=d.samples_per_class)
    parser.add_argument("--sampler", default=d.sampler)
    parser.add_argument("--num-inference-steps", type=int, default=d.num_inference_steps)
    parser.add_argument("--synthesis-precision", default=d.synthesis_precision, choices=("fp32", "bf16"),
                        help="bf16: sample with the UNet under bf16 autocast (about 2x faster on CPUs with bf16)")
    parser.add_argument("--classifier", default=None, help="classifier arch, e.g. timm/ff_cnn (default: the package default)")
    parser.add_argument("--classifier-epochs", type=int, default=d.classifier_epochs)
    parser.add_argument("--hflip", action="store_true", help="horizontal flips for the classifier (not for digits)")
    parser.add_argument("--vflip", action="store_true")
    parser.add_argument("--fl-rounds", type=int, default=d.fl_rounds)
    parser.add_argument("--fl-local-epochs", type=int, default=d.fl_local_epochs)
    parser.add_argument("--fedprox-mu", type=float, default=d.fedprox_mu)
    parser.add_argument("--scaffold", action="store_true", help="also run SCAFFOLD (same rounds and local epochs)")
    parser.add_argument("--scaffold-lr", type=float, default=d.scaffold_lr, help="SCAFFOLD's local SGD learning rate")
    parser.add_argument("--unlearn", default=d.unlearn, help="client index or 'last' to unlearn; 'none' to skip")
    parser.add_argument("--no-verify-unlearning", action="store_true", help="skip the from-scratch rebuild check")
    parser.add_argument("--workers", type=int, default=d.workers,
                        help="hospitals trained in parallel processes, one thread each (1: in this process)")
    parser.add_argument("--output-dir", default=d.output_dir)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--no-progress", action="store_true")


def config_from_args(args) -> DemoConfig:
    return DemoConfig(
        dataset=args.dataset, partition=args.partition, num_clients=args.num_clients, alpha=args.alpha,
        classes_per_client=args.classes_per_client, image_size=args.image_size or None,
        channels=args.channels or None, preset=args.preset, train_steps=args.train_steps, flip=args.flip,
        samples_per_class=args.samples_per_class, sampler=args.sampler,
        num_inference_steps=args.num_inference_steps, synthesis_precision=args.synthesis_precision,
        classifier=args.classifier,
        classifier_epochs=args.classifier_epochs, hflip=args.hflip, vflip=args.vflip, fl_rounds=args.fl_rounds,
        fl_local_epochs=args.fl_local_epochs, fedprox_mu=args.fedprox_mu,
        scaffold=args.scaffold, scaffold_lr=args.scaffold_lr,
        unlearn=None if str(args.unlearn).lower() == "none" else args.unlearn,
        verify_unlearning=not args.no_verify_unlearning, output_dir=args.output_dir, seed=args.seed, workers=args.workers,
        progress=not args.no_progress,
    )


def run_demo_cli(args) -> int:
    results = run_demo(config_from_args(args))
    print_summary(results)
    return 0


@dataclass
class _Federation:
    """Who is who on the demo's Hub: one user + organization per hospital, one aggregator account."""

    clients: list[dict] = field(default_factory=list)  # {"name", "user", "token", "repo"}
    aggregator_user: str = "aggregator"
    aggregator_token: str = ""


def _client_names(partition) -> list[str]:
    return [f"hospital-{i:02d}" for i in range(partition.num_clients)]


def run_demo(config: DemoConfig) -> dict:
    """Run every stage and return the results (also written to ``<output_dir>/results.json``)."""
    from .hub.env import free_port, use_endpoint

    out = Path(config.output_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    port = free_port()
    use_endpoint(f"http://127.0.0.1:{port}")
    _quiet_library_progress_bars()
    os.environ.setdefault("FEDERATED_FACTORY_CACHE", str(out / "cache"))

    from .hub.server import HubServer

    timings: dict[str, float] = {}
    t_demo = time.perf_counter()
    server = HubServer(out / "hub", tokens={}, host="127.0.0.1", port=port)
    server.start()
    try:
        results = _run_stages(config, out, server, timings)
    finally:
        server.stop()
    timings["total_seconds"] = time.perf_counter() - t_demo
    results["timings"] = timings
    _write_results(out, results)
    from .report import render_report

    render_report(out)
    return results


def _quiet_library_progress_bars() -> None:
    """The demo draws its own bars; the libraries' per-file download/load/save bars would drown them."""
    import datasets
    import diffusers
    import huggingface_hub

    huggingface_hub.utils.disable_progress_bars()
    datasets.disable_progress_bars()
    diffusers.utils.logging.disable_progress_bar()


def _write_results(out: Path, results: dict) -> None:
    atomic_write_json(out / "results.json", results, default=_json_default)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _run_stages(config: DemoConfig, out: Path, server, timings: dict) -> dict:
    import torch
    from accelerate import Accelerator

    from .baselines import run_centralized, run_fedavg, run_scaffold
    from .classifier import ClassifierConfig
    from .client import preset
    from .data import describe, load_image_splits
    from .hub.manifest import FactoryEntry, Manifest, SynthesisConfig
    from .partition import partition_dataset, plot_heatmap, summary_table

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    progress = config.progress

    # ---- data and partition ------------------------------------------------------------------
    t0 = time.perf_counter()
    splits = load_image_splits(config.dataset, image_size=config.image_size, channels=config.channels)
    if "test" not in splits:
        raise ValueError(f"{config.dataset} has no test split; the demo evaluates on real held-out data")
    train, test = splits["train"], splits["test"]
    label_space = train.features["label"].names
    partition = partition_dataset(train, config.partition, num_clients=config.num_clients, seed=config.partition_seed,
                                  alpha=config.alpha, classes_per_client=config.classes_per_client)
    client_sets = [partition.client_dataset(train, i) for i in range(partition.num_clients)]
    plot_heatmap(partition, train, out / "partition_heatmap.png")
    table = summary_table(partition, train)
    print(table)
    timings["data_seconds"] = time.perf_counter() - t0
    info = describe(train)
    width, _ = info["image_size"]
    channels = info["channels"]

    # ---- Hub identities ----------------------------------------------------------------------
    fed = _Federation(aggregator_token=f"hf_{secrets.token_hex(16)}")
    server.add_token(fed.aggregator_token, fed.aggregator_user, "write")
    for name in _client_names(partition):
        user, token = f"{name}-ml", f"hf_{secrets.token_hex(16)}"
        server.add_token(token, user, "write")
        server.set_org(name, [user, fed.aggregator_user])
        fed.clients.append({"name": name, "user": user, "token": token, "repo": f"{name}/factory"})

    # ---- clients: train, audit, publish ------------------------------------------------------
    overrides = {"image_size": width, "channels": channels, "flip": config.flip, "seed": config.seed}
    if config.train_steps:
        overrides["train_steps"] = config.train_steps
    factory_config = preset(config.preset, **overrides)
    t0 = time.perf_counter()
    jobs = [
        {"endpoint": server.url, "client": client, "dataset": data, "config": factory_config.to_dict(),
         "output_dir": str(out / "clients" / client["name"]), "audit_samples": config.audit_samples_per_class,
         "threads": None, "progress": progress and config.workers == 1}
        for client, data in zip(fed.clients, client_sets)
    ]
    clients = _train_clients(jobs, config.workers, progress)
    timings["clients_seconds"] = time.perf_counter() - t0

    # ---- aggregator --------------------------------------------------------------------------
    classifier = ClassifierConfig(epochs=config.classifier_epochs, hflip=config.hflip, vflip=config.vflip,
                                  seed=config.seed, **({"arch": config.classifier} if config.classifier else {}))
    manifest = Manifest(
        federation=f"{config.dataset}-{config.partition}",
        label_space=list(label_space),
        factories=[FactoryEntry(c["repo"], c["revision"]) for c in clients],
        synthesis=SynthesisConfig(samples_per_class=config.samples_per_class, sampler=config.sampler,
                                  num_inference_steps=config.num_inference_steps, batch_size=100, seed=config.seed,
                                  precision=config.synthesis_precision),
        classifier=classifier.to_dict(),
        evaluation={"dataset": config.dataset, "split": "test", "image_size": config.image_size,
                    "channels": config.channels},
        output_dir=str(out / "aggregate"),
        publish={"classifier_repo": f"{fed.aggregator_user}/global-classifier",
                 "dataset_repo": f"{fed.aggregator_user}/synthetic-data", "private": True},
    )
    manifest.save(out / "manifest.yaml")
    from .aggregator import aggregate

    t0 = time.perf_counter()
    aggregation = aggregate(manifest, token=fed.aggregator_token, accelerator=accelerator,
                            output_dir=out / "aggregate", cache_dir=out / "cache", progress=progress)
    timings["aggregation_seconds"] = time.perf_counter() - t0
    _real_vs_synthetic(train, out / "aggregate" / "synthetic", out / "real_vs_synthetic.png")
    download_bytes = sum(c["upload_bytes"] for c in clients)

    # ---- baselines ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    centralized = run_centralized(client_sets, test, classifier, progress=progress)
    timings["centralized_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fedavg = run_fedavg(client_sets, test, classifier, rounds=config.fl_rounds, local_epochs=config.fl_local_epochs,
                        mu=0.0, seed=config.seed, progress=progress, device=accelerator.device)
    timings["fedavg_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fedprox = run_fedavg(client_sets, test, classifier, rounds=config.fl_rounds, local_epochs=config.fl_local_epochs,
                         mu=config.fedprox_mu, seed=config.seed, progress=progress, device=accelerator.device)
    timings["fedprox_seconds"] = time.perf_counter() - t0
    scaffold = None
    if config.scaffold:
        t0 = time.perf_counter()
        scaffold = run_scaffold(client_sets, test, classifier, rounds=config.fl_rounds,
                                local_epochs=config.fl_local_epochs, local_lr=config.scaffold_lr, seed=config.seed,
                                progress=progress, device=accelerator.device)
        timings["scaffold_seconds"] = time.perf_counter() - t0

    # ---- unlearning --------------------------------------------------------------------------
    unlearning = None
    if config.unlearn is not None and len(clients) > 1:
        index = len(clients) - 1 if config.unlearn == "last" else int(config.unlearn)
        from .unlearning import unlearn

        t0 = time.perf_counter()
        unlearning = unlearn(aggregation.manifest, clients[index]["repo"], reason="demo: hospital leaves the federation",
                             previous_output_dir=out / "aggregate", output_dir=out / "unlearned",
                             cache_dir=out / "cache", token=fed.aggregator_token, accelerator=accelerator,
                             verify_from_scratch=config.verify_unlearning, progress=progress)
        timings["unlearning_seconds"] = time.perf_counter() - t0

    ff_eval = aggregation.evaluation or {}
    return {
        "config": config.to_dict(),
        "factory_config": factory_config.to_dict(),
        "machine": _machine(),
        "dataset": {"train": describe(train), "test": describe(test)},
        "partition": {"scheme": partition.scheme, "num_clients": partition.num_clients,
                      "counts": partition.counts(train).tolist(), "client_names": [c["name"] for c in fed.clients],
                      "class_names": list(label_space), "table": table},
        "clients": clients,
        "manifest": aggregation.manifest.to_dict(),
        "federated_factory": {
            **{k: ff_eval.get(k) for k in ("accuracy", "macro_f1", "auroc", "per_class_recall", "confusion_matrix", "n")},
            "synthesis": aggregation.synthesis,
            "training": aggregation.training,
            "published": aggregation.published,
            "timings": aggregation.timings,
            "communication": {
                "per_client_upload_bytes": {c["name"]: c["upload_bytes"] for c in clients},
                "per_client_download_bytes": {c["name"]: 0 for c in clients},
                "aggregator_download_bytes": download_bytes,
                "total_bytes": 2 * download_bytes,
                "rounds": 1,
            },
        },
        "centralized": _strip(centralized),
        "fedavg": _strip(fedavg),
        "fedprox": {**_strip(fedprox), "mu": config.fedprox_mu},
        **({"scaffold": _strip(scaffold)} if scaffold is not None else {}),
        "unlearning": unlearning,
    }


def _real_vs_synthetic(train, synthetic_dir: Path, path: Path, per_side: int = 8) -> None:
    """One row per class: real training images (left) next to synthetic ones (right)."""
    from datasets import load_from_disk

    from .plots import image_grid
    from .tensors import images_to_uint8

    synthetic = load_from_disk(str(synthetic_dir))
    channels = 1 if train[0]["image"].mode == "L" else 3
    real_labels, synth_labels = np.asarray(train["label"]), np.asarray(synthetic["label"])
    names, synth_names = train.features["label"].names, synthetic.features["label"].names
    rows = []
    for name in names:
        real = images_to_uint8(train.select(np.flatnonzero(real_labels == names.index(name))[:per_side])["image"], channels)
        if name in synth_names and (synth_labels == synth_names.index(name)).any():
            idx = np.flatnonzero(synth_labels == synth_names.index(name))[:per_side]
            fake = images_to_uint8(synthetic.select(idx)["image"], channels)
        else:
            fake = np.zeros((0, *real.shape[1:]), np.uint8)
        gap = np.full((1, *real.shape[1:]), 255, np.uint8)
        rows.append(np.concatenate([real, gap, fake]))
    image_grid(rows, scale=3).save(path)


def _train_client(job: dict) -> dict:
    """One hospital's job (also run in a worker process): train, audit, publish; returns its summary."""
    from .hub.env import use_endpoint

    use_endpoint(job["endpoint"])
    _quiet_library_progress_bars()
    import torch

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    from .client import FactoryConfig, run_client

    client, started = job["client"], time.perf_counter()
    published, metadata = run_client(
        job["dataset"], client["repo"], FactoryConfig.from_dict(job["config"]), token=client["token"],
        output_dir=job["output_dir"], audit_samples_per_class=job["audit_samples"], progress=job["progress"],
    )
    return {
        "name": client["name"],
        "repo": published.repo_id,
        "revision": published.revision,
        "classes": metadata["classes"],
        "class_counts": metadata["class_counts"],
        "train_images_per_second": metadata["train_stats"]["images_per_second"],
        "train_seconds": metadata["train_stats"]["wall_seconds"],
        "final_loss": metadata["train_stats"]["final_loss"],
        "privacy_copy_rate": metadata["privacy_audit"]["copy_rate"],
        "privacy_passed": metadata["privacy_audit"]["passed"],
        "upload_bytes": _published_bytes(Path(job["output_dir"]) / "pipeline"),
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - started,
    }


def _train_clients(jobs: list[dict], workers: int, progress: bool) -> list[dict]:
    """Run the hospitals' jobs, in this process or in ``workers`` spawned processes (one thread each:
    on a small CPU two single-thread trainings outrun one two-thread training by about a quarter)."""
    from tqdm.auto import tqdm

    if workers <= 1:
        return [_train_client(job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    for job in jobs:
        job["threads"] = 1
    results: dict[str, dict] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_client, job): job["client"]["name"] for job in jobs}
        bar = tqdm(total=len(jobs), desc=f"hospitals ({workers} in parallel)", unit="factory", disable=not progress)
        from concurrent.futures import as_completed

        for future in as_completed(futures):
            summary = future.result()
            results[summary["name"]] = summary
            bar.set_postfix(last=summary["name"], img_s=f"{summary['train_images_per_second']:.0f}")
            bar.update(1)
        bar.close()
    return [results[job["client"]["name"]] for job in jobs]


def _strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "model"}


def _published_bytes(pipeline_dir: Path) -> int:
    return sum(p.stat().st_size for p in pipeline_dir.rglob("*") if p.is_file())


def _machine() -> dict:
    import platform

    import torch

    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(), "python": platform.python_version(),
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def print_summary(results: dict) -> None:
    """The final table on the terminal."""
    rows = [("FederatedFactory (synthetic only)", results["federated_factory"]), ("FedAvg", results["fedavg"]),
            ("FedProx", results["fedprox"])]
    if "scaffold" in results:
        rows.append(("SCAFFOLD", results["scaffold"]))
    rows.append(("Centralized (real data)", results["centralized"]))
    central = results["centralized"]["accuracy"]
    print()
    print(f"{'method':36s} {'accuracy':>9s} {'macro-F1':>9s} {'AUROC':>7s} {'vs central':>11s}")
    for name, r in rows:
        print(f"{name:36s} {r['accuracy']:9.4f} {r['macro_f1']:9.4f} {r['auroc']:7.4f} {r['accuracy'] / central:10.1%}")
    if results.get("unlearning"):
        u = results["unlearning"]
        print(f"\nunlearned {u['removed']['repo']}: {u['examples_from_removed']} examples left from it, "
              f"{u['chunks_regenerated']} chunks regenerated, classes removed: {', '.join(u['classes_removed']) or 'none'}; "
              f"from-scratch check: {u['from_scratch_check']}")
    print(f"\ntotal wall time {results['timings']['total_seconds'] / 60:.1f} min; report: "
          f"{Path(results['config']['output_dir']) / 'report.md'}")
