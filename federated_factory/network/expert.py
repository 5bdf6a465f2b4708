"""What a hospital runs in network mode: its own real images + synthetic images of the classes it lacks → an expert.

The synthetic part is the server plan restricted to the classes the hospital does not hold: the same
`plan_synthesis` shards (same factories, same per-class split by declared counts, same stream seeds), so the
chunks are exactly those the aggregator draws and one `ChunkCache` serves both modes.

Balance per class (the server plan's ``samples_per_class`` = N):

* a class the hospital lacks gets exactly N synthetic rows (the server plan's shards for that class);
* a class the hospital holds gets its own real images, at most N of them: a seeded subset (``config.seed``)
  when it has more; all of them, never duplicated, when it has fewer. Its own classes get no synthetic rows,
  unless the hospital asks for the top-up (``top_up``): then a class it holds r < N images of also gets
  N - r synthetic rows, the first rows of each of the class's server shards, cut in proportion to the shards'
  counts, so every class has N rows and the chunks are still the aggregator's. Where every hospital holds
  every class (a Dirichlet partition), the top-up is what gives the network mode any synthetic rows at all.

Model selection uses a stratified validation split (``classifier.val_fraction``, seeded) of this combined
set (real and synthetic rows); no test set is read. Every row carries provenance: synthetic rows the
``source_repo``/``source_revision``/``seed``/``index`` of their stream, the hospital's own rows
``source_repo = OWN_DATA_SOURCE`` and ``source_revision`` = a sha256 fingerprint of the hospital's images.
`training_provenance.json` (no pixels) records the provenance of every training and validation row.

The expert folder is a timm folder (`save_classifier`: ``config.json`` + ``model.safetensors``) plus
``expert.json``: the manifest hash and label space it was trained against, the factories (repo@sha) whose
images it used, its training config and its own validation metrics.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_json, atomic_write_text
from ..errors import FederatedFactoryError
from ..hub.manifest import Manifest

#: ``source_repo`` of the rows that are the hospital's own real images.
OWN_DATA_SOURCE = "own-real-data"
#: The file in an expert folder / repo that makes it an expert (read by `combine` and `ProductOfExperts`).
EXPERT_FILE = "expert.json"
EXPERT_FORMAT = "federated_factory.expert"


class ExpertError(FederatedFactoryError, ValueError):
    """An expert cannot be trained or combined as asked; the message names the repo at fault."""


def manifest_identity(manifest: Manifest) -> str:
    """The hash an expert records of the (resolved, pinned) manifest it was trained against: the manifest's
    content hash with each factory as repo@sha only (a content digest, where the manifest records one, is
    implied by the sha), so a manifest and its resolved copy have the same identity."""
    from ..hub.manifest import FactoryEntry

    plain = [FactoryEntry(f.repo, f.revision) for f in manifest.factories]
    return Manifest(**{**manifest.__dict__, "factories": plain}).content_hash()


@dataclass
class Hospital:
    """One member of the network: its own real images, its factory in the manifest (if it published one),
    the private repo its expert goes to, and the token it publishes with (never printed)."""

    name: str
    data: Any  # datasets.Dataset(image, label: ClassLabel)
    factory: str | None = None
    expert_repo: str | None = None
    token: str | None = None
    top_up: bool = False  # a class held with fewer than N images is topped up to N with synthetic rows

    def __repr__(self) -> str:  # keeps the token and the data out of logs
        return f"Hospital(name={self.name!r}, factory={self.factory!r}, expert_repo={self.expert_repo!r})"


@dataclass
class ExpertResult:
    output_dir: Path
    expert_dir: Path  # timm folder + expert.json
    manifest: Manifest  # resolved: every factory pinned to a commit sha
    own_classes: list[str]
    synthetic_classes: list[str]
    plan: dict  # the server plan's shards that this expert drew
    synthesis: dict
    training: dict
    validation: dict
    provenance: dict  # rows per source_repo
    weights_sha256: str = ""
    published: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    top_up: bool = False  # own classes with fewer than N real rows were topped up with synthetic rows

    @property
    def ref(self) -> str | None:
        """``repo@sha`` of the published expert, or None when it was not published."""
        pub = self.published.get("expert")
        return f"{pub['repo']}@{pub['revision']}" if pub else None

    def to_dict(self) -> dict:
        return {
            "output_dir": str(self.output_dir),
            "expert_dir": str(self.expert_dir),
            "manifest": self.manifest.to_dict(),
            "manifest_hash": manifest_identity(self.manifest),
            "own_classes": self.own_classes,
            "synthetic_classes": self.synthetic_classes,
            "top_up": self.top_up,
            "plan": self.plan,
            "synthesis": self.synthesis,
            "training": self.training,
            "validation": self.validation,
            "provenance": self.provenance,
            "weights_sha256": self.weights_sha256,
            "published": self.published,
            "timings": self.timings,
        }


# --------------------------------------------------------------------------------------------------
# checks and plan
# --------------------------------------------------------------------------------------------------


def expert_label(repo: str | None, factory: str | None) -> str:
    """How errors name an expert: its repo and, when it has one, its hospital's factory."""
    return f"expert {repo or '(unpublished)'}" + (f" (factory {factory})" if factory else "")


