"""What the aggregator runs: manifest → pulled factories → synthetic dataset → classifier → evaluation → Hub.

`aggregate` is the whole round; `recipes/aggregate.py` is a thin `accelerate launch`-able wrapper.
Every process runs every step; file writes, evaluation and publishing happen on the main process.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_write_json
from .errors import ManifestError
from .hub.manifest import Manifest
from .synthesis import ChunkCache, assemble_dataset, plan_synthesis, pull_factories, synthesize


def default_cache_dir() -> Path:
    """Where generated chunks are cached: ``$FEDERATED_FACTORY_CACHE`` or ``~/.cache/federated_factory``."""
    return Path(os.environ.get("FEDERATED_FACTORY_CACHE", Path.home() / ".cache" / "federated_factory"))


@dataclass
class AggregationResult:
    output_dir: Path
    manifest: Manifest  # resolved: every factory pinned to a commit sha
    plan: dict
    synthesis: dict
    training: dict
    evaluation: dict | None
    published: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    trained_classes: list[str] = field(default_factory=list)
    classifier_path: Path | None = None
    privacy_gate: dict = field(default_factory=dict)  # the gate's settings and each factory's verdict

    def to_dict(self) -> dict:
        return {
            "output_dir": str(self.output_dir),
            "manifest": self.manifest.to_dict(),
            "manifest_hash": self.manifest.content_hash(),
            "plan": self.plan,
            "synthesis": self.synthesis,
            "training": self.training,
            "evaluation": self.evaluation,
            "published": self.published,
            "timings": self.timings,
            "trained_classes": self.trained_classes,
            "privacy_gate": self.privacy_gate,
        }


def synthetic_sample_grid(dataset, label_space: list[str], per_class: int = 10):
    """One row per class of the synthetic dataset (first images of each class)."""
    from .plots import image_grid
    from .tensors import images_to_uint8

    labels = np.asarray(dataset["label"])
    channels = 1 if dataset[0]["image"].mode == "L" else 3
    rows = []
    for i, _ in enumerate(label_space):
        idx = np.flatnonzero(labels == i)[:per_class]
        if len(idx):
            rows.append(images_to_uint8(dataset.select(idx)["image"], channels))
    return image_grid(rows, scale=3)


def aggregate(
    manifest: Manifest,
    *,
    token: str | None = None,
    accelerator=None,
    output_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    publish: bool = True,
    progress: bool = True,
) -> AggregationResult:
    """Run the federation's one round for ``manifest`` and return what it produced.

    Problems with the manifest or its factories (including factories refused by the privacy gate, see
    `federated_factory.privacy_gate`) raise `ManifestError` before any compute starts; so does a
    ``classifier.init_from`` whose lineage includes a factory that the manifest's history removed.
    """
    from accelerate import Accelerator

    from .classifier import ClassifierConfig, evaluate_classifier, plot_confusion_matrix, save_classifier, train_classifier
    from .plots import label_distribution
    from .privacy_gate import policy_summary

    accelerator = accelerator or Accelerator(cpu=not _cuda())
    output_dir = Path(output_dir or manifest.output_dir)
    cache = ChunkCache(Path(cache_dir or default_cache_dir()) / "chunks", manifest.synthesis)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    with accelerator.main_process_first():
        resolved_entries, factories = pull_factories(manifest, token=token)
    resolved = Manifest(**{**manifest.__dict__, "factories": resolved_entries})
    lineage = None
    if resolved.classifier.get("init_from") and resolved.history:
        from .unlearning import check_init_from

        removed = [r["removed"] for r in resolved.history if isinstance(r, dict) and r.get("removed")]
        lineage = check_init_from(resolved.classifier["init_from"], removed, token=token, error=ManifestError)
    privacy_gate = {**policy_summary(resolved.privacy), "factories": [f.privacy for f in factories]}
    for gate in privacy_gate["factories"]:
        if gate["verdict"] == "overridden":
            accelerator.print(f"warning: {gate['repo']} fails the privacy gate ({'; '.join(gate['problems'])}); used "
                              f"under the manifest's override: {gate['override_reason']}")
    timings["pull_seconds"] = time.perf_counter() - t_start
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        resolved.save(output_dir / "manifest.resolved.yaml")

    plan = plan_synthesis(resolved.label_space, factories, resolved.synthesis)
    if plan.missing_classes:
        accelerator.print(f"warning: no factory holds class(es) {plan.missing_classes}; they get no synthetic data")
    t0 = time.perf_counter()
    stats = synthesize(plan, factories, cache, accelerator=accelerator, progress=progress)
    timings["synthesis_seconds"] = time.perf_counter() - t0
    chunks_generated = int(accelerator.reduce(_tensor(stats.chunks_generated), reduction="sum").item())
    images_generated = int(accelerator.reduce(_tensor(stats.images_generated), reduction="sum").item())

    t0 = time.perf_counter()
    dataset = assemble_dataset(plan, cache)
    timings["assemble_seconds"] = time.perf_counter() - t0
    if accelerator.is_main_process:
        dataset.save_to_disk(str(output_dir / "synthetic"))
        synthetic_sample_grid(dataset, plan.label_space).save(output_dir / "synthetic_samples.png")
        label_distribution(plan.counts(), output_dir / "synthetic_label_distribution.png", "Synthetic examples per class")

    # Classes held by nobody get no data: the classifier's label space is the classes that have data.
    trained_classes = [name for name in plan.label_space if name not in plan.missing_classes]
    train_ds = dataset
    if plan.missing_classes:
        from datasets import ClassLabel

        train_ds = dataset.map(
            lambda row: {"label": trained_classes.index(plan.label_space[row["label"]])}, desc="relabel"
        ).cast_column("label", ClassLabel(names=trained_classes))

    config = ClassifierConfig.from_dict(resolved.classifier)
    t0 = time.perf_counter()
    result = train_classifier(train_ds, config, accelerator=accelerator, progress=progress)
    timings["classifier_seconds"] = time.perf_counter() - t0

    synthesis_summary = {**stats.to_dict(), "chunks_generated": chunks_generated,
                         "images_generated": images_generated, "processes": accelerator.num_processes}
    aggregation = AggregationResult(
        output_dir=output_dir,
        manifest=resolved,
        plan=plan.to_dict(),
        synthesis=synthesis_summary,
        training=result.summary(),
        evaluation=None,
        timings=timings,
        trained_classes=trained_classes,
        privacy_gate=privacy_gate,
    )
    if lineage is not None:
        aggregation.training["init_from_lineage"] = lineage
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(result.model)
        aggregation.classifier_path = output_dir / "classifier"
        save_classifier(model, aggregation.classifier_path, label_names=trained_classes, config=config, arch=config.arch)
        _plot_history(result, output_dir)
        aggregation.evaluation = _evaluate(model, resolved, trained_classes, output_dir, evaluate_classifier, plot_confusion_matrix)
        timings["total_seconds"] = time.perf_counter() - t_start
        if publish and resolved.publish:
            t0 = time.perf_counter()
            aggregation.published = publish_outputs(resolved, dataset, aggregation.to_dict(), output_dir, token=token)
            timings["publish_seconds"] = time.perf_counter() - t0
        atomic_write_json(output_dir / "results.json", aggregation.to_dict())
    accelerator.wait_for_everyone()
    return aggregation


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _tensor(value: int):
    import torch

    return torch.tensor(value, dtype=torch.long)


def _plot_history(result, output_dir: Path) -> None:
    from .classifier import plot_history

    plot_history(result.history, output_dir / "classifier_history.png")


def _evaluate(model, manifest: Manifest, trained_classes, output_dir: Path, evaluate_classifier, plot_confusion_matrix):
    """Accuracy, macro-F1, AUROC, per-class recall and confusion matrix on REAL held-out data."""
    spec = manifest.evaluation
    if not spec or not spec.get("dataset"):
        print("note: the manifest has no evaluation dataset; the classifier is not evaluated")
        return None
    from .data import load_image_dataset

    test = load_image_dataset(
        spec["dataset"],
        split=spec.get("split", "test"),
        image_size=spec.get("image_size"),
        channels=spec.get("channels"),
        revision=spec.get("revision"),
    )
    metrics = evaluate_classifier(model, test, trained_classes)
    names = test.features["label"].names
    plot_confusion_matrix(metrics["confusion_matrix"], metrics.get("confusion_labels", names), output_dir / "confusion_matrix.png")
    metrics["dataset"] = {k: v for k, v in spec.items()}
    return metrics


def publish_outputs(manifest: Manifest, dataset, summary: dict, output_dir: Path, *, token=None) -> dict:
    """Publish the synthetic dataset (if asked) and the classifier, each in ONE commit through `publish_folder`.

    ``summary`` is the aggregation's `results.json` content (plus ``unlearning`` after an unlearning);
    the classifier is read from ``output_dir/classifier``. The repos are private unless the manifest's
    ``publish.private`` is false; `publish_folder` checks the token and refuses an existing public repo
    when private is asked, before anything is written (`PublishError`).
    """
    from .hub.cards import render_card
    from .hub.publish import check_can_publish, publish_folder

    private = bool(manifest.publish.get("private", True))
    published = {}
    dataset_repo = manifest.publish.get("dataset_repo")
    classifier_repo = manifest.publish.get("classifier_repo")
    # both repos are checked before either is written, so a refusal leaves both unchanged
    for repo, repo_type in ((dataset_repo, "dataset"), (classifier_repo, "model")):
        if repo:
            check_can_publish(repo, repo_type=repo_type, token=token, private=private)
    if dataset_repo:
        with tempfile.TemporaryDirectory(prefix="synthetic-") as tmp:
            folder = Path(tmp)
            (folder / "data").mkdir()
            dataset.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
            (folder / "samples.png").write_bytes((output_dir / "synthetic_samples.png").read_bytes())
            counts = {name: 0 for name in manifest.label_space}
            for shard in summary["plan"]["shards"]:
                counts[shard["class_name"]] += shard["count"]
            card = render_card("synthetic_dataset.md", repo_id=dataset_repo, manifest=manifest.to_dict(),
                               manifest_hash=manifest.content_hash(), plan=summary["plan"], counts=counts)
            (folder / "README.md").write_text(card)
            revision = publish_folder(folder, dataset_repo, repo_type="dataset", token=token, private=private,
                                      commit_message=f"Synthetic dataset for manifest {manifest.content_hash()[:12]}")
        published["dataset"] = {"repo": dataset_repo, "revision": revision}
    if classifier_repo:
        with tempfile.TemporaryDirectory(prefix="classifier-") as tmp:
            folder = Path(tmp)
            for item in (output_dir / "classifier").iterdir():
                (folder / item.name).write_bytes(item.read_bytes())
            for picture in ("confusion_matrix.png", "synthetic_samples.png", "classifier_history.png",
                            "unlearning_certificate.json"):
                if (output_dir / picture).exists():
                    (folder / picture).write_bytes((output_dir / picture).read_bytes())
            card = render_card("classifier.md", repo_id=classifier_repo, manifest=manifest.to_dict(),
                               manifest_hash=manifest.content_hash(), summary=summary,
                               dataset=published.get("dataset"), unlearning=summary.get("unlearning"))
            (folder / "README.md").write_text(card)
            revision = publish_folder(folder, classifier_repo, token=token, private=private,
                                      commit_message=f"Classifier for manifest {manifest.content_hash()[:12]}")
        published["classifier"] = {"repo": classifier_repo, "revision": revision}
    return published
