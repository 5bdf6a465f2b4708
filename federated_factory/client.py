"""What a hospital runs: train a factory on its own images, audit it for memorization, publish it privately.

The images never leave this module: what is published is a `FactoryPipeline` (safetensors weights), a
`factory.json` with the metadata the aggregator needs, a model card and a sample grid.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import atomic_writer
from .errors import FactoryError
from .tensors import images_to_uint8

FACTORY_METADATA_FILE = "factory.json"
FACTORY_FORMAT_VERSION = 1


@dataclass
class FactoryConfig:
    """Everything that defines how a factory is trained. Serialized into `factory.json`."""

    image_size: int = 32
    channels: int = 3
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention: bool = False  # self-attention at the lowest resolution
    norm_num_groups: int = 8
    beta_schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    prediction_type: str = "v_prediction"  # or "epsilon" (v gives far cleaner samples at small budgets)
    train_steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.995
    flip: str = "none"  # "none", "h" (horizontal) or "hv" (horizontal and vertical), where the data allows it
    cfg_dropout: float = 0.0  # > 0 trains a null class for classifier-free guidance
    mixed_precision: str = "no"  # "no" or "bf16" (autocast on CPU with AMX/AVX-512-BF16, and on GPU)
    audit_holdout_fraction: float = 0.1  # client images kept out of training for the privacy audit
    seed: int = 0
    checkpoint_every: int = 0  # steps; 0 = no intermediate checkpoints

    def to_dict(self) -> dict:
        data = asdict(self)
        data["block_out_channels"] = list(self.block_out_channels)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> FactoryConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise FactoryError(f"unknown factory config field(s): {sorted(unknown)}")
        data = dict(data)
        if "block_out_channels" in data:
            data["block_out_channels"] = tuple(data["block_out_channels"])
        return cls(**data)


#: Presets sized for the machine. `tiny`: seconds, for tests. `cpu`: a 32×32 client of a couple of
#: thousand images in at most 15 minutes on 2 cores. `gpu`: a bigger network and budget for one H100.
PRESETS: dict[str, FactoryConfig] = {
    "tiny": FactoryConfig(block_out_channels=(16, 32), train_steps=30, batch_size=16, warmup_steps=5, lr=2e-3),
    "demo": FactoryConfig(block_out_channels=(16, 32, 64), train_steps=450, batch_size=64, warmup_steps=50),
    "cpu": FactoryConfig(
        block_out_channels=(32, 64, 64), train_steps=1200, batch_size=64, warmup_steps=100, mixed_precision="bf16"
    ),
    "gpu": FactoryConfig(
        block_out_channels=(64, 128, 256),
        layers_per_block=2,
        attention=True,
        norm_num_groups=32,
        train_steps=20000,
        batch_size=256,
        lr=4e-4,
        warmup_steps=500,
        ema_decay=0.9995,
        mixed_precision="bf16",
    ),
}


def preset(name: str, **overrides) -> FactoryConfig:
    """The named preset with ``overrides`` applied (e.g. ``image_size=16, channels=1``)."""
    if name not in PRESETS:
        raise FactoryError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def build_unet(config: FactoryConfig, num_classes: int):
    """The factory's class-conditional `UNet2DModel` (one embedding per class, plus a null class for CFG)."""
    from diffusers import UNet2DModel

    levels = len(config.block_out_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if config.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=config.image_size,
        in_channels=config.channels,
        out_channels=config.channels,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=config.norm_num_groups,
        num_class_embeds=num_classes + int(config.cfg_dropout > 0),
    )


def build_scheduler(config: FactoryConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        clip_sample=True,
    )


# --------------------------------------------------------------------------------------------------
# Client data
# --------------------------------------------------------------------------------------------------


@dataclass
class ClientData:
    """One client's images as uint8 N×C×H×W plus local labels, split into training and audit hold-out."""

    class_names: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    holdout_images: np.ndarray
    holdout_labels: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)  # training images per class name

    @property
    def fingerprint(self) -> str:
        return dataset_fingerprint(self.train_images)


def dataset_fingerprint(images: np.ndarray) -> str:
    """sha256 over the sorted per-image sha256 digests: identifies a training set without revealing it."""
    digests = sorted(hashlib.sha256(np.ascontiguousarray(img).tobytes()).digest() for img in images)
    return hashlib.sha256(b"".join(digests)).hexdigest()


