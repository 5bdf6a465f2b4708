"""Training the classifier: data split for model selection, augmentation, the epoch loop (through
``accelerate``) and :class:`TrainResult`."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import ModelEmaV3

from federated_factory.augment import random_flips, random_shifts
from federated_factory.classifier.config import ClassifierConfig
from federated_factory.classifier.evaluation import held_out_scores
from federated_factory.classifier.io import initialize_from
from federated_factory.classifier.models import build_classifier
from federated_factory.data import image_channels_of, label_names_of
from federated_factory.errors import ClassifierError
from federated_factory.runtime import autocast_for, cpu_threads, deterministic, resolve_precision
from federated_factory.schedules import warmup_cosine
from federated_factory.tensors import dataset_to_tensors


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
    x = random_shifts(x, config.shift_px, generator)
    return random_flips(x, generator, horizontal=config.hflip, vertical=config.vflip)


@dataclass
class TrainResult:
    """``model``: unwrapped, eval mode, best-validation weights restored. ``history``: one dict per epoch
    (``epoch`` from 1, ``loss`` = mean training loss, ``val_accuracy``, ``val_balanced_accuracy`` and
    ``val_loss`` (cross-entropy) or None, ``lr`` at the epoch's end, ``seconds``, and ``watched``: name ->
    held-out scores of each ``watch`` set, when given). ``best_epoch`` is the epoch whose weights ``model``
    holds (the best on ``config.selection_metric``); ``best_val_accuracy`` is that epoch's held-out accuracy."""

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
            "selection": describe_selection(self.history, self.best_epoch, self.num_val,
                                            self.config.selection_metric),
            "wall_time_s": self.wall_time_s,
            "images_per_s": self.images_per_s,
            "precision": self.precision,
            "num_train": self.num_train,
            "num_val": self.num_val,
            "label_names": self.label_names,
        }


def describe_selection(history: list[dict[str, Any]], best_epoch: int, num_val: int,
                       metric: str = "accuracy") -> dict[str, Any]:
    """What the epoch selection on held-out ``metric`` did, in numbers and one plain sentence (``note``, for
    cards and reports).

    ``reached_at_epoch`` is the first epoch whose held-out score equals the kept one; when it is earlier
    than the kept last epoch, the held-out score stopped discriminating between epochs (accuracy saturates
    on synthetic images) and the tie rule, not the held-out data, kept the last epoch."""
    last, key = len(history), f"val_{metric}"
    words = "cross-entropy" if metric == "loss" else metric.replace("_", " ")
    best, shown = ("lowest", "{:.4f}") if metric == "loss" else ("highest", "{:.2%}")
    if num_val == 0 or not history or history[0].get(key) is None:
        return {"rule": "last epoch", "kept_epoch": last, "held_out_rows": 0,
                "note": f"No held-out slice: the last epoch's weights ({last}) are kept."}
    kept = history[best_epoch - 1][key]
    reached = next(h["epoch"] for h in history if h[key] == kept)
    record = {"rule": f"{best} held-out {words}, ties to the later epoch", "metric": metric, "kept_epoch": best_epoch,
              "held_out_rows": num_val, f"held_out_{metric}": kept, "reached_at_epoch": reached}
    if best_epoch < last:
        note = f"Epoch {best_epoch} of {last} is kept: its held-out {words} ({shown.format(kept)}) is the {best}."
    elif reached < last:
        note = (f"The held-out {words} reached {shown.format(kept)} at epoch {reached} and no later epoch did better; ties "
                f"go to the later epoch, so the last epoch ({last}) is kept: the held-out slice did not choose "
                "between those epochs.")
    else:
        note = f"The held-out {words} was {best} ({shown.format(kept)}) at the last epoch ({last}), which is kept."
    return {**record, "note": note}