def own_class_counts(data, manifest: Manifest, who: str) -> dict[str, int]:
    """{class name: images of it in ``data``} for the classes present, in label-space order. Raises `ExpertError`
    naming ``who`` when a class is outside the manifest's label space or the data has no images."""
    from ..classifier import label_names_of

    try:
        names = label_names_of(data)
    except ValueError as err:
        raise ExpertError(f"{who}: its data is not an image-classification dataset ({err})") from None
    if len(data) == 0:
        raise ExpertError(f"{who}: its data has no images")
    labels, counts = np.unique(np.asarray(data["label"]), return_counts=True)
    present = {names[i]: int(n) for i, n in zip(labels, counts)}
    outside = sorted(set(present) - set(manifest.label_space))
    if outside:
        raise ExpertError(f"{who}: its data holds class(es) {outside} outside the manifest's label space "
                          f"{manifest.label_space}")
    return {name: present[name] for name in manifest.label_space if name in present}


def expert_plan(manifest: Manifest, factories, own_classes: list[str], who: str, *,
                top_up: dict[str, int] | None = None):
    """The server plan (`plan_synthesis`) restricted to the classes the hospital lacks.

    ``top_up``: {own class: real rows the expert uses of it}; a class with r < N of them also gets N - r rows,
    the first rows of each of its server shards, split in proportion to the shards' counts (`split_by_counts`).
    Raises `ExpertError` naming ``who`` and the classes when a class it must synthesize has no factory."""
    from ..synthesis import SynthesisPlan, plan_synthesis, split_by_counts

    full = plan_synthesis(manifest.label_space, factories, manifest.synthesis)
    lacking = [name for name in manifest.label_space if name not in own_classes]
    unheld = [name for name in lacking if name in full.missing_classes]
    if unheld:
        listed = ", ".join(f"{f.repo}@{f.revision}" for f in factories)
        raise ExpertError(f"{who}: class(es) {unheld} are not in its own data and no factory of the manifest holds "
                          f"them (factories: {listed}); add a factory for them or drop them from the label space")
    counts = {name: 0 for name in lacking}  # a lacking class takes its whole shards (N rows)
    for name, real in (top_up or {}).items():
        counts[name] = min(real, full.samples_per_class)
    shards = []
    for name in manifest.label_space:
        own_shards = [s for s in full.shards if s.class_name == name]
        if name not in counts or not own_shards:
            continue
        cut = split_by_counts(full.samples_per_class - counts[name], [s.count for s in own_shards])
        shards += [replace(s, count=n) for s, n in zip(own_shards, cut) if n > 0]
    return SynthesisPlan(list(manifest.label_space), full.samples_per_class, shards, [])


def real_rows_per_class(counts: dict[str, int], cap: int) -> dict[str, int]:
    """The real rows an expert uses of each class it holds: all of them, or ``cap`` when it has more (0: no cap)."""
    return {name: min(n, cap) if cap else n for name, n in counts.items()}


def hospital_plan(resolved: Manifest, factories, data, who: str, *, top_up: bool = False,
                  max_real_per_class: int | None = None):
    """(own classes, the expert's `expert_plan`) for a hospital's ``data``: the one place that decides which
    chunks an expert reads, shared by `train_expert` and the network's cache filling."""
    counts = own_class_counts(data, resolved, who)
    cap = resolved.synthesis.samples_per_class if max_real_per_class is None else max_real_per_class
    plan = expert_plan(resolved, factories, list(counts), who,
                       top_up=real_rows_per_class(counts, cap) if top_up else None)
    return list(counts), plan


