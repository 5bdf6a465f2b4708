"""`federated-factory demo`: a whole federation simulated on one machine, against FedAvg, FedProx and centralized.

One function per stage, each returning a typed result (all numbers land in `results.json`):

1. :func:`prepare_data`: load the dataset and partition its training split (silos by default: one class
   per hospital) → :class:`DataStage`;
2. :func:`register_identities`: on the project's Hub endpoint (started on loopback by :func:`run_demo`),
   every hospital gets its own user, token and organization, shared with the aggregator's account, which
   may read it → :class:`Federation`;
3. :func:`train_factories`: each hospital trains, audits and publishes its factory (one commit per
   hospital) → :class:`FactoriesStage`;
4. :func:`aggregate_factories`: the manifest pins every factory to its commit; the aggregator pulls,
   synthesizes, trains, evaluates and publishes the classifier and the synthetic dataset (through
   `accelerate`) → :class:`AggregationStage`;
5. :func:`run_baselines`: FedAvg, FedProx (and SCAFFOLD) and a centralized model train on the same
   partitions with the same classifier (``--baselines`` picks them) → :class:`BaselinesStage`;
6. :func:`train_network_experts` (``--mode network`` or ``both``): the network-of-hospitals mode; every
   hospital trains its own expert on its partition plus the synthetic images of the classes it lacks (the
   aggregator's cached chunks), and the experts are combined into the product-of-experts federation model
   → :class:`NetworkStage`;
7. :func:`unlearn_hospital`: one hospital is unlearned (manifest minus its repo, rebuilt from the cache,
   verified from scratch, superseded revisions purged) → its certificate;
8. :func:`federated_factory.report.render_report`: `report.md` with plots, from :class:`DemoResults`.

The options are one dataclass, :class:`DemoConfig`; transformers' ``HfArgumentParser`` turns its fields
into the command's flags (``--samples-per-class``, ``--no-progress``, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import secrets
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .atomic import atomic_write_json
from .errors import DemoError


MODES = ("server", "network", "both")
BASELINES = ("centralized", "fedavg", "fedprox", "scaffold")  # what --baselines may name, in the order they run
RUN_CONFIG_FILE = "demo_config.json"  # the options of the run that wrote an output dir (what --resume checks)
CLIENT_SUMMARY_FILE = "client_summary.json"  # written in a hospital's dir once its factory is published
# Kept by --resume: the hospitals' dirs and the synthesis chunk cache (keyed by factory content, class, seed and
# sampler: a republished factory's chunks are the ones already generated).
KEPT_ON_RESUME = ("clients", "cache", RUN_CONFIG_FILE)
# The options a hospital's factory depends on (its data, the factory training, the audit): --resume reuses the
# factories only when these are the earlier run's. Every other option (synthesis, classifier, baselines, modes,
# unlearning, workers) may change: the stages after the hospitals' rerun with it.
FACTORY_OPTIONS = ("dataset", "partition", "num_clients", "alpha", "classes_per_client", "partition_seed", "image_size",
                   "channels", "preset", "train_steps", "flip", "factory_precision", "audit_samples_per_class", "seed")


@dataclass
class DemoConfig:
    """Every option of the demo; each field is also a ``--flag`` of ``federated-factory demo``."""

    dataset: str = field(default="mnist-5k", metadata={"help": "mnist-5k (embedded), or any source the data layer reads"})
    partition: str = field(default="silos", metadata={"help": "silos | pathological | dirichlet | iid"})
    num_clients: int | None = field(default=None, metadata={"help": "number of hospitals (default: the scheme's)"})
    alpha: float = field(default=0.5, metadata={"help": "Dirichlet concentration"})
    classes_per_client: int = field(default=2, metadata={"help": "classes per hospital (pathological)"})
    partition_seed: int = field(default=0, metadata={"help": "seed of the partition"})
    image_size: int | None = field(default=16, metadata={"help": "resize to N×N; 0 keeps the native size"})
    channels: int | None = field(default=1, metadata={"help": "1 or 3; 0 keeps the native mode"})
    preset: str = field(default="demo", metadata={"help": "factory preset: tiny | demo | cpu | gpu"})
    train_steps: int | None = field(default=None, metadata={"help": "override the preset's factory steps"})
    flip: Literal["none", "h", "hv"] = field(default="none", metadata={"help": "factory flip augmentation"})
    factory_precision: Literal["auto", "no", "bf16"] | None = field(default=None, metadata={
        "help": "override the preset's factory training precision: no (fp32), bf16 (autocast), or auto (bf16 "
                "where the machine runs it natively); a benchmark whose seeds span machines pins it"})
    samples_per_class: int = field(default=250, metadata={"help": "synthetic images per class"})
    sampler: str = field(default="dpm++", metadata={"help": "diffusion sampler of the synthesis"})
    num_inference_steps: int = field(default=20, metadata={"help": "sampler steps per image"})
    synthesis_precision: Literal["fp32", "bf16"] = field(
        default="fp32", metadata={"help": "bf16: sample with the UNet under bf16 autocast"})
    classifier: str | None = field(
        default=None, metadata={"help": "classifier arch, e.g. timm/ff_cnn (default: the package default)"})
    classifier_epochs: int = field(default=15, metadata={"help": "epochs of the aggregator's and centralized classifier"})
    hflip: bool = field(default=False, metadata={"help": "horizontal flips for the classifier (not for digits)"})
    vflip: bool = field(default=False, metadata={"help": "vertical flips for the classifier"})
    fl_rounds: int = field(default=10, metadata={"help": "rounds of FedAvg / FedProx / SCAFFOLD"})
    fl_local_epochs: int = field(default=1, metadata={"help": "local epochs per round"})
    fedprox_mu: float = field(default=0.01, metadata={"help": "FedProx's proximal weight"})
    baselines: str = field(default="centralized,fedavg,fedprox", metadata={
        "help": "the real-data comparisons to run, comma-separated, among centralized, fedavg, fedprox, scaffold; "
                "'none' for none (a benchmark whose baselines run elsewhere, e.g. benchmarks/evidence.py)"})
    scaffold: bool = field(default=False, metadata={"help": "also run SCAFFOLD (same as adding it to --baselines)"})
    scaffold_lr: float = field(default=0.05, metadata={"help": "SCAFFOLD's local SGD learning rate"})
    mode: str = field(default="both", metadata={
        "help": "server: the aggregator trains one classifier; network: every hospital trains an expert and the "
                "federation predicts with their product; both (default): side by side"})
    expert_epochs: int | None = field(default=8, metadata={
        "help": "epochs of each hospital's expert in network mode, at most classifier_epochs (default 8, "
                "to keep the default demo within 15 minutes on 2 cores; 0: classifier_epochs)"})
    expert_top_up: bool = field(default=False, metadata={
        "help": "network mode: a class a hospital holds fewer images of than samples_per_class is topped up with "
                "synthetic rows (for partitions where hospitals share classes; default: own classes get none)"})
    unlearn: str | None = field(default="last", metadata={"help": "hospital index or 'last' to unlearn; 'none' to skip"})
    verify_unlearning: bool = field(default=True, metadata={"help": "rebuild the reduced manifest from scratch"})
    audit_samples_per_class: int = field(default=32, metadata={"help": "privacy-audit samples per class"})
    workers: int = field(
        default=2, metadata={"help": "hospitals trained in parallel processes, one thread each (1: in this process)"})
    output_dir: str = field(default="demo_output", metadata={"help": "where every output goes (emptied first)"})
    resume: bool = field(default=False, metadata={
        "help": "keep the hospitals' finished factories, training checkpoints and synthetic chunks of an earlier "
                "run in output_dir (the options that shape a factory must be the same; the factories are "
                "republished to this run's endpoint) and rerun the rest; without it, output_dir is emptied first"})
    seed: int = field(default=0, metadata={"help": "seed of training, synthesis and baselines"})
    evaluation_split: str = field(default="test", metadata={
        "help": "the real held-out split every method is scored on: test (default), or validation to score a "
                "candidate setting without reading test (benchmarks/README.md, evaluation protocol)"})
    progress: bool = field(default=True, metadata={"help": "progress bars"})

    def __post_init__(self) -> None:
        # The command line spells "keep native" and "skip" as 0 and "none".
        self.image_size = self.image_size or None
        self.channels = self.channels or None
        if self.unlearn is not None and str(self.unlearn).lower() == "none":
            self.unlearn = None
        if self.unlearn not in (None, "last") and not str(self.unlearn).isdigit():
            raise DemoError(f"DemoConfig.unlearn must be a hospital index, 'last' or 'none', got {self.unlearn!r}")
        if self.mode not in MODES:
            raise DemoError(f"DemoConfig.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        self.expert_epochs = self.expert_epochs or None
        names = [b.strip() for b in self.baselines.split(",") if b.strip()]
        if [b.lower() for b in names] == ["none"]:
            names = []
        unknown = [b for b in names if b not in BASELINES]
        if unknown:
            raise DemoError(f"DemoConfig.baselines: unknown baseline(s) {', '.join(map(repr, unknown))}; choose among "
                            f"{', '.join(BASELINES)}, or 'none'")
        if self.scaffold and "scaffold" not in names:
            names.append("scaffold")
        self.scaffold = "scaffold" in names
        self.baselines = ",".join(b for b in BASELINES if b in names) or "none"
        if self.workers < 1:
            raise DemoError(f"DemoConfig.workers must be >= 1, got {self.workers}")

    def to_dict(self) -> dict:
        """Every field (what ``results.json`` records under ``config``)."""
        return asdict(self)

    def baseline_names(self) -> list[str]:
        """The baselines to run, in :data:`BASELINES` order (empty for ``--baselines none``)."""
        return [b for b in self.baselines.split(",") if b in BASELINES]


def demo_argument_parser(**kwargs: Any) -> argparse.ArgumentParser:
    """The ``demo`` flags, generated from :class:`DemoConfig` by transformers' ``HfArgumentParser``
    (``--num-clients`` and ``--num_clients`` both work; ``--no-progress`` turns a default-on switch off)."""
    return _hf_argument_parser_class()(DemoConfig, **kwargs)


def _hf_argument_parser_class() -> type:
    """transformers' ``HfArgumentParser``, without importing the ``transformers`` package when it is not
    imported yet. Importing transformers imports huggingface_hub, which reads ``HF_ENDPOINT`` once per
    process; the command line is parsed before the demo (or ``--endpoint``) has chosen the endpoint, so the
    class is loaded from its own file, ``transformers/hf_argparser.py``, which needs only the standard
    library and PyYAML."""
    if "transformers" in sys.modules:
        from transformers import HfArgumentParser

        return HfArgumentParser
    name = "federated_factory._hf_argparser"
    if name not in sys.modules:
        package = importlib.util.find_spec("transformers")
        if package is None or not package.submodule_search_locations:
            raise DemoError("the demo's command line needs transformers (pip install transformers)")
        path = Path(list(package.submodule_search_locations)[0]) / "hf_argparser.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].HfArgumentParser


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """The :class:`DemoConfig` of parsed ``demo`` flags (other attributes of ``args`` are ignored)."""
    return DemoConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig)})


def run_demo_cli(args: argparse.Namespace) -> int:
    """``federated-factory demo``: run it and print the summary table."""
    print_summary(run_demo(config_from_args(args)))
    return 0


# ----------------------------------------------------------------------------------------------------------
# typed stage results


@dataclass
class DataStage:
    """The loaded splits and the partition of the training split among the hospitals. ``test`` is the split every
    method is scored on (``DemoConfig.evaluation_split``: the test split unless told otherwise)."""

    train: Any  # datasets.Dataset
    test: Any
    label_space: list[str]
    partition: Any  # federated_factory.partition.Partition
    client_sets: list
    table: str
    image_size: int
    channels: int
    seconds: float


@dataclass
class HospitalIdentity:
    """One hospital on the demo's Hub: its user, token and the private repo of its factory."""

    name: str
    user: str
    token: str
    repo: str


