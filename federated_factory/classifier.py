"""The aggregator's classifier: build, train, evaluate, plot, save and load.

Architectures (``arch`` strings, timm style):

* ``timm/ff_cnn`` (default): a small VGG-like CNN (3×3 conv–BN–ReLU, widths 32-32 | 64-64 | 128, two
  2×2 max-pools, global average pooling), full resolution at the stem. Fast on CPU.
* ``timm/resnet18``: timm's ResNet-18 (BasicBlock, 2-2-2-2, widths 64…512) with a small-image stem:
  one 3×3 stride-1 conv and no max-pool (the usual CIFAR ResNet). Registered as ``ff_resnet18``.
* ``timm/<name>``: any other timm model, built from its config (``pretrained=False``).
* ``hf/vit-tiny``: transformers ``ViTForImageClassification`` (ViT-Ti width: 192 wide, 12 layers, 3 heads) with
  a 2×2 patch below 28 px and 4×4 from 28 px. Slow on CPU.
* ``hf/resnet``: transformers ``ResNetForImageClassification`` (ResNet-18 layout). Its stem is the fixed
  7×7/2 conv + max-pool of the original ResNet, which leaves 4×4 maps from 16 px inputs: a weak choice here.
* ``hf/<model_type>``: ``AutoConfig.for_model(model_type)`` with the label/channel/size fields filled in.

``ff_cnn`` and ``ff_resnet18`` are registered in timm's registry when this module is imported. A saved
classifier is a timm Hub folder (``config.json`` + ``model.safetensors``), so after uploading it::

    import federated_factory.classifier  # registers ff_cnn / ff_resnet18 with timm
    model = timm.create_model("hf-hub:user/repo", pretrained=True)

(``pretrained=True`` is what makes timm load the weights; ``local-dir:/path`` works the same way.) No stock
timm architecture gives a stride-1 small-image stem that trains this fast; see the README for the numbers.

Models take images in [0, 1] (N×C×H×W, as :func:`federated_factory.tensors.dataset_to_tensors` returns
them); the saved preprocessing config says so (mean 0, std 1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ClassifierHead
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet

from federated_factory.tensors import dataset_to_tensors

DEFAULT_ARCH = "timm/ff_cnn"
TIMM_ALIASES = {"resnet18": "ff_resnet18"}  # names whose small-stem version replaces the stock stem
HF_PRESETS = ("vit-tiny", "resnet")
FF_CONFIG_KEY = "federated_factory"  # our metadata inside config.json (timm and transformers ignore it)


# ----------------------------------------------------------------------------------------------------------
# timm models with a small-image stem


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (1, 16, 16),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": (0.0,),
        "std": (1.0,),
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "ff_cnn": _cfg(first_conv="stages.0.0.conv", classifier="head.fc"),
        "ff_resnet18": _cfg(first_conv="conv1", classifier="fc"),
    }
)


class ConvBnAct(nn.Sequential):
    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)


class FFCNN(nn.Module):
    """Small VGG-style CNN for 16–32 px images: stages of 3×3 conv-BN-ReLU, 2×2 max-pool between stages."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        widths: Sequence[int] = (32, 64, 128),
        depths: Sequence[int] = (2, 2, 1),
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if len(widths) != len(depths) or not widths:
            raise ValueError(f"ff_cnn: widths {tuple(widths)} and depths {tuple(depths)} must be non-empty and match")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        stages, prev, self.feature_info = [], in_chans, []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
            for _ in range(depth):
                layers.append(ConvBnAct(prev, width))
                prev = width
            stages.append(nn.Sequential(*layers))
            self.feature_info.append(dict(num_chs=width, reduction=2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = prev
        self.head = ClassifierHead(prev, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class SmallStemResNet(ResNet):
    """timm's ResNet with the CIFAR stem: one 3×3 stride-1 conv, no max-pool (full resolution into layer1)."""

    def __init__(self, *args: Any, in_chans: int = 3, **kwargs: Any):
        super().__init__(*args, in_chans=in_chans, **kwargs)
        width = self.conv1.out_channels if isinstance(self.conv1, nn.Conv2d) else self.bn1.num_features
        self.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()
        self.feature_info = [
            dict(info, reduction=max(1, info["reduction"] // 4)) for info in self.feature_info
        ]


@register_model
def ff_cnn(pretrained: bool = False, **kwargs: Any) -> FFCNN:
    """FederatedFactory's fast default classifier (~140k parameters)."""
    return build_model_with_cfg(FFCNN, "ff_cnn", pretrained, **kwargs)


@register_model
def ff_resnet18(pretrained: bool = False, **kwargs: Any) -> SmallStemResNet:
    """ResNet-18 with a 3×3 stride-1 stem and no max-pool, for 16–32 px images (~11M parameters)."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return build_model_with_cfg(SmallStemResNet, "ff_resnet18", pretrained, **dict(model_args, **kwargs))


# ----------------------------------------------------------------------------------------------------------
# transformers models behind the same interface (logits out)


class HFImageClassifier(nn.Module):
    """Wraps a transformers ``*ForImageClassification`` so that ``forward(x)`` returns logits."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf_model = hf_model
        self.num_classes = hf_model.config.num_labels
        self.in_chans = hf_model.config.num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf_model(pixel_values=x).logits


def _hf_config(name: str, num_classes: int, in_chans: int, image_size: int):
    from transformers import AutoConfig, ResNetConfig, ViTConfig

    common = dict(num_labels=num_classes, num_channels=in_chans)
    if name == "vit-tiny":
        patch = 2 if image_size < 28 else 4
        return ViTConfig(
            image_size=image_size, patch_size=patch, hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
            intermediate_size=768, **common,
        )
    if name == "resnet":
        return ResNetConfig(
            embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic",
            downsample_in_first_stage=False, **common,
        )
    config = AutoConfig.for_model(name, **common)
    if hasattr(config, "image_size"):
        config.image_size = image_size
    return config


def _build_hf(name: str, num_classes: int, in_chans: int, image_size: int) -> HFImageClassifier:
    from transformers import AutoModelForImageClassification

    config = _hf_config(name, num_classes, in_chans, image_size)
    return HFImageClassifier(AutoModelForImageClassification.from_config(config))


# ----------------------------------------------------------------------------------------------------------
# registry


def parse_arch(arch: str) -> tuple[str, str]:
    """``"timm/ff_cnn"`` → ``("timm", "ff_cnn")``; a bare name is a timm name."""
    library, sep, name = arch.partition("/")
    if not sep:
        return "timm", arch
    if library not in ("timm", "hf") or not name:
        raise ValueError(f"arch {arch!r}: expected 'timm/<name>' or 'hf/<name>'")
    return library, name


def build_classifier(arch: str, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """A freshly initialised classifier (no downloaded weights) for ``in_chans``×``image_size``² inputs in [0, 1].

    Seed torch's RNG first for a reproducible initialisation (``train_classifier`` does).
    """
    library, name = parse_arch(arch)
    if library == "hf":
        model = _build_hf(name, num_classes, in_chans, image_size)
    else:
        name = TIMM_ALIASES.get(name, name)
        if not timm.is_model(name):
            raise ValueError(f"arch {arch!r}: timm has no model {name!r}")
        kwargs: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans)
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is not None and cfg.fixed_input_size:
            kwargs["img_size"] = image_size
        model = timm.create_model(name, pretrained=False, **kwargs)
    model.ff_image_size = int(image_size)  # the training size, recorded in the saved preprocessing config
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, image_size, image_size))
    except RuntimeError as err:
        raise ValueError(f"arch {arch!r} cannot classify {in_chans}x{image_size}x{image_size} images: {err}") from err
    return model.train()


# ----------------------------------------------------------------------------------------------------------
# configuration and data helpers


@dataclass
class ClassifierConfig:
    """How the aggregator's classifier is trained (also used by the baselines).

    ``augment`` turns on random shifts of up to ``shift_px`` pixels (replicate padding + random crop, a new
    offset per image); ``hflip``/``vflip`` add random flips and stay off by default (fine for blood cells,
    wrong for digits). ``val_fraction`` of the *training* data (stratified by class) is held out to pick the
    best epoch; 0 keeps the last epoch. Optimiser: AdamW with linear warm-up then cosine decay.
    ``channels_last`` trains in NHWC memory layout (about 1.3× faster for ``ff_cnn`` on CPU); the returned
    model is converted back to the default layout. ``precision``: "fp32", "bf16" (autocast for the training
    forward pass; weights, optimizer and evaluation stay float32) or "auto" = bf16 where the device computes
    it natively (CPUs with AMX or AVX512-BF16, CUDA GPUs that support it), else fp32; about 2× faster on this
    project's CPUs for ``ff_cnn`` at equal accuracy (see README). ``num_threads``: torch CPU threads while
    training (restored afterwards); 0 leaves torch's setting. The default 1 is as fast as 2 for these small
    models, avoids OpenMP stalls when other processes share the cores (2 threads ran 10–30× slower here under
    load), and makes the bit-identical result independent of the machine's core count.
    """

    arch: str = DEFAULT_ARCH
    epochs: int = 15
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    augment: bool = True
    shift_px: int = 2
    hflip: bool = False
    vflip: bool = False
    val_fraction: float = 0.1
    warmup_fraction: float = 0.1
    channels_last: bool = True
    precision: str = "auto"
    num_threads: int = 1
    seed: int = 0
    init_from: str | None = None  # fine-tune: a folder or Hub repo ("org/name" or "org/name@sha") from save_classifier

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"ClassifierConfig: epochs ({self.epochs}) and batch_size ({self.batch_size}) must be >= 1"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"ClassifierConfig.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"ClassifierConfig.precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if self.num_threads < 0:
            raise ValueError(
                f"ClassifierConfig.num_threads must be >= 0 (0 = leave torch's setting), got {self.num_threads}"
            )
        if self.shift_px < 0:
            raise ValueError(f"ClassifierConfig.shift_px must be >= 0, got {self.shift_px}")
        parse_arch(self.arch)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ClassifierConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


def label_names_of(dataset) -> list[str]:
    """Class names of a ``datasets.Dataset`` whose ``label`` column is a ``ClassLabel``."""
    feature = dataset.features.get("label")
    names = getattr(feature, "names", None)
    if not names:
        raise ValueError("dataset column 'label' must be a datasets.ClassLabel with names")
    return list(names)


def image_channels_of(dataset) -> int:
    return 1 if dataset[0]["image"].mode in ("L", "1", "I", "I;16", "F") else 3


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, held-out): ``round(fraction·n_c)`` of each class c held out (at least one when the class
    has two or more images and ``fraction > 0``), chosen with a generator seeded by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = int(round(fraction * len(idx)))
        if fraction > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return torch.cat(train_idx).sort().values, torch.cat(val_idx).sort().values


def augment_batch(x: torch.Tensor, config: ClassifierConfig, generator: torch.Generator) -> torch.Tensor:
    """Random ±``shift_px`` translations (replicate padding + crop) and optional flips, drawn from ``generator``
    (a CPU generator; the offsets are moved to ``x``'s device)."""
    if not config.augment:
        return x
    n, c, h, w = x.shape
    m = config.shift_px
    if m > 0:
        padded = F.pad(x, (m, m, m, m), mode="replicate")
        dy = torch.randint(0, 2 * m + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * m + 1, (n,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if config.hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if config.vflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-2), x)
    return x


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` → ``"bf16"`` where ``device`` runs bfloat16 natively, else ``"fp32"``."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        native = any(getattr(cpu, fn, lambda: False)() for fn in probes)
        return "bf16" if native else "fp32"
    return "fp32"


def autocast_for(precision: str, device: torch.device):
    """The forward-pass autocast context for a resolved ``precision``."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def warmup_cosine(total_steps: int, warmup_fraction: float):
    """LR multiplier: linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to 0."""
    warmup = max(1, int(round(warmup_fraction * total_steps)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@contextlib.contextmanager
def cpu_threads(num_threads: int):
    """Run with ``torch.set_num_threads(num_threads)`` (0: unchanged), restoring the previous count."""
    previous = torch.get_num_threads()
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def deterministic(seed: int, device: torch.device | None = None):
    """Seed torch inside a forked RNG (the caller's global RNG state is restored on exit) and turn on
    ``torch.use_deterministic_algorithms`` (warn-only) for the duration."""
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits (float32, CPU) of ``model`` in eval mode on ``x``, in batches, on the model's device."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def accuracy_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    if len(x) == 0:
        return float("nan")
    return (predict_logits(model, x, batch_size).argmax(1) == y).float().mean().item()


# ----------------------------------------------------------------------------------------------------------
# training


@dataclass
class TrainResult:
    """``model``: unwrapped, eval mode, best-validation weights restored. ``history``: one dict per epoch
    (``epoch`` from 1, ``loss`` = mean training loss, ``val_accuracy`` or None, ``lr`` at the epoch's end,
    ``seconds``). ``best_epoch`` is the epoch whose weights ``model`` holds."""

    model: nn.Module
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_accuracy: float | None
    wall_time_s: float
    label_names: list[str]
    arch: str
    config: ClassifierConfig
    num_train: int
    num_val: int
    images_per_s: float = 0.0
    precision: str = "fp32"

    def summary(self) -> dict[str, Any]:
        """Everything but the model, JSON-serialisable."""
        return {
            "arch": self.arch,
            "config": self.config.to_dict(),
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "wall_time_s": self.wall_time_s,
            "images_per_s": self.images_per_s,
            "precision": self.precision,
            "num_train": self.num_train,
            "num_val": self.num_val,
            "label_names": self.label_names,
        }


def train_classifier(
    train_ds,
    config: ClassifierConfig | None = None,
    *,
    val_ds=None,
    accelerator=None,
    progress: bool = True,
) -> TrainResult:
    """Train ``config.arch`` on ``train_ds`` (``datasets.Dataset`` with ``image`` and a ``ClassLabel`` ``label``).

    Model selection: the epoch with the best accuracy on ``val_ds`` if given, otherwise on a stratified
    ``config.val_fraction`` slice held out of ``train_ds`` (never the test set); ties go to the later epoch.
    With neither, the last epoch is kept. Runs through ``accelerate`` (an ``Accelerator`` you pass, or a
    default one: CPU here, GPU where there is one; several processes → DDP, each process sees a shard of
    every epoch). On CPU, equal inputs and config give bit-identical weights.
    """
    config = config or ClassifierConfig()
    t_start = time.perf_counter()
    label_names = label_names_of(train_ds)
    channels = image_channels_of(train_ds)
    x, y = dataset_to_tensors(train_ds, channels)
    if val_ds is not None:
        if label_names_of(val_ds) != label_names:
            raise ValueError(f"val_ds classes {label_names_of(val_ds)} differ from train_ds classes {label_names}")
        x_val, y_val = dataset_to_tensors(val_ds, channels)
    elif config.val_fraction > 0:
        train_idx, val_idx = stratified_split(y, config.val_fraction, config.seed)
        x, y, x_val, y_val = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
    else:
        x_val = y_val = None
    return train_on_tensors(
        x, y, config, label_names=label_names, x_val=x_val, y_val=y_val, accelerator=accelerator,
        progress=progress, t_start=t_start,
    )


def train_on_tensors(
    x: torch.Tensor,
    y: torch.Tensor,
    config: ClassifierConfig,
    *,
    label_names: Sequence[str],
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    accelerator=None,
    progress: bool = True,
    t_start: float | None = None,
) -> TrainResult:
    """:func:`train_classifier` on tensors already in memory (images in [0, 1], N×C×H×W; int64 labels)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    t_start = time.perf_counter() if t_start is None else t_start
    accelerator = accelerator or Accelerator()
    label_names = list(label_names)
    num_classes, in_chans, image_size = len(label_names), x.shape[1], x.shape[-1]
    has_val = x_val is not None and len(x_val) > 0
    precision = resolve_precision(config.precision, accelerator.device)

    with deterministic(config.seed, accelerator.device), cpu_threads(config.num_threads):
        model = build_classifier(config.arch, num_classes, in_chans, image_size)
        if config.init_from:
            initialize_from(model, config.init_from)
        loader_gen = torch.Generator().manual_seed(config.seed)
        aug_gen = torch.Generator().manual_seed(config.seed + 1)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y),
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=len(x) > config.batch_size,  # a trailing batch of 1 would break BatchNorm
            generator=loader_gen,
            num_workers=0,
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        # one scheduler step per optimizer step of this process (after sharding); left out of prepare()
        total_steps = config.epochs * max(1, math.ceil(len(loader) / accelerator.num_processes))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, config.warmup_fraction))
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        unwrapped = accelerator.unwrap_model(model)

        history: list[dict[str, Any]] = []
        best_acc, best_epoch, best_state = -1.0, config.epochs, None
        seen, train_time = 0, 0.0
        bar = tqdm(
            total=total_steps, desc=f"train {config.arch}", unit="step",
            disable=not progress or not accelerator.is_local_main_process,
        )
        for epoch in range(1, config.epochs + 1):
            model.train()
            t_epoch = time.perf_counter()
            loss_sum, n_batches = torch.zeros((), device=accelerator.device), 0
            for xb, yb in loader:
                xb = augment_batch(xb, config, aug_gen)
                if config.channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with accelerator.autocast(), autocast_for(precision, accelerator.device):
                    loss = F.cross_entropy(model(xb), yb, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                loss_sum += loss.detach()
                n_batches += 1
                seen += len(xb) * accelerator.num_processes
                bar.update(1)
                if not bar.disable:
                    elapsed = train_time + time.perf_counter() - t_epoch
                    bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", img_s=f"{seen / max(elapsed, 1e-9):.0f}")
            train_time += time.perf_counter() - t_epoch
            mean_loss = accelerator.reduce(loss_sum / max(1, n_batches), reduction="mean").item()
            val_acc = accuracy_on(unwrapped, x_val, y_val) if has_val else None
            history.append(
                {"epoch": epoch, "loss": mean_loss, "val_accuracy": val_acc, "lr": scheduler.get_last_lr()[0],
                 "seconds": time.perf_counter() - t_epoch}
            )
            if has_val and val_acc >= best_acc:
                best_acc, best_epoch = val_acc, epoch
                best_state = {k: v.detach().clone() for k, v in unwrapped.state_dict().items()}
            if has_val:
                bar.set_postfix(epoch=epoch, loss=f"{mean_loss:.3f}", val_acc=f"{val_acc:.3f}",
                                img_s=f"{seen / max(train_time, 1e-9):.0f}")
        bar.close()
        if best_state is not None:
            unwrapped.load_state_dict(best_state)
        unwrapped.to(memory_format=torch.contiguous_format).eval()
    accelerator.wait_for_everyone()
    return TrainResult(
        model=unwrapped,
        history=history,
        best_epoch=best_epoch,
        best_val_accuracy=best_acc if has_val else None,
        wall_time_s=time.perf_counter() - t_start,
        label_names=label_names,
        arch=config.arch,
        config=config,
        num_train=len(x),
        num_val=len(x_val) if has_val else 0,
        images_per_s=seen / max(train_time, 1e-9),
        precision=precision,
    )


# ----------------------------------------------------------------------------------------------------------
# evaluation


def evaluate_classifier(model: nn.Module, test_ds, label_names: Sequence[str], *, batch_size: int = 512) -> dict:
    """Test metrics of ``model`` (whose output ``k`` is class ``label_names[k]``) on ``test_ds``.

    Classes are matched by NAME, so the model's label space may differ from the test set's (e.g. a model
    that unlearned a class). Definitions, over the label list ``confusion_labels`` = the test set's class
    names followed by any model class absent from the test set:

    * ``accuracy``: over all ``n`` test images; an image whose class the model does not know is an error.
    * ``macro_f1``: mean F1 over the classes that have test images (predictions of other classes only lower
      the recall of the true class).
    * ``auroc``: macro one-vs-rest AUROC over the classes the model knows AND that have test images (each
      class's softmax probability against all other test images, unknown-class images included as
      negatives); ``per_class_auroc`` lists them; None when fewer than one such class has both positives and
      negatives.
    * ``per_class_recall``: by class name, for every class with test images (0.0 for classes the model
      does not know).
    * ``confusion_matrix``: counts, rows = true class, columns = predicted class, both indexed by
      ``confusion_labels`` (pass those to :func:`plot_confusion_matrix`).
    * ``unknown_classes``: test classes the model cannot predict; ``n``: number of test images.

    The numbers come from the ``evaluate`` modules shipped in ``federated_factory/metrics`` (loaded offline).
    """
    from federated_factory.metrics import load_metric

    model_names = list(label_names)
    test_names = label_names_of(test_ds)
    if len(set(model_names)) != len(model_names):
        raise ValueError(f"label_names has duplicates: {model_names}")
    labels = test_names + [name for name in model_names if name not in test_names]
    index = {name: i for i, name in enumerate(labels)}
    model_to_union = np.array([index[name] for name in model_names])

    x, y_test = dataset_to_tensors(test_ds, getattr(model, "in_chans", None) or image_channels_of(test_ds))
    logits = predict_logits(model, x, batch_size)
    if logits.shape[1] != len(model_names):
        raise ValueError(f"model has {logits.shape[1]} outputs but {len(model_names)} label_names were given")
    probs = logits.softmax(1).double().numpy()
    references = y_test.numpy()  # test index == union index for test classes
    predictions = model_to_union[logits.argmax(1).numpy()]

    support = np.bincount(references, minlength=len(labels))
    present = [i for i in range(len(labels)) if support[i] > 0]
    accuracy = load_metric("accuracy").compute(predictions=predictions, references=references)["accuracy"]
    macro_f1 = load_metric("f1").compute(
        predictions=predictions, references=references, labels=present, average="macro"
    )["f1"]
    cm = load_metric("confusion_matrix").compute(
        predictions=predictions, references=references, labels=list(range(len(labels)))
    )["confusion_matrix"]
    per_class_recall = {labels[i]: cm[i][i] / support[i] for i in present}

    # one-vs-rest AUROC for the model's classes that have both positives and negatives in the test set
    columns = [k for k, u in enumerate(model_to_union) if 0 < support[u] < len(references)]
    per_class_auroc: dict[str, float] = {}
    auroc = None
    if columns:
        onehot = (references[:, None] == model_to_union[columns][None, :]).astype(np.int32)
        scores = probs[:, columns]
        result = load_metric("roc_auc", "multilabel").compute(
            references=onehot.tolist(), prediction_scores=scores.tolist(), average=None
        )["roc_auc"]
        per_class_auroc = {model_names[k]: float(a) for k, a in zip(columns, result)}
        auroc = float(np.mean(result))
    return {
        "accuracy": float(accuracy),
        "macro_f1": float(macro_f1),
        "auroc": auroc,
        "per_class_recall": {k: float(v) for k, v in per_class_recall.items()},
        "per_class_auroc": per_class_auroc,
        "confusion_matrix": [[int(v) for v in row] for row in cm],
        "confusion_labels": labels,
        "unknown_classes": [name for name in test_names if name not in model_names and support[index[name]] > 0],
        "n": int(len(references)),
    }


# ----------------------------------------------------------------------------------------------------------
# plots (matplotlib's object API on the Agg canvas: no pyplot global state)


def plot_confusion_matrix(
    cm, label_names: Sequence[str], path, title: str = "Confusion matrix (row-normalised)"
) -> Path:
    """Save a heat map of ``cm`` (rows = true class) normalised per row, each cell annotated with its
    fraction; rows without examples stay empty."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(cm, dtype=float)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(label_names):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not match {len(label_names)} label names")
    totals = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    k = len(label_names)
    size = max(4.0, 0.6 * k + 2)
    fig = Figure(figsize=(size, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(label_names, rotation=45, ha="right")
    ax.set_yticklabels(label_names)
    for i in range(k):
        if totals[i, 0] == 0:
            continue
        for j in range(k):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_history(history: Sequence[dict], path, title: str = "Training history") -> Path:
    """Save training loss and validation accuracy against the epoch (or round: the x key is ``epoch`` or
    ``round``, whichever the entries have)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    xkey = "epoch" if history and "epoch" in history[0] else "round"
    xs = [h[xkey] for h in history]
    fig = Figure(figsize=(7, 3.5))
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    losses = [h.get("loss") for h in history]
    if any(v is not None for v in losses):
        ax_loss.plot(xs, [np.nan if v is None else v for v in losses], marker="o", ms=3)
    ax_loss.set(xlabel=xkey, ylabel="training loss", title="loss")
    accs = [h.get("val_accuracy") for h in history]
    if any(v is not None for v in accs):
        ax_acc.plot(xs, [np.nan if v is None else v for v in accs], marker="o", ms=3, color="tab:green")
    ax_acc.set(xlabel=xkey, ylabel="validation accuracy", title="validation accuracy", ylim=(0, 1))
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


# ----------------------------------------------------------------------------------------------------------
# save / load


@dataclass
class LoadedClassifier:
    model: nn.Module
    label_names: list[str]
    arch: str | None = None
    config: ClassifierConfig | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def save_classifier(
    model: nn.Module,
    out_dir,
    *,
    label_names: Sequence[str],
    config: ClassifierConfig | None = None,
    arch: str | None = None,
    image_size: int | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (no pickle) to ``out_dir``.

    timm models go through ``timm.models.save_for_hf``: uploaded to a Hub repo, the folder loads with
    ``timm.create_model("hf-hub:<repo>", pretrained=True)`` (after ``import federated_factory.classifier``
    for ``ff_*`` models); locally with ``"local-dir:<out_dir>"``. The config records ``label_names``, the
    constructor ``model_args`` and the preprocessing (input size, mean 0 / std 1: inputs in [0, 1]).
    transformers models go through ``save_pretrained`` (``id2label`` holds the names) and load with
    ``AutoModelForImageClassification.from_pretrained``. Either way, our arch and training config sit under
    the ``"federated_factory"`` key of ``config.json``; :func:`load_classifier` reads both layouts.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    label_names = list(label_names)
    config = config or ClassifierConfig(arch=arch or DEFAULT_ARCH)
    arch = arch or config.arch
    meta = {"arch": arch, "config": config.to_dict(), "label_names": label_names}
    num_out = getattr(model, "num_classes", None)
    if num_out is not None and num_out != len(label_names):
        raise ValueError(f"model has {num_out} classes but {len(label_names)} label_names were given")
    if isinstance(model, HFImageClassifier):
        hf = model.hf_model
        hf.config.id2label = dict(enumerate(label_names))
        hf.config.label2id = {name: i for i, name in enumerate(label_names)}
        setattr(hf.config, FF_CONFIG_KEY, meta)
        hf.save_pretrained(out_dir, safe_serialization=True)
        return out_dir
    from timm.models import save_for_hf

    in_chans = model.in_chans
    size = image_size or getattr(model, "ff_image_size", None)
    size = size or getattr(model, "pretrained_cfg", {}).get("input_size", (in_chans, 16, 16))[-1]
    meta["image_size"] = int(size)
    data_config = {
        "input_size": (in_chans, size, size),
        "mean": (0.0,) * in_chans,
        "std": (1.0,) * in_chans,
        "interpolation": "bicubic",
        "crop_pct": 1.0,
    }
    save_for_hf(
        model,
        str(out_dir),
        model_config={"label_names": label_names, FF_CONFIG_KEY: meta},
        safe_serialization=True,
        data_config=data_config,
    )
    return out_dir


def _read_config(dir_or_repo: str, revision: str | None) -> tuple[dict, bool]:
    path = Path(dir_or_repo)
    if path.is_dir():
        return json.loads((path / "config.json").read_text()), True
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(dir_or_repo, "config.json", revision=revision)).read_text()), False


def initialize_from(model: nn.Module, source: str) -> list[str]:
    """Copy into ``model`` every tensor of the classifier at ``source`` (a folder, or a Hub repo id with an
    optional ``@revision``) whose name and shape match; returns the names left at their fresh initialization
    (typically the head, when the label spaces differ). Raises ``ValueError`` when nothing matches."""
    if Path(source).exists():
        loaded = load_classifier(source)
    else:
        repo, _, revision = source.partition("@")
        loaded = load_classifier(repo, revision=revision or None)
    own = model.state_dict()
    matching = {k: v for k, v in loaded.model.state_dict().items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise ValueError(f"ClassifierConfig.init_from {source!r}: none of its tensors fits this architecture")
    model.load_state_dict(matching, strict=False)
    return sorted(set(own) - set(matching))


def load_classifier(dir_or_repo, *, revision: str | None = None) -> LoadedClassifier:
    """Rebuild a classifier written by :func:`save_classifier` from a local folder or a Hub repo id."""
    source = str(dir_or_repo)
    cfg, local = _read_config(source, revision)
    meta = cfg.get(FF_CONFIG_KEY, {})
    train_config = ClassifierConfig.from_dict(meta["config"]) if meta.get("config") else None
    if "architecture" in cfg:  # timm layout
        if local:
            model = timm.create_model(f"local-dir:{Path(source).resolve()}", pretrained=True)
        else:
            name = f"hf-hub:{source}@{revision}" if revision else f"hf-hub:{source}"
            model = timm.create_model(name, pretrained=True)
        names = cfg.get("label_names") or model.pretrained_cfg.get("label_names")
        if isinstance(names, dict):
            names = [names[str(i)] if str(i) in names else names[i] for i in range(len(names))]
        label_names = list(names) if names else [str(i) for i in range(model.num_classes)]
    else:  # transformers layout
        from transformers import AutoModelForImageClassification

        hf = AutoModelForImageClassification.from_pretrained(source, revision=revision)
        model = HFImageClassifier(hf)
        label_names = [hf.config.id2label[i] for i in range(hf.config.num_labels)]
    model.eval()
    return LoadedClassifier(
        model=model, label_names=label_names, arch=meta.get("arch"), config=train_config, metadata=meta
    )


__all__ = [
    "DEFAULT_ARCH",
    "ClassifierConfig",
    "FFCNN",
    "HFImageClassifier",
    "LoadedClassifier",
    "SmallStemResNet",
    "TrainResult",
    "accuracy_on",
    "augment_batch",
    "autocast_for",
    "build_classifier",
    "cpu_threads",
    "evaluate_classifier",
    "label_names_of",
    "load_classifier",
    "parse_arch",
    "plot_confusion_matrix",
    "plot_history",
    "predict_logits",
    "resolve_precision",
    "save_classifier",
    "stratified_split",
    "train_classifier",
    "train_on_tensors",
]