def prepare_client_data(dataset, config: FactoryConfig, classes: list[str] | None = None) -> ClientData:
    """Check a client's `datasets.Dataset(image, label)` and split off the audit hold-out (stratified, seeded).

    ``classes`` restricts training to these global class names (all classes present by default).
    Raises `FactoryError` for an empty dataset, an unknown class, or images of the wrong size/mode.
    """
    from datasets import ClassLabel

    if len(dataset) == 0:
        raise FactoryError("the client dataset is empty: there is nothing to train a factory on")
    label_feature = dataset.features.get("label")
    if not isinstance(label_feature, ClassLabel):
        raise FactoryError(f"the client dataset's 'label' column must be a ClassLabel, got {label_feature!r}")
    names = label_feature.names
    labels = np.asarray(dataset["label"], dtype=np.int64)
    present = [names[i] for i in sorted(set(labels.tolist()))]
    if classes is None:
        classes = present
    if len(set(classes)) != len(classes):
        raise FactoryError(f"duplicate class names in {list(classes)}: each class must be listed once")
    for name in classes:
        if name not in names:
            raise FactoryError(f"unknown class {name!r}: the dataset's classes are {names}")
        if name not in present:
            raise FactoryError(f"class {name!r} has no images in this client's dataset (it holds {present})")

    images = dataset["image"]
    expected_mode = "L" if config.channels == 1 else "RGB"
    for row, img in enumerate(images):
        if img.size != (config.image_size, config.image_size) or img.mode != expected_mode:
            raise FactoryError(
                f"image at row {row} is {img.mode} {img.size[0]}x{img.size[1]}, but the factory expects "
                f"{expected_mode} {config.image_size}x{config.image_size}; load the data with "
                f"image_size={config.image_size}, channels={config.channels}"
            )
    pixels = images_to_uint8(images, config.channels)

    rng = np.random.default_rng(config.seed)
    train_idx, holdout_idx, local = [], [], np.empty(len(labels), dtype=np.int64)
    for local_id, name in enumerate(classes):
        rows = np.flatnonzero(labels == names.index(name))
        local[rows] = local_id
        rows = rows[rng.permutation(len(rows))]
        n_hold = int(round(len(rows) * config.audit_holdout_fraction)) if len(rows) >= 10 else 0
        holdout_idx.extend(rows[:n_hold])
        train_idx.extend(rows[n_hold:])
    train_idx, holdout_idx = np.sort(train_idx), np.sort(holdout_idx).astype(np.int64)
    return ClientData(
        class_names=list(classes),
        train_images=pixels[train_idx],
        train_labels=local[train_idx],
        holdout_images=pixels[holdout_idx],
        holdout_labels=local[holdout_idx],
        counts={name: int((local[train_idx] == i).sum()) for i, name in enumerate(classes)},
    )


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainStats:
    steps: int
    final_loss: float
    loss_history: list[float]
    images_per_second: float
    wall_seconds: float


