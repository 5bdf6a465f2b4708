"""What a hospital runs: train a factory on its own images, audit it for memorization, publish it privately.

`run_client(dataset, repo_id, preset("cpu", ...))` is the whole job; its steps live in modules named after them:

- `federated_factory.factory_config`: `FactoryConfig`, the presets, the UNet and its noise schedule;
- `federated_factory.client_data`: the hospital's images checked, split (training / audit hold-out), fingerprinted;
- `federated_factory.factory_training`: `train_factory` (objective, EMA, flips, checkpoints);
- `federated_factory.privacy`: `audit_privacy`, the memorization audit judged on the worst class;
- this module: the `factory.json` metadata, the sample grid, `publish_factory` and `run_client`.

The images never leave: what is published is a `FactoryPipeline` (safetensors weights, with the documented
default sampler `DEFAULT_SAMPLER` as its scheduler), `factory.json`, a model card and a sample grid, in ONE
commit through `federated_factory.hub.publish.publish_folder`.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write_json
from .client_data import ClientData, prepare_client_data
from .factory_config import FactoryConfig, preset
from .factory_training import TrainStats, train_factory
from .pipeline import DEFAULT_SAMPLER
from .privacy import DEFAULT_SAMPLES_PER_CLASS, audit_privacy, require_passed
from .tensors import samples_to_uint8

__all__ = [
    "FACTORY_METADATA_FILE", "FactoryConfig", "PublishedFactory", "factory_metadata", "preset", "publish_factory",
    "run_client", "sample_grid",
]

FACTORY_METADATA_FILE = "factory.json"
FACTORY_FORMAT_VERSION = 1


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that make and read a factory (recorded in `factory.json`)."""
    from importlib.metadata import PackageNotFoundError, version

    names = ["federated-factory", "torch", "diffusers", "huggingface-hub", "datasets", "accelerate"]
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def factory_metadata(data: ClientData, config: FactoryConfig, stats: TrainStats, audit: dict) -> dict:
    """The `factory.json` the aggregator reads: classes, counts, image format, training record, audit."""
    train_stats = asdict(stats)
    train_stats.pop("loss_history")
    return {
        "format_version": FACTORY_FORMAT_VERSION,
        "pipeline_class": "FactoryPipeline",
        "classes": list(data.class_names),
        "class_counts": dict(data.counts),
        "image_size": config.image_size,
        "channels": config.channels,
        "normalization": "x / 127.5 - 1 (uint8 pixels to [-1, 1])",
        "config": config.to_dict(),
        "train_stats": train_stats,
        "versions": package_versions(),
        "training_set_fingerprint": data.fingerprint,
        "privacy_audit": audit,
        "published_sampler": DEFAULT_SAMPLER,
    }


def sample_grid(pipeline, class_names: list[str], per_class: int = 8, *, sampler: str = DEFAULT_SAMPLER,
                num_inference_steps: int = 20, seed: int = 0):
    """One row of samples per class, as a PIL image (sampled with ``sampler``; ``pipeline`` is left unchanged)."""
    from .plots import image_grid

    pipeline = pipeline.with_sampler(sampler)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for name in class_names:
        images = pipeline(name, num_images=per_class, num_inference_steps=num_inference_steps,
                          generator=generator, output_type="np").images
        rows.append(samples_to_uint8(images))
    return image_grid(rows, scale=3 if pipeline.unet.config.sample_size <= 32 else 1)


@dataclass
class PublishedFactory:
    """A published factory: the repo and the sha of its publishing commit (what a manifest pins)."""

    repo_id: str
    revision: str  # the commit sha of the single publishing commit

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}"

    def manifest_entry(self) -> dict:
        return {"repo": self.repo_id, "revision": self.revision}


def publishable_pipeline(pipeline, config: FactoryConfig):
    """``pipeline``'s weights with the scheduler a factory is published with: the documented default sampler
    (`DEFAULT_SAMPLER`) on the noise schedule of ``config``, the one the factory was trained with.

    Never the scheduler ``pipeline`` happens to carry (an audit or a caller may have swapped it); ``pipeline`` is
    left unchanged.
    """
    from .factory_config import build_scheduler
    from .pipeline import FactoryPipeline

    trained_with = FactoryPipeline(unet=pipeline.unet, scheduler=build_scheduler(config),
                                   class_names=pipeline.class_names, null_class=pipeline.config.null_class)
    return trained_with.with_sampler(DEFAULT_SAMPLER)