def _check_format(data, factories, who: str) -> None:
    formats = {(f.metadata.get("image_size"), f.metadata.get("channels")) for f in factories}
    if len(formats) != 1:
        return  # pull_factories already refused disagreeing factories
    size, channels = formats.pop()
    image = data[0]["image"]
    own_channels = 1 if image.mode in ("L", "1", "I", "I;16", "F") else 3
    if size is not None and (image.size != (size, size) or (channels is not None and own_channels != channels)):
        raise ExpertError(f"{who}: its images are {image.size[0]}x{image.size[1]} px with {own_channels} channel(s) but "
                          f"the manifest's factories produce {size}x{size} px with {channels}; load them with "
                          f"image_size={size}, channels={channels}")


# --------------------------------------------------------------------------------------------------
# training set
# --------------------------------------------------------------------------------------------------


def _features(label_space: list[str]):
    from datasets import ClassLabel, Features, Image, Value

    return Features({
        "image": Image(),
        "label": ClassLabel(names=list(label_space)),
        "source_repo": Value("string"),
        "source_revision": Value("string"),
        "seed": Value("int64"),
        "index": Value("int64"),
    })


def data_fingerprint(data, channels: int) -> str:
    """sha256 over the hospital's images (uint8) and labels: names its own data without revealing it."""
    from ..tensors import images_to_uint8

    digest = hashlib.sha256()
    digest.update(images_to_uint8(data["image"], channels).tobytes())
    digest.update(np.asarray(data["label"], dtype=np.int64).tobytes())
    return digest.hexdigest()


def expert_training_set(data, plan, cache, *, max_real_per_class: int | None = None, seed: int = 0):
    """The expert's rows: its own real images (at most ``max_real_per_class`` per class, default the plan's
    ``samples_per_class``; a seeded subset when it has more) followed by the plan's synthetic rows.

    Returns a ``datasets.Dataset`` with the columns of `assemble_dataset` (image, label over the plan's label
    space, source_repo, source_revision, seed, index); own rows have ``source_repo == OWN_DATA_SOURCE``,
    ``source_revision`` = `data_fingerprint`, ``seed = -1`` and ``index`` = the row in ``data``."""
    from datasets import concatenate_datasets

    from ..classifier import image_channels_of, label_names_of
    from ..synthesis import assemble_dataset

    label_space = plan.label_space
    cap = plan.samples_per_class if max_real_per_class is None else max_real_per_class
    names = label_names_of(data)
    labels = np.asarray(data["label"])
    rng = np.random.default_rng(seed)
    rows = []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        if cap and len(idx) > cap:
            idx = np.sort(rng.choice(idx, size=cap, replace=False))
        rows.append(idx)
    rows = np.sort(np.concatenate(rows))
    synthetic = assemble_dataset(plan, cache) if plan.shards else None
    features = synthetic.features if synthetic is not None else _features(label_space)
    real = data.select(rows).select_columns(["image", "label"])
    fingerprint = data_fingerprint(real, image_channels_of(real))
    new_labels = [label_space.index(names[k]) for k in real["label"]]
    real = real.remove_columns("label").add_column("label", new_labels)
    n = len(real)
    own = {"source_repo": [OWN_DATA_SOURCE] * n, "source_revision": [fingerprint] * n, "seed": [-1] * n,
           "index": [int(i) for i in rows]}
    for name, feature in features.items():  # any other provenance column (e.g. a content digest): the fingerprint
        if name not in own and name not in ("image", "label"):
            own[name] = [fingerprint] * n if getattr(feature, "dtype", "") == "string" else [-1] * n
    for name in features:
        if name in own:
            real = real.add_column(name, own[name])
    real = real.select_columns(list(features)).cast(features)
    return concatenate_datasets([real] + ([synthetic] if synthetic is not None else []))


def stratified_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices: ``round(fraction·n_c)`` of each class held out (at least one when the
    class has two or more rows), drawn with a generator seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(fraction * len(idx)))
        if fraction > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _provenance_counts(dataset) -> dict[str, int]:
    repos, counts = np.unique(np.asarray(dataset["source_repo"]), return_counts=True)
    return {str(r): int(c) for r, c in zip(repos, counts)}


# --------------------------------------------------------------------------------------------------
# the whole job
# --------------------------------------------------------------------------------------------------