def _lr_lambda(config: FactoryConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.train_steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _augment(x: torch.Tensor, flip: str, generator: torch.Generator) -> torch.Tensor:
    if flip in ("h", "hv"):
        mask = torch.rand(x.shape[0], generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    if flip == "hv":
        mask = torch.rand(x.shape[0], generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-2), x)
    return x


def train_factory(
    data: ClientData,
    config: FactoryConfig,
    *,
    accelerator=None,
    output_dir: str | Path | None = None,
    progress: bool = True,
):
    """Train a `FactoryPipeline` on ``data`` and return ``(pipeline with EMA weights, TrainStats)``.

    Epsilon- or v-prediction DDPM objective, AdamW with linear warm-up and cosine decay, EMA weights,
    optional flips and classifier-free-guidance label dropout. With ``output_dir``, checkpoints are
    written every ``config.checkpoint_every`` steps and a run resumes from the latest one.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from .pipeline import FactoryPipeline

    if config.flip not in ("none", "h", "hv"):
        raise FactoryError(f"flip must be 'none', 'h' or 'hv', got {config.flip!r}")
    if len(data.train_images) == 0:
        raise FactoryError("the client has no training images left after the audit hold-out")
    if config.mixed_precision not in ("no", "bf16"):
        raise FactoryError(f"mixed_precision must be 'no' or 'bf16', got {config.mixed_precision!r}")
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device
    # Denormal floats (tiny Adam moments, EMA updates) slow CPU kernels down by orders of magnitude.
    torch.set_flush_denormal(True)
    torch.manual_seed(config.seed)
    num_classes = len(data.class_names)
    unet = build_unet(config, num_classes)
    scheduler = build_scheduler(config)
    ema = build_unet(config, num_classes)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)

    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    unet, optimizer = accelerator.prepare(unet, optimizer)
    ema.to(device)

    images = torch.from_numpy(data.train_images).float().div_(127.5).sub_(1.0)
    labels = torch.from_numpy(data.train_labels)
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    # Each process draws its own batches (a different stream per rank under DDP); one process is the norm on CPU.
    generator = torch.Generator().manual_seed(config.seed + accelerator.process_index)

    start_step, losses = 0, []
    ckpt_dir = Path(output_dir) / "checkpoint" if output_dir else None
    # What a checkpoint must match to be resumed: same training config (bar the checkpoint interval), classes
    # and training images. Resuming someone else's run would publish its weights under this run's metadata.
    run = {
        "config": {k: v for k, v in config.to_dict().items() if k != "checkpoint_every"},
        "classes": list(data.class_names),
        "training_set_fingerprint": data.fingerprint,
    }
    if ckpt_dir is not None and (ckpt_dir / "state.pt").exists():
        state = torch.load(ckpt_dir / "state.pt", map_location="cpu", weights_only=True)
        if state.get("run") not in (None, run):
            raise FactoryError(
                f"the checkpoint in {ckpt_dir} belongs to a different training run (its config, classes or training "
                "images differ from this one); delete it or use another output_dir"
            )
        accelerator.unwrap_model(unet).load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        generator.set_state(state["generator"])
        start_step, losses = int(state["step"]), list(state["losses"])

    unet.train()
    bar = tqdm(
        range(start_step, config.train_steps),
        initial=start_step,
        total=config.train_steps,
        desc=f"factory {'+'.join(data.class_names)[:30]}",
        disable=not (progress and accelerator.is_main_process),
        unit="step",
    )
    t0, seen = time.perf_counter(), 0
    for step in bar:
        idx = torch.randint(0, len(images), (config.batch_size,), generator=generator)
        x0 = _augment(images[idx], config.flip, generator).to(device)
        y = labels[idx].to(device)
        if config.cfg_dropout > 0:
            drop = torch.rand(len(y), generator=generator).to(device) < config.cfg_dropout
            y = torch.where(drop, torch.full_like(y, num_classes), y)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        t = torch.randint(0, config.num_train_timesteps, (len(x0),), generator=generator).to(device)
        a = alphas_cumprod[t].sqrt()[:, None, None, None]
        s = (1 - alphas_cumprod[t]).sqrt()[:, None, None, None]
        noisy = a * x0 + s * noise
        target = noise if config.prediction_type == "epsilon" else a * noise - s * x0
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.mixed_precision == "bf16"):
            pred = unet(noisy, t, class_labels=y).sample
        loss = F.mse_loss(pred.float(), target)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()

        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), accelerator.unwrap_model(unet).parameters()):
                p_ema.lerp_(p.detach(), 1 - decay)
        losses.append(loss.item())
        seen += len(x0)
        if step % 10 == 0 or step == config.train_steps - 1:
            rate = seen / max(1e-9, time.perf_counter() - t0)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", img_s=f"{rate:.0f}")
        if ckpt_dir is not None and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            _save_checkpoint(ckpt_dir, accelerator.unwrap_model(unet), ema, optimizer, lr_schedule, generator, step + 1,
                             losses, run=run)
    bar.close()
    wall = time.perf_counter() - t0

    ema.eval()
    pipeline = FactoryPipeline(
        unet=ema.to("cpu"), scheduler=scheduler, class_names=data.class_names, null_class=config.cfg_dropout > 0
    )
    stats = TrainStats(
        steps=config.train_steps,
        final_loss=float(np.mean(losses[-50:])) if losses else float("nan"),
        loss_history=[float(v) for v in losses],
        images_per_second=seen / wall if wall > 0 else 0.0,
        wall_seconds=wall,
    )
    return pipeline, stats


def _save_checkpoint(ckpt_dir: Path, unet, ema, optimizer, lr_schedule, generator, step: int, losses: list[float],
                     run: dict | None = None):
    """Atomically write a resumable training state (local only: checkpoints are never published)."""
    with atomic_writer(ckpt_dir / "state.pt") as handle:
        torch.save(
            {
                "unet": unet.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "lr_schedule": lr_schedule.state_dict(),
                "generator": generator.get_state(),
                "step": step,
                "losses": losses,
                "run": run,
            },
            handle,
        )


# --------------------------------------------------------------------------------------------------
# Privacy audit
# --------------------------------------------------------------------------------------------------


def _nearest_distances(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Euclidean distance (pixels in [0, 1], per-pixel RMS) from each query image to its nearest reference."""
    q = torch.from_numpy(queries.reshape(len(queries), -1)).float().div_(255.0)
    r = torch.from_numpy(references.reshape(len(references), -1)).float().div_(255.0)
    d = torch.cdist(q, r).min(dim=1).values / math.sqrt(q.shape[1])
    return d.numpy()


def audit_privacy(
    pipeline,
    data: ClientData,
    *,
    samples_per_class: int = 64,
    sampler: str = "dpm++",
    num_inference_steps: int = 20,
    copy_quantile: float = 0.05,
    copy_factor: float = 0.5,
    max_copy_rate: float = 0.1,
    seed: int = 0,
) -> dict:
    """Measure how close the factory's samples come to the client's own training images.

    For each class, ``samples_per_class`` samples and the client's held-out images (never trained on) are
    compared with the training images of that class by nearest-neighbour distance. A sample counts as a
    *copy* when it is closer to a training image than ``copy_factor`` × the ``copy_quantile`` quantile of
    the held-out images' distances: closer than fresh images of the same class almost ever come. The copy
    rate is the fraction of such samples; publishing is refused above ``max_copy_rate`` (see `publish_factory`).
    Without held-out images for a class, the threshold falls back to the training images' own
    leave-one-out nearest-neighbour distances.
    """
    from .pipeline import make_scheduler

    pipeline.scheduler = make_scheduler(sampler, pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    per_class, all_sample_d, copies, total = {}, [], 0, 0
    generator = torch.Generator().manual_seed(seed)
    for local_id, name in enumerate(data.class_names):
        train = data.train_images[data.train_labels == local_id]
        holdout = data.holdout_images[data.holdout_labels == local_id]
        images = pipeline(name, num_images=samples_per_class, num_inference_steps=num_inference_steps,
                          generator=generator, output_type="np").images
        samples = np.round(images * 255).astype(np.uint8).transpose(0, 3, 1, 2)
        d_samples = _nearest_distances(samples, train)
        if len(holdout):
            d_reference = _nearest_distances(holdout, train)
            reference = "held-out"
        else:  # leave-one-out distances among the training images themselves
            q = torch.from_numpy(train.reshape(len(train), -1)).float().div_(255.0)
            d = torch.cdist(q, q)
            d.fill_diagonal_(float("inf"))
            d_reference = (d.min(dim=1).values / math.sqrt(q.shape[1])).numpy()
            reference = "leave-one-out"
        threshold = copy_factor * float(np.quantile(d_reference, copy_quantile))
        n_copies = int((d_samples < threshold).sum())
        copies += n_copies
        total += len(d_samples)
        all_sample_d.append(d_samples)
        per_class[name] = {
            "samples": int(len(d_samples)),
            "copies": n_copies,
            "copy_rate": n_copies / len(d_samples),
            "threshold": threshold,
            "reference": reference,
            "sample_nn_distance_quantiles": _quantiles(d_samples),
            "reference_nn_distance_quantiles": _quantiles(d_reference),
        }
    copy_rate = copies / max(1, total)
    return {
        "method": "nearest-neighbour distance of samples to the client's training images vs held-out images",
        "distance": "per-pixel RMS distance, pixels in [0, 1]",
        "copy_rule": f"sample distance < {copy_factor} x q{int(copy_quantile * 100)} of reference distances",
        "samples_per_class": samples_per_class,
        "sampler": sampler,
        "num_inference_steps": num_inference_steps,
        "copy_rate": copy_rate,
        "max_copy_rate": max_copy_rate,
        "passed": copy_rate <= max_copy_rate,
        "sample_nn_distance_quantiles": _quantiles(np.concatenate(all_sample_d)),
        "per_class": per_class,
    }


def _quantiles(values: np.ndarray) -> dict[str, float]:
    return {f"q{q:02d}": float(np.quantile(values, q / 100)) for q in (1, 5, 25, 50, 75, 95)}


# --------------------------------------------------------------------------------------------------
# Metadata, card and publishing
# --------------------------------------------------------------------------------------------------


def package_versions() -> dict[str, str]:
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
    }


def sample_grid(pipeline, class_names: list[str], per_class: int = 8, *, sampler: str = "dpm++",
                num_inference_steps: int = 20, seed: int = 0):
    """One row of samples per class, as a PIL image."""
    from .pipeline import make_scheduler
    from .plots import image_grid

    pipeline.scheduler = make_scheduler(sampler, pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for name in class_names:
        images = pipeline(name, num_images=per_class, num_inference_steps=num_inference_steps,
                          generator=generator, output_type="np").images
        rows.append(np.round(images * 255).astype(np.uint8).transpose(0, 3, 1, 2))
    return image_grid(rows, scale=3 if pipeline.unet.config.sample_size <= 32 else 1)


@dataclass
class PublishedFactory:
    repo_id: str
    revision: str  # the commit sha of the single publishing commit

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}"

    def manifest_entry(self) -> dict:
        return {"repo": self.repo_id, "revision": self.revision}


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

    Refuses (raising `PrivacyAuditError`) when the privacy audit failed, unless ``allow_copies``. Checks
    the token and the endpoint before writing anything, so a failure never leaves a partial publish.
    """
    import tempfile

    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from .errors import PrivacyAuditError
    from .hub.cards import render_card

    audit = metadata["privacy_audit"]
    if not audit["passed"] and not allow_copies:
        raise PrivacyAuditError(
            f"privacy audit failed for {repo_id}: {audit['copy_rate']:.1%} of samples are near-copies of training "
            f"images (limit {audit['max_copy_rate']:.1%}); nothing was published. Train longer on more data, or "
            f"pass allow_copies=True / --allow-copies to publish anyway (the card will say so)."
        )
    api = HfApi(token=token)
    try:
        user = api.whoami()
    except HfHubHTTPError as err:
        raise FactoryError(f"cannot publish {repo_id}: the Hub rejected the token ({err.response.status_code}); "
                           "pass a write token with --token or HF_TOKEN") from None
    except (OSError, httpx2.TransportError) as err:
        from huggingface_hub import constants

        raise FactoryError(f"cannot publish {repo_id}: Hub endpoint {constants.ENDPOINT} is unreachable ({err})") from None
    role = (user.get("auth", {}).get("accessToken", {}) or {}).get("role")
    if role not in (None, "write", "fineGrained"):
        raise FactoryError(f"cannot publish {repo_id}: the token has role {role!r}, a write token is needed")

    with tempfile.TemporaryDirectory(prefix="factory-") as tmp:
        folder = Path(tmp)
        pipeline.save_pretrained(folder, safe_serialization=True)
        (folder / FACTORY_METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
        if grid is None:
            grid = sample_grid(pipeline, metadata["classes"], seed=metadata["config"]["seed"])
        grid.save(folder / "samples.png")
        card = render_card("factory.md", repo_id=repo_id, metadata=metadata, license=license)
        (folder / "README.md").write_text(card)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
        except HfHubHTTPError as err:
            raise FactoryError(f"cannot publish {repo_id}: the Hub refused to create it ({err.response.status_code}); "
                               "does this token's user own that namespace, or belong to that organization?") from None
        if private and not api.repo_info(repo_id).private:
            raise FactoryError(
                f"cannot publish {repo_id}: the repo already exists and is public, and a factory is only published "
                "to a private repo; nothing was published (make the repo private or choose another one)"
            )
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=f"Publish factory for classes {', '.join(metadata['classes'])}",
        )
    return PublishedFactory(repo_id=repo_id, revision=commit.oid)


def run_client(
    dataset,
    repo_id: str,
    config: FactoryConfig,
    *,
    classes: list[str] | None = None,
    token: str | None = None,
    output_dir: str | Path | None = None,
    allow_copies: bool = False,
    audit_samples_per_class: int = 64,
    publish: bool = True,
    accelerator=None,
    progress: bool = True,
) -> tuple[PublishedFactory | None, dict]:
    """The whole client job: check data → train → audit → metadata → publish (one commit).

    Returns ``(published factory or None, metadata)``. The pipeline, metadata and grid are also saved under
    ``output_dir`` when given (local copies; the training images are never written anywhere).
    """
    data = prepare_client_data(dataset, config, classes)
    pipeline, stats = train_factory(data, config, accelerator=accelerator, output_dir=output_dir, progress=progress)
    if accelerator is not None and not accelerator.is_main_process:
        return None, {}
    audit = audit_privacy(pipeline, data, samples_per_class=audit_samples_per_class, seed=config.seed)
    metadata = factory_metadata(data, config, stats, audit)
    grid = sample_grid(pipeline, data.class_names, seed=config.seed)
    if output_dir is not None:
        out = Path(output_dir)
        pipeline.save_pretrained(out / "pipeline", safe_serialization=True)
        (out / FACTORY_METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
        grid.save(out / "samples.png")
    published = None
    if publish:
        published = publish_factory(pipeline, metadata, repo_id, token=token, allow_copies=allow_copies, grid=grid)
    return published, metadata