def save_factory(pipeline, metadata: dict, folder: str | Path, *, grid=None, license: str = "other",
                 repo_id: str | None = None) -> Path:
    """Write what a factory repo holds into ``folder``: the pipeline, `factory.json`, the card and the sample grid.

    The pipeline is saved with the documented default sampler on its training noise schedule
    (`publishable_pipeline`), whatever sampler ran last. Weights are safetensors only.
    """
    from .hub.cards import render_card

    folder = Path(folder)
    config = FactoryConfig.from_dict(metadata["config"])
    publishable_pipeline(pipeline, config).save_pretrained(folder, safe_serialization=True)
    atomic_write_json(folder / FACTORY_METADATA_FILE, metadata)
    if grid is None:
        grid = sample_grid(pipeline, metadata["classes"], seed=metadata["config"]["seed"])
    grid.save(folder / "samples.png")
    if repo_id is not None:
        card = render_card("factory.md", repo_id=repo_id, metadata=metadata, license=license)
        (folder / "README.md").write_text(card)
    return folder


def publish_factory(
    pipeline,
    metadata: dict,
    repo_id: str,
    *,
    token: str | None,
    private: bool = True,
    allow_copies: bool = False,
    license: str = "other",
    grid=None,
) -> PublishedFactory:
    """Publish a factory to a private Hub repo in ONE commit: pipeline, `factory.json`, card and sample grid.

    Refuses (raising `PrivacyAuditError`, before contacting the Hub) when the privacy audit failed, unless
    ``allow_copies``; the audit then records ``allowed_copies: true`` and the card says so. The token, the
    endpoint and the repo's visibility are checked by `publish_folder` before anything is written
    (`PublishError`), so a failure never leaves a partial publish.
    """
    from .hub.publish import publish_folder

    audit = metadata["privacy_audit"]
    if not allow_copies:
        require_passed(audit, repo_id)
    metadata = {**metadata, "privacy_audit": {**audit, "allowed_copies": bool(allow_copies)}}
    with tempfile.TemporaryDirectory(prefix="factory-") as tmp:
        folder = save_factory(pipeline, metadata, tmp, grid=grid, license=license, repo_id=repo_id)
        revision = publish_folder(folder, repo_id, token=token, private=private,
                                  commit_message=f"Publish factory for classes {', '.join(metadata['classes'])}")
    return PublishedFactory(repo_id=repo_id, revision=revision)


def run_client(
    dataset,
    repo_id: str,
    config: FactoryConfig,
    *,
    classes: list[str] | None = None,
    token: str | None = None,
    output_dir: str | Path | None = None,
    allow_copies: bool = False,
    audit_samples_per_class: int = DEFAULT_SAMPLES_PER_CLASS,
    publish: bool = True,
    accelerator=None,
    progress: bool = True,
    report_seconds: float = 0.0,
) -> tuple[PublishedFactory | None, dict]:
    """The whole client job: check data → train → audit → metadata → publish (one commit).

    Returns ``(published factory or None, metadata)``. The pipeline, metadata and grid are also saved under
    ``output_dir`` when given (local copies; the training images are never written anywhere). The audit is
    invariant to the flips the factory was trained with (``config.flip``).
    """
    data = prepare_client_data(dataset, config, classes)
    pipeline, stats = train_factory(data, config, accelerator=accelerator, output_dir=output_dir, progress=progress,
                                    report_seconds=report_seconds)
    if accelerator is not None and not accelerator.is_main_process:
        return None, {}
    audit = audit_privacy(pipeline, data, flip=config.flip, samples_per_class=audit_samples_per_class,
                          seed=config.seed)
    audit["allowed_copies"] = bool(allow_copies)
    metadata = factory_metadata(data, config, stats, audit)
    grid = sample_grid(pipeline, data.class_names, seed=config.seed)
    if output_dir is not None:
        out = Path(output_dir)
        publishable_pipeline(pipeline, config).save_pretrained(out / "pipeline", safe_serialization=True)
        atomic_write_json(out / FACTORY_METADATA_FILE, metadata)
        grid.save(out / "samples.png")
    published = None
    if publish:
        published = publish_factory(pipeline, metadata, repo_id, token=token, allow_copies=allow_copies, grid=grid)
    return published, metadata