def train_expert(
    manifest: Manifest,
    data,
    *,
    repo: str | None = None,
    factory: str | None = None,
    classifier: dict | None = None,
    max_real_per_class: int | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
    output_dir: str | Path | None = None,
    accelerator=None,
    publish: bool = True,
    private: bool = True,
    progress: bool = True,
    top_up: bool = False,
) -> ExpertResult:
    """Train this hospital's expert: own real ``data`` + synthetic images of the classes it lacks; publish it.

    ``data``: the hospital's own ``datasets.Dataset(image, label: ClassLabel)`` at the factories' image size and
    channels. ``repo``: the hospital's private repo for the expert (published when ``publish``). ``factory``:
    the hospital's own factory repo in the manifest (recorded; must be listed when given). ``classifier``:
    ClassifierConfig fields (default: the manifest's). ``cache_dir``: the chunk cache shared with the
    aggregator (``<cache_dir>/chunks``). Pull checks are the aggregator's (`pull_factories`); a class that
    must be synthesized but that no factory holds, or data outside the label space, raises `ExpertError`
    naming ``repo`` before any compute. ``top_up``: a class it holds fewer real images of than the plan's
    samples per class is topped up with synthetic rows (see the module's docstring). Call on every process
    (accelerate); the main process writes.
    """
    from accelerate import Accelerator

    from ..aggregator import _cuda, _tensor, default_cache_dir
    from ..classifier import ClassifierConfig, evaluate_classifier, save_classifier, train_classifier
    from ..synthesis import ChunkCache, pull_factories, synthesize
    from ..unlearning import weights_digest

    who = expert_label(repo, factory)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    if factory is not None and factory.partition("@")[0] not in {f.repo for f in manifest.factories}:
        listed = ", ".join(str(f) for f in manifest.factories)
        raise ExpertError(f"{who}: its factory {factory} is not in the manifest (it lists: {listed})")
    own_class_counts(data, manifest, who)  # bad data is refused before any pull
    config = ClassifierConfig.from_dict(dict(manifest.classifier if classifier is None else classifier))

    accelerator = accelerator or Accelerator(cpu=not _cuda())
    with accelerator.main_process_first():
        resolved_entries, factories = pull_factories(manifest, token=token)
    resolved = Manifest(**{**manifest.__dict__, "factories": resolved_entries})
    _check_format(data, factories, who)
    own_classes, plan = hospital_plan(resolved, factories, data, who, top_up=top_up,
                                      max_real_per_class=max_real_per_class)
    timings["pull_seconds"] = time.perf_counter() - t_start

    output_dir = Path(output_dir or (str(manifest.output_dir).rstrip("/") + "-expert"))
    cache = ChunkCache(Path(cache_dir or default_cache_dir()) / "chunks", resolved.synthesis)
    t0 = time.perf_counter()
    stats = synthesize(plan, factories, cache, accelerator=accelerator, progress=progress)
    timings["synthesis_seconds"] = time.perf_counter() - t0
    chunks_generated = int(accelerator.reduce(_tensor(stats.chunks_generated), reduction="sum").item())
    images_generated = int(accelerator.reduce(_tensor(stats.images_generated), reduction="sum").item())

    dataset = expert_training_set(data, plan, cache, max_real_per_class=max_real_per_class, seed=config.seed)
    labels = np.asarray(dataset["label"])
    if config.val_fraction > 0:
        train_idx, val_idx = stratified_indices(labels, config.val_fraction, config.seed)
    else:
        train_idx, val_idx = np.arange(len(dataset)), np.arange(0)
    train_ds, val_ds = dataset.select(train_idx), dataset.select(val_idx)
    t0 = time.perf_counter()
    result = train_classifier(train_ds, config, val_ds=val_ds if len(val_ds) else None,
                              accelerator=accelerator, progress=progress)
    timings["classifier_seconds"] = time.perf_counter() - t0

    synthetic_classes = sorted({s.class_name for s in plan.shards}, key=resolved.label_space.index)
    expert = ExpertResult(
        output_dir=output_dir,
        expert_dir=output_dir / "expert",
        manifest=resolved,
        own_classes=own_classes,
        synthetic_classes=synthetic_classes,
        plan=plan.to_dict(),
        synthesis={**stats.to_dict(), "chunks_generated": chunks_generated, "images_generated": images_generated,
                   "processes": accelerator.num_processes},
        training=result.summary(),
        validation={},
        provenance=_provenance_counts(dataset),
        timings=timings,
        top_up=top_up,
    )
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(result.model)
        expert.validation = _validation_metrics(model, val_ds, resolved.label_space, evaluate_classifier)
        save_classifier(model, expert.expert_dir, label_names=resolved.label_space, config=config, arch=config.arch)
        expert.weights_sha256 = weights_digest(expert.expert_dir)
        _write_provenance(output_dir / "training_provenance.json", dataset, train_idx, val_idx)
        atomic_write_json(expert.expert_dir / EXPERT_FILE,
                          expert_config(expert, config, factory=factory, repo=repo,
                                        own_fingerprint=_own_fingerprint(dataset)))
        timings["total_seconds"] = time.perf_counter() - t_start
        if publish and repo:
            expert.published["expert"] = publish_expert(expert, repo, token=token, private=private)
        atomic_write_json(output_dir / "results.json", expert.to_dict())
    accelerator.wait_for_everyone()
    return expert


