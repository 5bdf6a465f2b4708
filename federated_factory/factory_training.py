"""Train a hospital's factory: the diffusion objective, EMA weights, augmentation, checkpoints and resume.

`train_factory(data, config)` returns a `FactoryPipeline` holding the EMA weights and the scheduler it was
trained with (DDPM on the config's noise schedule), plus `TrainStats`. Deterministic on CPU for a given
config and data: the seeds come from ``config.seed``, and a resumed run matches an uninterrupted one.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import atomic_writer
from .augment import random_flips
from .client_data import ClientData
from .errors import FactoryError
from .factory_config import FactoryConfig, build_scheduler, build_unet
from .runtime import resolve_precision
from .schedules import warmup_cosine


@dataclass
class TrainStats:
    """What a training run measured (recorded in `factory.json`, without the loss history)."""

    steps: int
    final_loss: float
    loss_history: list[float]
    images_per_second: float
    wall_seconds: float
    precision: str = "no"  # what the training ran in: "bf16" or "no" (fp32), after resolving "auto"
    resumed_from_step: int = 0  # > 0: resumed from a checkpoint; the rate and wall time cover the steps after it


def train_factory(
    data: ClientData,
    config: FactoryConfig,
    *,
    accelerator=None,
    output_dir: str | Path | None = None,
    progress: bool = True,
    report_seconds: float = 0.0,
):
    """Train a `FactoryPipeline` on ``data`` and return ``(pipeline with EMA weights, TrainStats)``.

    Epsilon- or v-prediction DDPM objective, AdamW with linear warm-up and cosine decay, EMA weights,
    optional flips and classifier-free-guidance label dropout. With ``output_dir``, checkpoints are
    written every ``config.checkpoint_every`` steps and a run resumes from the latest one. ``report_seconds``
    > 0 prints one line to stderr (step, rate, loss) each time that many seconds have passed since the last:
    the progress of a long training whose bar is off, such as one of several in worker processes.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from .pipeline import FactoryPipeline

    if config.flip not in ("none", "h", "hv"):
        raise FactoryError(f"flip must be 'none', 'h' or 'hv', got {config.flip!r}")
    if len(data.train_images) == 0:
        raise FactoryError("the client has no training images left after the audit hold-out")
    if config.mixed_precision not in ("no", "bf16", "auto"):
        raise FactoryError(f"mixed_precision must be 'no', 'bf16' or 'auto', got {config.mixed_precision!r}")
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device
    # Denormal floats (tiny Adam moments, EMA updates) slow CPU kernels down by orders of magnitude.
    torch.set_flush_denormal(True)
    torch.manual_seed(config.seed)
    num_classes = len(data.class_names)
    unet = build_unet(config, num_classes)
    noise_schedule = build_scheduler(config)  # add_noise / get_velocity; it moves its tensors to the device
    ema = build_unet(config, num_classes)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)

    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.warmup_steps, config.train_steps))
    unet, optimizer = accelerator.prepare(unet, optimizer)
    ema.to(device)

    images = torch.from_numpy(data.train_images).float().div_(127.5).sub_(1.0)
    labels = torch.from_numpy(data.train_labels)
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

    precision = training_precision(config.mixed_precision, device)
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
    last_report = t0
    for step in bar:
        idx = torch.randint(0, len(images), (config.batch_size,), generator=generator)
        x0 = random_flips(images[idx], generator, horizontal=config.flip in ("h", "hv"), vertical=config.flip == "hv").to(device)
        y = labels[idx].to(device)
        if config.cfg_dropout > 0:
            drop = torch.rand(len(y), generator=generator).to(device) < config.cfg_dropout
            y = torch.where(drop, torch.full_like(y, num_classes), y)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        t = torch.randint(0, config.num_train_timesteps, (len(x0),), generator=generator).to(device)
        noisy = noise_schedule.add_noise(x0, noise, t)
        target = noise if config.prediction_type == "epsilon" else noise_schedule.get_velocity(x0, noise, t)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            pred = unet(noisy, t, class_labels=y).sample
        loss = F.mse_loss(pred.float(), target)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()

        # EMA with warm-up decay (1 + step) / (10 + step). Not `diffusers.training_utils.EMAModel`: it copies the
        # weights at the first step (decay 0 instead of 0.1) and updates with sub_(...) instead of lerp_, so the
        # published weights would change in their last bits.
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), accelerator.unwrap_model(unet).parameters()):
                p_ema.lerp_(p.detach(), 1 - decay)
        losses.append(loss.item())
        seen += len(x0)
        if step % 10 == 0 or step == config.train_steps - 1:
            rate = seen / max(1e-9, time.perf_counter() - t0)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", img_s=f"{rate:.0f}")
        if report_seconds and accelerator.is_main_process and time.perf_counter() - last_report >= report_seconds:
            last_report = time.perf_counter()
            print(f"factory {'+'.join(data.class_names)[:30]}: step {step + 1}/{config.train_steps}, "
                  f"{seen / max(1e-9, last_report - t0):.0f} images/s, loss {np.mean(losses[-50:]):.4f}",
                  file=sys.stderr, flush=True)
        if ckpt_dir is not None and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            _save_checkpoint(ckpt_dir, accelerator.unwrap_model(unet), ema, optimizer, lr_schedule, generator, step + 1,
                             losses, run=run)
    bar.close()
    wall = time.perf_counter() - t0

    ema.eval()
    pipeline = FactoryPipeline(
        unet=ema.to("cpu"), scheduler=build_scheduler(config), class_names=data.class_names, null_class=config.cfg_dropout > 0
    )
    stats = TrainStats(
        steps=config.train_steps,
        final_loss=float(np.mean(losses[-50:])) if losses else float("nan"),
        loss_history=[float(v) for v in losses],
        images_per_second=seen / wall if wall > 0 else 0.0,
        wall_seconds=wall,
        precision=precision,
        resumed_from_step=start_step,
    )
    return pipeline, stats


def training_precision(mixed_precision: str, device: torch.device) -> str:
    """The precision a factory trains in: ``"bf16"`` or ``"no"`` (fp32). ``"auto"`` is bf16 only where the
    device runs it natively (`runtime.resolve_precision`: CUDA with bf16, CPUs with AMX or AVX512-BF16).
    An explicit ``"bf16"`` on a CPU without native bf16 is honoured with a warning: there autocast emulates
    it, 14 × slower than fp32 on this project's AVX2 machine (`benchmarks/results/factory_precision_cpu.json`)."""
    if mixed_precision == "auto":
        return "bf16" if resolve_precision("auto", device) == "bf16" else "no"
    if mixed_precision == "bf16" and resolve_precision("auto", device) != "bf16":
        warnings.warn(f"mixed_precision='bf16' on a {device.type} without native bfloat16: autocast emulates it, "
                      "far slower than fp32; 'auto' picks fp32 here", stacklevel=3)
    return mixed_precision


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