@dataclass
class Federation:
    """Who is who on the demo's Hub: one user + organization per hospital, one aggregator account."""

    clients: list[HospitalIdentity] = field(default_factory=list)
    aggregator_user: str = "aggregator"
    aggregator_token: str = ""


@dataclass
class ClientSummary:
    """What one hospital's job reports (one entry of ``results.json``'s ``clients``)."""

    name: str
    repo: str
    revision: str
    classes: list[str]
    class_counts: dict
    train_images_per_second: float
    train_seconds: float
    final_loss: float
    privacy_copy_rate: float
    privacy_passed: bool
    upload_bytes: int
    threads: int
    seconds: float
    resumed: bool = False  # the factory was trained by an earlier run (--resume) and republished by this one


@dataclass
class FactoriesStage:
    factory_config: Any  # federated_factory.client.FactoryConfig
    clients: list[ClientSummary]
    seconds: float


@dataclass
class AggregationStage:
    classifier: Any  # federated_factory.classifier.ClassifierConfig
    aggregation: Any  # federated_factory.aggregator.AggregationResult
    seconds: float


@dataclass
class NetworkStage:
    """Network mode: every hospital's expert and the product of experts (``results.json``'s ``network``)."""

    network: Any  # federated_factory.network.NetworkResult
    manifest: Any  # the manifest the experts were trained against (the aggregator's, expert epochs)
    results: dict
    seconds: float


