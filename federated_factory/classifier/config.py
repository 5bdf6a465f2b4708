"""How the aggregator's classifier is trained: :class:`ClassifierConfig`, validated when it is built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from federated_factory.classifier.models import DEFAULT_ARCH, parse_arch
from federated_factory.errors import ClassifierError

# held-out scores that can pick the kept epoch (keys of federated_factory.classifier.held_out_scores)
SELECTION_METRICS = ("accuracy", "balanced_accuracy", "loss")


@dataclass
class ClassifierConfig:
    """How the aggregator's classifier is trained (also used by the baselines); validated on construction.

    ``augment`` turns on random shifts of up to ``shift_px`` pixels (replicate padding + random crop, a new
    offset per image); ``hflip``/``vflip`` add random flips and stay off by default (fine for blood cells,
    wrong for digits). ``val_fraction`` of the *training* data (stratified by class) is held out to pick the
    best epoch; 0 keeps the last epoch. Optimiser: AdamW with linear warm-up over ``warmup_fraction`` of the
    steps, then cosine decay (:func:`federated_factory.schedules.warmup_cosine`).

    ``channels_last`` trains in NHWC memory layout, which suits conv nets on CPU; the returned model is
    converted back to the default layout. ``precision``: "fp32", "bf16" (autocast for the training forward
    pass; weights, optimizer and evaluation stay float32) or "auto" = bf16 where the device computes it
    natively (CPUs with AMX or AVX512-BF16, CUDA GPUs that support it), else fp32. ``num_threads``: torch CPU
    threads while training (restored afterwards); 0 leaves torch's setting. The default, 1, makes the
    bit-identical result independent of the machine's core count and avoids OpenMP stalls when other
    processes share the cores. benchmarks/README.md has the measured speed of each of these settings.
    ``init_from``: fine-tune from a folder or Hub repo (``"org/name"`` or ``"org/name@sha"``) written by
    :func:`~federated_factory.classifier.save_classifier`. ``class_weighting``: "none" (plain cross-entropy) or
    "balanced" (each class's loss weighted by n / (classes × its count in the training rows), scikit-learn's
    "balanced"): for real, imbalanced training data such as a centralized reference on derma-28, where 67% of
    the images are nevi; a synthetic set is class-balanced already, so it changes nothing there.
    ``selection_metric``: what picks the epoch on the held-out rows, "accuracy", "loss" (the lowest cross-entropy:
    it still ranks epochs after accuracy has saturated at or near 100%, where a single held-out image decides
    between accuracy's ties) or "balanced_accuracy" (the mean
    of the per-class recalls: on imbalanced held-out rows, plain accuracy prefers the epoch that predicts the
    majority class best).
    ``ema_decay``: 0 (off) or a decay in (0, 1): keep an exponential moving average of the weights and BatchNorm
    buffers, updated after every optimizer step (timm's ``ModelEmaV3``), and score, select and return the
    average instead of the raw weights: the average of the last ~1 / (1 - decay) steps, which damps the
    step-to-step noise of the final weights.
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
    init_from: str | None = None
    class_weighting: str = "none"
    selection_metric: str = "accuracy"
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ClassifierError(
                f"ClassifierConfig: epochs ({self.epochs}) and batch_size ({self.batch_size}) must be >= 1"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ClassifierError(f"ClassifierConfig.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ClassifierError(f"ClassifierConfig.precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if self.num_threads < 0:
            raise ClassifierError(
                f"ClassifierConfig.num_threads must be >= 0 (0 = leave torch's setting), got {self.num_threads}"
            )
        if self.class_weighting not in ("none", "balanced"):
            raise ClassifierError(
                f"ClassifierConfig.class_weighting must be 'none' or 'balanced', got {self.class_weighting!r}")
        if self.selection_metric not in SELECTION_METRICS:
            raise ClassifierError(f"ClassifierConfig.selection_metric must be one of {SELECTION_METRICS}, got "
                                  f"{self.selection_metric!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ClassifierError(f"ClassifierConfig.ema_decay must be 0 (off) or in (0, 1), got {self.ema_decay}")
        if self.shift_px < 0:
            raise ClassifierError(f"ClassifierConfig.shift_px must be >= 0, got {self.shift_px}")
        parse_arch(self.arch)

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-serialisable (what manifests and saved classifiers record)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierConfig:
        """The config :meth:`to_dict` wrote; an unknown field is an error naming it, a missing one its default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ClassifierError(f"ClassifierConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)