def train_classifier(
    train_ds,
    config: ClassifierConfig | None = None,
    *,
    val_ds=None,
    watch: dict | None = None,
    accelerator=None,
    progress: bool = True,
) -> TrainResult:
    """Train ``config.arch`` on ``train_ds`` (``datasets.Dataset`` with ``image`` and a ``ClassLabel`` ``label``).

    Model selection: the epoch with the best ``config.selection_metric`` on ``val_ds`` if given, otherwise on a stratified
    ``config.val_fraction`` slice held out of ``train_ds`` (never the test set); ties go to the later epoch.
    With neither, the last epoch is kept. ``watch`` (name -> ``datasets.Dataset`` with the same classes) is
    scored after every epoch and recorded in the history, never used to choose: it is how a selection rule
    is measured against data it must not choose on (``benchmarks/selection_signal.py``). Runs through ``accelerate`` (an ``Accelerator`` you pass, or a
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
            raise ClassifierError(f"val_ds classes {label_names_of(val_ds)} differ from train_ds classes {label_names}")
        x_val, y_val = dataset_to_tensors(val_ds, channels)
    elif config.val_fraction > 0:
        train_idx, val_idx = stratified_split(y, config.val_fraction, config.seed)
        x, y, x_val, y_val = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
    else:
        x_val = y_val = None
    watched = {}
    for name, ds in (watch or {}).items():
        if label_names_of(ds) != label_names:
            raise ClassifierError(f"watch set {name!r} classes {label_names_of(ds)} differ from train_ds classes "
                                  f"{label_names}")
        watched[name] = dataset_to_tensors(ds, channels)
    return train_on_tensors(
        x, y, config, label_names=label_names, x_val=x_val, y_val=y_val, watch=watched, accelerator=accelerator,
        progress=progress, t_start=t_start,
    )


def balanced_class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy class weights n / (K · n_c) over the labels ``y`` (scikit-learn's "balanced"): every class
    then weighs as much in the loss as if the rows were balanced. A class with no row gets weight 0."""
    counts = torch.bincount(y, minlength=num_classes).double()
    return torch.where(counts > 0, len(y) / (num_classes * counts.clamp(min=1)), 0.0).float()


def train_on_tensors(
    x: torch.Tensor,
    y: torch.Tensor,
    config: ClassifierConfig,
    *,
    label_names: Sequence[str],
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    watch: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
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
        warmup_steps = max(1, int(round(config.warmup_fraction * total_steps)))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps))
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        unwrapped = accelerator.unwrap_model(model)
        # what is scored, selected and returned: the raw weights, or their moving average
        ema = ModelEmaV3(unwrapped, decay=config.ema_decay) if config.ema_decay > 0 else None
        kept = ema.module if ema is not None else unwrapped
        class_weight = balanced_class_weights(y, num_classes).to(accelerator.device) \
            if config.class_weighting == "balanced" else None

        history: list[dict[str, Any]] = []
        # the selection maximises the score: accuracy, balanced accuracy, or minus the cross-entropy
        sign = -1.0 if config.selection_metric == "loss" else 1.0
        best_score, best_acc, best_epoch, best_state = -math.inf, None, config.epochs, None
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
                    loss = F.cross_entropy(model(xb), yb, weight=class_weight, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update(unwrapped)
                loss_sum += loss.detach()
                n_batches += 1
                seen += len(xb) * accelerator.num_processes
                bar.update(1)
                if not bar.disable:
                    elapsed = train_time + time.perf_counter() - t_epoch
                    bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", img_s=f"{seen / max(elapsed, 1e-9):.0f}")
            train_time += time.perf_counter() - t_epoch
            mean_loss = accelerator.reduce(loss_sum / max(1, n_batches), reduction="mean").item()
            scores = held_out_scores(kept, x_val, y_val) if has_val else \
                {"accuracy": None, "balanced_accuracy": None, "loss": None}
            val_acc = scores["accuracy"]
            history.append(
                {"epoch": epoch, "loss": mean_loss, "val_accuracy": val_acc,
                 "val_balanced_accuracy": scores["balanced_accuracy"], "val_loss": scores["loss"],
                 "lr": scheduler.get_last_lr()[0], "seconds": time.perf_counter() - t_epoch}
            )
            if watch:
                history[-1]["watched"] = {name: held_out_scores(kept, *xy) for name, xy in watch.items()}
            if has_val and sign * scores[config.selection_metric] >= best_score:
                best_score, best_acc, best_epoch = sign * scores[config.selection_metric], val_acc, epoch
                best_state = {k: v.detach().clone() for k, v in kept.state_dict().items()}
            if has_val:
                bar.set_postfix(epoch=epoch, loss=f"{mean_loss:.3f}", val_acc=f"{val_acc:.3f}",
                                img_s=f"{seen / max(train_time, 1e-9):.0f}")
        bar.close()
        if ema is not None:  # hand back the averaged weights in the model the caller gets
            unwrapped.load_state_dict(ema.module.state_dict())
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