@dataclass
class BaselinesStage:
    """Each baseline's results (test metrics, history, communication) and wall time."""

    centralized: dict | None  # None: not run (--baselines)
    fedavg: dict | None
    fedprox: dict | None
    scaffold: dict | None
    seconds: dict[str, float]


@dataclass
class DemoResults:
    """Everything the demo measured; :meth:`to_dict` is the content of ``results.json`` (key for key)."""

    config: dict
    factory_config: dict
    machine: dict
    dataset: dict
    partition: dict
    clients: list[dict]
    manifest: dict
    federated_factory: dict
    centralized: dict | None  # a baseline is None (and absent from results.json) when --baselines left it out
    fedavg: dict | None
    fedprox: dict | None
    scaffold: dict | None
    unlearning: dict | None
    timings: dict[str, float]
    network: dict | None = None  # network mode (product of experts + per-expert rows); None when not run

    def methods(self) -> dict[str, dict]:
        """The compared methods' results by results.json key, in report order (a mode or a baseline only when
        run)."""
        rows = {"federated_factory": self.federated_factory, "network": self.network, "fedavg": self.fedavg,
                "fedprox": self.fedprox, "scaffold": self.scaffold, "centralized": self.centralized}
        return {key: row for key, row in rows.items() if row is not None}

    def central_accuracy(self) -> float | None:
        """The centralized model's test accuracy, the reference of "vs centralized" (None when not run)."""
        return None if self.centralized is None else self.centralized["accuracy"]

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key in ("scaffold", "network", "centralized", "fedavg", "fedprox"):
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> DemoResults:
        return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def load(cls, results_dir: str | Path) -> DemoResults:
        """Read ``<results_dir>/results.json``."""
        return cls.from_dict(json.loads((Path(results_dir) / "results.json").read_text()))


# ----------------------------------------------------------------------------------------------------------
# the stages


def prepare_data(config: DemoConfig, out: Path) -> DataStage:
    """Load the dataset, partition its training split, print the client × class table, draw the heatmap."""
    from .data import describe, load_image_splits
    from .partition import partition_dataset, plot_heatmap, summary_table

    t0 = time.perf_counter()
    splits = load_image_splits(config.dataset, image_size=config.image_size, channels=config.channels)
    held_out = config.evaluation_split
    if held_out not in splits or held_out == "train":
        raise DemoError(f"{config.dataset} has no {held_out!r} split to evaluate on (it has "
                        f"{', '.join(splits)}); the demo evaluates on real held-out data (--evaluation-split)")
    train, test = splits["train"], splits[held_out]
    partition = partition_dataset(train, config.partition, num_clients=config.num_clients, seed=config.partition_seed,
                                  alpha=config.alpha, classes_per_client=config.classes_per_client)
    client_sets = [partition.client_dataset(train, i) for i in range(partition.num_clients)]
    plot_heatmap(partition, train, out / "partition_heatmap.png")
    table = summary_table(partition, train)
    print(table)
    seconds = time.perf_counter() - t0
    info = describe(train)
    return DataStage(train=train, test=test, label_space=list(train.features["label"].names), partition=partition,
                     client_sets=client_sets, table=table, image_size=info["image_size"][0],
                     channels=info["channels"], seconds=seconds)


