"""Learning-rate schedules shared by every trainer in the project (factories, classifier, baselines).

One schedule, linear warm-up then cosine decay, as a multiplier for ``torch.optim.lr_scheduler.LambdaLR``.
It is written here rather than taken from ``diffusers.optimization.get_cosine_schedule_with_warmup`` (or
transformers' twin) because those start the warm-up at 0 (``step / warmup``) while this project's trainers
have always started at ``1 / warmup`` (``(step + 1) / warmup``): the first optimizer step already moves the
weights. Switching would change every trained model, so the project's outputs would no longer match the
published numbers bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier for step ``step`` (counted from 0): ``(step + 1) / warmup_steps`` during the first
    ``warmup_steps`` steps, then ``0.5 · (1 + cos(π · p))`` where ``p`` runs from 0 to 1 over the remaining
    ``total_steps - warmup_steps`` steps (and stays at 1 after them). ``warmup_steps=0`` is a plain cosine
    decay from the first step."""
    if warmup_steps < 0 or total_steps < 0:
        raise ValueError(f"warmup_cosine: warmup_steps ({warmup_steps}) and total_steps ({total_steps}) must be >= 0")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


__all__ = ["warmup_cosine"]