def _validation_metrics(model, val_ds, label_space, evaluate_classifier) -> dict:
    """The expert's own validation metrics: on the whole split and on its real / synthetic rows."""
    if len(val_ds) == 0:
        return {}
    sources = np.asarray(val_ds["source_repo"])
    out = {"all": evaluate_classifier(model, val_ds, label_space)}
    for part, mask in (("real", sources == OWN_DATA_SOURCE), ("synthetic", sources != OWN_DATA_SOURCE)):
        if mask.any():
            m = evaluate_classifier(model, val_ds.select(np.flatnonzero(mask)), label_space)
            out[part] = {k: m[k] for k in ("accuracy", "macro_f1", "n")}
    return out


def _own_fingerprint(dataset) -> str | None:
    sources = np.asarray(dataset["source_repo"])
    own = np.flatnonzero(sources == OWN_DATA_SOURCE)
    return dataset[int(own[0])]["source_revision"] if len(own) else None


def _write_provenance(path: Path, dataset, train_idx, val_idx) -> None:
    split = np.empty(len(dataset), dtype=object)
    split[train_idx], split[val_idx] = "train", "validation"
    columns = dataset.select_columns([c for c in dataset.column_names if c != "image"]).to_dict()
    atomic_write_json(path, {**columns, "split": split.tolist()}, indent=None)


def read_provenance(output_dir: str | Path) -> dict[str, list]:
    """The provenance columns (label, source_repo, source_revision, seed, index, any other provenance column of
    the synthetic rows, split) of every row an expert
    trained or validated on, as written by `train_expert` to ``<output_dir>/training_provenance.json``."""
    return json.loads((Path(output_dir) / "training_provenance.json").read_text())


def expert_config(expert: ExpertResult, config, *, factory: str | None, repo: str | None, own_fingerprint) -> dict:
    """The content of ``expert.json``."""
    used = sorted({f"{s['repo']}@{s['revision']}" for s in expert.plan["shards"]})
    return {
        "format": EXPERT_FORMAT,
        "version": 1,
        "repo": repo,
        "manifest_hash": manifest_identity(expert.manifest),
        "federation": expert.manifest.federation,
        "label_space": list(expert.manifest.label_space),
        "manifest_factories": [str(f) for f in expert.manifest.factories],
        "factories_used": used,
        "own_factory": factory,
        "own_classes": expert.own_classes,
        "synthetic_classes": expert.synthetic_classes,
        "top_up": expert.top_up,
        "own_data_fingerprint": own_fingerprint,
        "rows_per_source": expert.provenance,
        "synthesis": asdict(expert.manifest.synthesis),
        "classifier": config.to_dict(),
        "best_epoch": expert.training.get("best_epoch"),
        "validation": _compact(expert.validation),
        "weights_sha256": expert.weights_sha256,
    }


def _compact(validation: dict) -> dict:
    out = {}
    for part, m in validation.items():
        out[part] = {k: m[k] for k in ("accuracy", "macro_f1", "auroc", "per_class_recall", "n") if k in m}
    return out


def publish_expert(expert: ExpertResult, repo: str, *, token: str | None = None, private: bool = True) -> dict:
    """Upload the expert folder with its card to ``repo`` (private by default) in one commit."""
    from huggingface_hub import HfApi

    from ..hub.cards import render_card

    config = json.loads((expert.expert_dir / EXPERT_FILE).read_text())
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="expert-") as tmp:
        folder = Path(tmp)
        for item in expert.expert_dir.iterdir():
            if item.is_file():
                (folder / item.name).write_bytes(item.read_bytes())
        card = render_card("expert.md", repo_id=repo, expert=config, summary=expert.to_dict())
        atomic_write_text(folder / "README.md", card)
        api.create_repo(repo, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo, folder_path=folder,
                                   commit_message=f"Expert for manifest {config['manifest_hash'][:12]}")
    return {"repo": repo, "revision": commit.oid}