def register_identities(server, num_clients: int, *, network: bool = False) -> Federation:
    """A user, token and organization per hospital (``hospital-00`` …) plus the aggregator's account, which
    belongs to every hospital's organization so it can read the private factories. With ``network`` (network
    mode) every hospital's user also belongs to every other hospital's organization: in that mode each
    hospital pulls the other hospitals' factories."""
    fed = Federation(aggregator_token=f"hf_{secrets.token_hex(16)}")
    server.add_token(fed.aggregator_token, fed.aggregator_user, "write")
    for i in range(num_clients):
        name = f"hospital-{i:02d}"
        user, token = f"{name}-ml", f"hf_{secrets.token_hex(16)}"
        server.add_token(token, user, "write")
        fed.clients.append(HospitalIdentity(name=name, user=user, token=token, repo=f"{name}/factory"))
    for client in fed.clients:
        members = [c.user for c in fed.clients] if network else [client.user]
        server.set_org(client.name, [client.user, *[m for m in members if m != client.user], fed.aggregator_user])
    return fed


def train_factories(config: DemoConfig, out: Path, server, fed: Federation, data: DataStage) -> FactoriesStage:
    """Every hospital trains, audits and publishes its factory (in ``config.workers`` processes)."""
    from .client import preset

    overrides = {"image_size": data.image_size, "channels": data.channels, "flip": config.flip, "seed": config.seed}
    if config.train_steps:
        overrides["train_steps"] = config.train_steps
    if config.factory_precision:
        overrides["mixed_precision"] = config.factory_precision
    factory_config = preset(config.preset, **overrides)
    if config.resume:  # an interrupted factory resumes from its latest checkpoint (at most a tenth of its steps lost)
        factory_config = dataclasses.replace(factory_config, checkpoint_every=max(1, factory_config.train_steps // 10))
    t0 = time.perf_counter()
    jobs = [
        {"endpoint": server.url, "client": asdict(client), "dataset": dataset, "config": factory_config.to_dict(),
         "output_dir": str(out / "clients" / client.name), "audit_samples": config.audit_samples_per_class,
         "threads": 1 if config.workers > 1 else 0, "progress": config.progress and config.workers == 1,
         # in workers the bars are off: a line every 5 minutes shows that a long training advances
         "report_seconds": 300.0 if config.progress and config.workers > 1 else 0.0,
         "resume": config.resume}
        for client, dataset in zip(fed.clients, data.client_sets)
    ]
    clients = _train_clients(jobs, config.workers, config.progress)
    return FactoriesStage(factory_config=factory_config, clients=clients, seconds=time.perf_counter() - t0)


def chunk_size(samples_per_class: int, largest: int = 100) -> int:
    """The synthesis chunk size for ``samples_per_class``: the fewest chunks of at most ``largest`` images,
    evenly sized, so that little is generated beyond what a class needs (250 → 3 chunks of 84, not 3 of 100)."""
    chunks = -(-samples_per_class // largest)
    return -(-samples_per_class // chunks)


def build_manifest(config: DemoConfig, out: Path, fed: Federation, data: DataStage, factories: FactoriesStage):
    """The manifest pinning every published factory (written to ``<out>/manifest.yaml``) and its classifier
    config; shared by the server and the network mode."""
    from .classifier import ClassifierConfig
    from .hub.manifest import FactoryEntry, Manifest, SynthesisConfig

    classifier = ClassifierConfig(epochs=config.classifier_epochs, hflip=config.hflip, vflip=config.vflip,
                                  seed=config.seed, **({"arch": config.classifier} if config.classifier else {}))
    manifest = Manifest(
        federation=f"{config.dataset}-{config.partition}",
        label_space=list(data.label_space),
        factories=[FactoryEntry(c.repo, c.revision) for c in factories.clients],
        synthesis=SynthesisConfig(samples_per_class=config.samples_per_class, sampler=config.sampler,
                                  num_inference_steps=config.num_inference_steps,
                                  batch_size=chunk_size(config.samples_per_class), seed=config.seed,
                                  precision=config.synthesis_precision),
        classifier=classifier.to_dict(),
        evaluation={"dataset": config.dataset, "split": config.evaluation_split, "image_size": config.image_size,
                    "channels": config.channels},
        output_dir=str(out / "aggregate"),
        publish={"classifier_repo": f"{fed.aggregator_user}/global-classifier",
                 "dataset_repo": f"{fed.aggregator_user}/synthetic-data", "private": True},
    )
    manifest.save(out / "manifest.yaml")
    return manifest, classifier


def aggregate_factories(config: DemoConfig, out: Path, fed: Federation, data: DataStage, factories: FactoriesStage,
                        accelerator, manifest=None, classifier=None) -> AggregationStage:
    """Run the aggregator on the manifest pinning every published factory (`build_manifest`, written when not
    given): synthesis, classifier, evaluation on the real test split, publication; draws real-vs-synthetic
    samples."""
    from .aggregator import aggregate

    if manifest is None:
        manifest, classifier = build_manifest(config, out, fed, data, factories)
    t0 = time.perf_counter()
    aggregation = aggregate(manifest, token=fed.aggregator_token, accelerator=accelerator,
                            output_dir=out / "aggregate", cache_dir=out / "cache", progress=config.progress)
    seconds = time.perf_counter() - t0
    _real_vs_synthetic(data.train, out / "aggregate" / "synthetic", out / "real_vs_synthetic.png")
    return AggregationStage(classifier=classifier, aggregation=aggregation, seconds=seconds)


def run_baselines(config: DemoConfig, data: DataStage, classifier, device="cpu") -> BaselinesStage:
    """The baselines ``config.baselines`` names (centralized, FedAvg, FedProx, SCAFFOLD) on the hospitals' real
    data, with the same classifier; the others are None."""
    from .baselines import run_centralized, run_fedavg, run_scaffold

    seconds: dict[str, float] = {}
    federated = dict(rounds=config.fl_rounds, local_epochs=config.fl_local_epochs, seed=config.seed,
                     progress=config.progress, device=device)

    sets, test = data.client_sets, data.test
    runs = {"centralized": lambda: run_centralized(sets, test, classifier, progress=config.progress),
            "fedavg": lambda: run_fedavg(sets, test, classifier, mu=0.0, **federated),
            "fedprox": lambda: {**run_fedavg(sets, test, classifier, mu=config.fedprox_mu, **federated),
                                "mu": config.fedprox_mu},
            "scaffold": lambda: run_scaffold(sets, test, classifier, local_lr=config.scaffold_lr, **federated)}
    results: dict[str, dict | None] = dict.fromkeys(BASELINES)
    for name in config.baseline_names():
        t0 = time.perf_counter()
        results[name] = {k: v for k, v in runs[name]().items() if k != "model"}
        seconds[f"{name}_seconds"] = time.perf_counter() - t0
    return BaselinesStage(**results, seconds=seconds)


def train_network_experts(config: DemoConfig, out: Path, fed: Federation, data: DataStage, factories: FactoriesStage,
                          manifest, accelerator) -> NetworkStage:
    """Network mode: each hospital trains its expert on its own partition plus the synthetic images of the
    classes it lacks, drawn from the chunk cache the aggregator filled (``<out>/cache``: after the server mode
    nothing new is generated), publishes it to ``hospital-NN/expert`` with its own token; the aggregator's
    account combines the experts into ``aggregator/federation-model`` and evaluates the product and every
    expert on the real test split. The experts train for ``expert_epochs`` (at most ``classifier_epochs``)."""
    from .hub.manifest import Manifest
    from .network import Hospital, train_network

    epochs = min(config.expert_epochs or config.classifier_epochs, config.classifier_epochs)
    network_manifest = Manifest(**{**manifest.__dict__, "classifier": {**manifest.classifier, "epochs": epochs},
                                   "output_dir": str(out / "network")})
    hospitals = [Hospital(name=client.name, data=dataset, factory=client.repo, expert_repo=f"{client.name}/expert",
                          token=client.token, top_up=config.expert_top_up)
                 for client, dataset in zip(fed.clients, data.client_sets)]
    t0 = time.perf_counter()
    network = train_network(network_manifest, hospitals, federation_repo=f"{fed.aggregator_user}/federation-model",
                            cache_dir=out / "cache", token=fed.aggregator_token, output_dir=out / "network",
                            accelerator=accelerator, progress=config.progress,
                            workers=config.workers if accelerator.device.type == "cpu" else 1)
    seconds = time.perf_counter() - t0
    summary = network.summary()
    product = (network.combined.evaluation or {}).get("product") or {}
    expert_bytes = {name: _published_bytes(e.expert_dir) for name, e in network.experts.items()}
    factory_bytes = {c.name: c.upload_bytes for c in factories.clients}
    total_factories = sum(factory_bytes.values())
    results = {
        **{k: product.get(k) for k in ("accuracy", "macro_f1", "auroc", "per_class_recall", "confusion_matrix", "n")},
        "experts": summary["experts"],
        "federation_model": summary["federation_model"],
        "manifest_hash": summary["manifest_hash"],
        "expert_epochs": epochs,
        "expert_top_up": config.expert_top_up,
        "chunks_generated": sum(r["chunks_generated"] for r in summary["experts"]),
        "communication": {
            # each hospital uploads its factory and its expert, and downloads every other hospital's factory;
            # the combiner downloads every expert
            "per_client_upload_bytes": {n: factory_bytes[n] + expert_bytes[n] for n in factory_bytes},
            "per_client_download_bytes": {n: total_factories - factory_bytes[n] for n in factory_bytes},
            "total_bytes": total_factories + sum(expert_bytes.values())
            + sum(total_factories - b for b in factory_bytes.values()) + sum(expert_bytes.values()),
            "rounds": 1,
        },
        "seconds": seconds,
    }
    return NetworkStage(network=network, manifest=network_manifest, results=results, seconds=seconds)


def unlearn_hospital(config: DemoConfig, out: Path, fed: Federation, factories: FactoriesStage,
                     manifest, accelerator=None) -> tuple[dict | None, float | None]:
    """Remove one hospital (``config.unlearn``) from the federation whose aggregation ran on ``manifest``
    (server mode; ``purge_history``, so no superseded revision of the republished repos survives); returns
    its certificate and the wall time, or ``(None, None)`` when skipped (``unlearn=None`` or a single
    hospital)."""
    clients = factories.clients
    if config.unlearn is None or len(clients) <= 1:
        return None, None
    from .unlearning import unlearn

    index = len(clients) - 1 if config.unlearn == "last" else int(config.unlearn)
    if not 0 <= index < len(clients):
        raise DemoError(f"--unlearn {config.unlearn}: there are {len(clients)} hospitals (0..{len(clients) - 1})")
    t0 = time.perf_counter()
    certificate = unlearn(manifest, clients[index].repo,
                          reason="demo: hospital leaves the federation", previous_output_dir=out / "aggregate",
                          output_dir=out / "unlearned", cache_dir=out / "cache", token=fed.aggregator_token,
                          accelerator=accelerator, verify_from_scratch=config.verify_unlearning,
                          purge_history=True, progress=config.progress)
    return certificate, time.perf_counter() - t0


def collect_results(config: DemoConfig, data: DataStage, fed: Federation, factories: FactoriesStage,
                    aggregation: AggregationStage | None, baselines: BaselinesStage, unlearning: dict | None,
                    timings: dict[str, float], network: NetworkStage | None = None, manifest=None) -> DemoResults:
    """Assemble :class:`DemoResults` from the stages' results (``aggregation`` is None in network mode alone,
    ``network`` None in server mode alone; ``manifest`` is the demo's manifest, default the aggregation's)."""
    from .data import describe

    clients = [asdict(c) for c in factories.clients]
    server_mode = None
    if aggregation is not None:
        agg = aggregation.aggregation
        ff_eval = agg.evaluation or {}
        download_bytes = sum(c.upload_bytes for c in factories.clients)
        manifest = agg.manifest
        server_mode = {
            **{k: ff_eval.get(k) for k in ("accuracy", "macro_f1", "auroc", "per_class_recall", "confusion_matrix", "n")},
            "synthesis": agg.synthesis,
            "training": agg.training,
            "published": agg.published,
            "timings": agg.timings,
            "communication": {
                "per_client_upload_bytes": {c.name: c.upload_bytes for c in factories.clients},
                "per_client_download_bytes": {c.name: 0 for c in factories.clients},
                "aggregator_download_bytes": download_bytes,
                "total_bytes": 2 * download_bytes,
                "rounds": 1,
            },
        }
    from .runtime import machine

    return DemoResults(
        config=config.to_dict(),
        factory_config=factories.factory_config.to_dict(),
        machine=machine(),
        dataset={"train": describe(data.train), "test": describe(data.test)},
        partition={"scheme": data.partition.scheme, "num_clients": data.partition.num_clients,
                   "counts": data.partition.counts(data.train).tolist(), "client_names": [c.name for c in fed.clients],
                   "class_names": list(data.label_space), "table": data.table},
        clients=clients,
        manifest=manifest.to_dict(),
        federated_factory=server_mode,
        centralized=baselines.centralized,
        fedavg=baselines.fedavg,
        fedprox=baselines.fedprox,
        scaffold=baselines.scaffold,
        unlearning=unlearning,
        timings=timings,
        network=None if network is None else network.results,
    )


# ----------------------------------------------------------------------------------------------------------
# the run


def run_demo(config: DemoConfig) -> DemoResults:
    """Run every stage against a Hub endpoint started for the run; write ``results.json`` and ``report.md``
    to ``config.output_dir`` (emptied first) and return the results.

    The Hub endpoint is process-global for huggingface_hub (read from ``HF_ENDPOINT`` at import), so a
    process runs at most one demo. The libraries' own progress bars are off for the run and restored after.
    """
    from .hub.env import free_port, use_endpoint
    from .runtime import library_progress_bars

    out = Path(config.output_dir)
    prepare_output_dir(config, out)
    port = free_port()
    use_endpoint(f"http://127.0.0.1:{port}")

    from .hub.server import HubServer
    from .report import render_report

    t_demo = time.perf_counter()
    server = HubServer(out / "hub", tokens={}, host="127.0.0.1", port=port)
    server.start()
    try:
        with library_progress_bars(False):
            results = _run_stages(config, out, server)
    finally:
        server.stop()
    results.timings["total_seconds"] = time.perf_counter() - t_demo
    atomic_write_json(out / "results.json", results.to_dict(), default=_json_default)
    render_report(out)
    return results


def prepare_output_dir(config: DemoConfig, out: Path) -> None:
    """Empty ``out`` for a new run, or, with ``config.resume``, keep what an earlier run finished there (the
    hospitals' dirs: published factories and training checkpoints; the chunk cache) and remove the rest.
    Records the run's options in ``out/demo_config.json``. Raises `DemoError`, having removed nothing, when
    the earlier run's factories were trained with other options (`FACTORY_OPTIONS`)."""
    if config.resume and out.is_dir() and any(out.iterdir()):
        saved = out / RUN_CONFIG_FILE
        if not saved.is_file():
            raise DemoError(f"cannot resume in {out}: it holds no {RUN_CONFIG_FILE}, so it is not the output of a "
                            "demo run; choose another --output-dir or drop --resume")
        then, now = json.loads(saved.read_text()), json.loads(json.dumps(config.to_dict()))
        changed = [k for k in FACTORY_OPTIONS if then.get(k) != now.get(k)]
        if changed:
            raise DemoError(f"cannot resume in {out}: its factories were trained with other options ("
                            + "; ".join(f"{k}: {then.get(k)!r} then, {now.get(k)!r} now" for k in changed)
                            + "); rerun with the same ones, or drop --resume to start afresh")
        for child in out.iterdir():
            if child.name not in KEPT_ON_RESUME:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    else:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
    atomic_write_json(out / RUN_CONFIG_FILE, config.to_dict())


def _run_stages(config: DemoConfig, out: Path, server) -> DemoResults:
    import torch
    from accelerate import Accelerator

    from .runtime import cpu_threads, side_process

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    data = prepare_data(config, out)
    fed = register_identities(server, data.partition.num_clients, network=config.mode != "server")
    factories = train_factories(config, out, server, fed, data)
    manifest, classifier = build_manifest(config, out, fed, data, factories)
    # The baselines need only the real partitions: with workers, they train in a side process while the
    # federation's stages run here (each is single-threaded, so its numbers do not depend on where it runs),
    # and this process runs one thread: two processes with one thread each on 2 cores, where a multi-thread
    # synthesis beside a busy side process ran at a quarter of its idle rate.
    # The thread count does not depend on which baselines run (--baselines none keeps one thread here): the
    # synthetic chunks are then the same bits whatever baselines a run compares against.
    side = config.workers > 1
    baselines_job = {"config": dataclasses.replace(config, progress=config.progress and not side), "data": data,
                     "classifier": classifier, "device": str(accelerator.device)}
    threads = 1 if side and accelerator.device.type == "cpu" else 0
    with side_process(_baselines_job, baselines_job, enabled=side and bool(config.baseline_names())) \
            as baselines_result, cpu_threads(threads):
        aggregation = network = None
        if config.mode != "network":
            aggregation = aggregate_factories(config, out, fed, data, factories, accelerator, manifest, classifier)
            manifest = aggregation.aggregation.manifest
        # Server-mode unlearning needs only the aggregation: with workers it runs in a second side process
        # while the experts train (it republishes the aggregator's repos, the network publishes others).
        unlearn_job = {"config": dataclasses.replace(config, progress=config.progress and not side), "out": out,
                       "fed": fed, "factories": factories, "manifest": manifest, "threads": threads}
        unlearn_side = side and aggregation is not None
        with side_process(_unlearn_job, unlearn_job, enabled=unlearn_side) as unlearning_result:
            if config.mode != "server":
                network = train_network_experts(config, out, fed, data, factories, manifest, accelerator)
            unlearning = unlearning_seconds = None
            if aggregation is not None:
                unlearning, unlearning_seconds = unlearning_result() if unlearn_side else unlearn_hospital(
                    config, out, fed, factories, manifest, accelerator)
        baselines = baselines_result()
    timings = {"data_seconds": data.seconds, "clients_seconds": factories.seconds}
    if aggregation is not None:
        timings["aggregation_seconds"] = aggregation.seconds
    if network is not None:
        timings["network_seconds"] = network.seconds
    timings.update(baselines.seconds)
    if unlearning_seconds is not None:
        timings["unlearning_seconds"] = unlearning_seconds
    return collect_results(config, data, fed, factories, aggregation, baselines, unlearning, timings,
                           network=network, manifest=manifest)


def _baselines_job(job: dict) -> BaselinesStage:
    """`run_baselines` in a side process (spawned: it starts with the libraries' progress bars on)."""
    from .runtime import library_progress_bars

    with library_progress_bars(False):
        return run_baselines(job["config"], job["data"], job["classifier"], job["device"])


def _unlearn_job(job: dict) -> tuple[dict | None, float | None]:
    """`unlearn_hospital` in a side process, with the main process's thread count (the from-scratch check
    regenerates chunks that must match the cached ones bit for bit)."""
    from .runtime import cpu_threads, library_progress_bars

    with library_progress_bars(False), cpu_threads(job["threads"]):
        return unlearn_hospital(job["config"], job["out"], job["fed"], job["factories"], job["manifest"])


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _real_vs_synthetic(train, synthetic_dir: Path, path: Path, per_side: int = 8) -> None:
    """One row per class: real training images (left) next to synthetic ones (right)."""
    from datasets import load_from_disk

    from .data import image_channels_of
    from .plots import image_grid
    from .tensors import images_to_uint8

    synthetic = load_from_disk(str(synthetic_dir))
    channels = image_channels_of(train)
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


def _train_client(job: dict) -> ClientSummary:
    """One hospital's job (also run in a worker process): train, audit, publish; returns its summary."""
    from .hub.env import use_endpoint
    from .runtime import cpu_threads, library_progress_bars

    use_endpoint(job["endpoint"])
    import torch

    from .client import FactoryConfig, run_client

    client, started = HospitalIdentity(**job["client"]), time.perf_counter()
    summary_file = Path(job["output_dir"]) / CLIENT_SUMMARY_FILE
    if job["resume"] and summary_file.is_file():
        return _republish_client(client, Path(job["output_dir"]), summary_file, job["dataset"])
    with library_progress_bars(False), cpu_threads(job["threads"]):
        published, metadata = run_client(
            job["dataset"], client.repo, FactoryConfig.from_dict(job["config"]), token=client.token,
            output_dir=job["output_dir"], audit_samples_per_class=job["audit_samples"], progress=job["progress"],
            report_seconds=job["report_seconds"],
        )
        threads = torch.get_num_threads()
    stats, audit = metadata["train_stats"], metadata["privacy_audit"]
    summary = ClientSummary(
        name=client.name,
        repo=published.repo_id,
        revision=published.revision,
        classes=metadata["classes"],
        class_counts=metadata["class_counts"],
        train_images_per_second=stats["images_per_second"],
        train_seconds=stats["wall_seconds"],
        final_loss=stats["final_loss"],
        privacy_copy_rate=audit["copy_rate"],
        privacy_passed=audit["passed"],
        upload_bytes=_published_bytes(Path(job["output_dir"]) / "pipeline"),
        threads=threads,
        seconds=time.perf_counter() - started,
    )
    atomic_write_json(summary_file, asdict(summary))
    return summary


def _republish_client(client: HospitalIdentity, folder: Path, summary_file: Path, dataset) -> ClientSummary:
    """A hospital whose factory an earlier run finished (``--resume``): publish its local copy (pipeline,
    factory.json with the training stats and privacy audit, sample grid) to this run's endpoint, unchanged.
    Raises `DemoError` if the hospital's training images are not the ones the factory was trained on."""
    from PIL import Image

    from .client import FACTORY_METADATA_FILE, FactoryConfig, publish_factory
    from .client_data import prepare_client_data
    from .pipeline import FactoryPipeline

    earlier = ClientSummary(**json.loads(summary_file.read_text()))
    metadata = json.loads((folder / FACTORY_METADATA_FILE).read_text())
    data = prepare_client_data(dataset, FactoryConfig.from_dict(metadata["config"]), metadata["classes"])
    if data.fingerprint != metadata["training_set_fingerprint"]:
        raise DemoError(f"cannot resume {client.name}: the factory in {folder} was trained on other images than "
                        "the hospital holds now (the dataset changed); drop --resume to train it afresh")
    pipeline = FactoryPipeline.from_pretrained(folder / "pipeline")
    with Image.open(folder / "samples.png") as grid:
        grid.load()
        published = publish_factory(pipeline, metadata, client.repo, token=client.token, grid=grid,
                                    allow_copies=metadata["privacy_audit"].get("allowed_copies", False))
    return dataclasses.replace(earlier, repo=published.repo_id, revision=published.revision, resumed=True)


def _train_clients(jobs: list[dict], workers: int, progress: bool) -> list[ClientSummary]:
    """Run the hospitals' jobs, in this process or in ``workers`` spawned processes (one thread each: on a
    small CPU, single-thread trainings side by side outrun one multi-thread training: benchmarks/README.md)."""
    from tqdm.auto import tqdm

    from .runtime import map_in_processes

    bar = tqdm(total=len(jobs), desc=f"hospitals ({workers} in parallel)", unit="factory",
               disable=not progress or workers <= 1)

    def done(job, summary: ClientSummary) -> None:
        bar.set_postfix(last=summary.name, img_s=f"{summary.train_images_per_second:.0f}")
        bar.update(1)

    try:
        return map_in_processes(_train_client, jobs, workers, on_result=done)
    finally:
        bar.close()


def _published_bytes(pipeline_dir: Path) -> int:
    return sum(p.stat().st_size for p in pipeline_dir.rglob("*") if p.is_file())


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def print_summary(results: DemoResults) -> None:
    """The final table on the terminal."""
    labels = {"federated_factory": "FederatedFactory (synthetic only)",
              "network": "FederatedFactory (network, experts)", "fedavg": "FedAvg", "fedprox": "FedProx",
              "scaffold": "SCAFFOLD", "centralized": "Centralized (real data)"}
    central = results.central_accuracy()
    print()
    print(f"{'method':36s} {'accuracy':>9s} {'macro-F1':>9s} {'AUROC':>7s} {'vs central':>11s}")
    for key, r in results.methods().items():
        versus = f"{r['accuracy'] / central:10.1%}" if central else f"{'—':>10s}"
        print(f"{labels[key]:36s} {r['accuracy']:9.4f} {r['macro_f1']:9.4f} {r['auroc']:7.4f} {versus}")
    if results.network:
        split = results.config.get("evaluation_split", "test")  # the keys say test; the split is the run's
        for row in results.network["experts"]:
            print(f"  expert {row['hospital']} (own: {', '.join(row['own_classes'])}): own-validation accuracy "
                  f"{_fmt(row['own_validation_accuracy'])}, {split} accuracy {_fmt(row['test_accuracy'])}")
    if results.unlearning:
        u = results.unlearning
        print(f"\nunlearned {u['removed']['repo']}: {u['examples_from_removed']} examples left from it, "
              f"{u['chunks_regenerated']} chunks regenerated, classes removed: {', '.join(u['classes_removed']) or 'none'}; "
              f"from-scratch check: {u['from_scratch_check']}")
    print(f"\ntotal wall time {results.timings['total_seconds'] / 60:.1f} min; report: "
          f"{Path(results.config['output_dir']) / 'report.md'}")


__all__ = [
    "DemoConfig",
    "DemoResults",
    "MODES",
    "NetworkStage",
    "aggregate_factories",
    "build_manifest",
    "collect_results",
    "config_from_args",
    "demo_argument_parser",
    "prepare_data",
    "print_summary",
    "register_identities",
    "run_baselines",
    "run_demo",
    "train_factories",
    "train_network_experts",
    "unlearn_hospital",
]
