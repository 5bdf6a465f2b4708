"""Batch augmentations shared by the factory trainer and the classifier (tensors N×C×H×W, any device).

Random draws come from an explicit CPU ``torch.Generator``, so a seeded run repeats bit for bit; the masks
are moved to the batch's device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_flips(x: torch.Tensor, generator: torch.Generator, *, horizontal: bool, vertical: bool) -> torch.Tensor:
    """Flip each image left-right with probability ½ (``horizontal``), then top-bottom with probability ½
    (``vertical``); one uniform draw per image per enabled direction, horizontal first."""
    n = x.shape[0]
    if horizontal:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if vertical:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-2), x)
    return x


def random_shifts(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by a random offset of up to ``max_shift`` pixels in each direction (replicate
    padding, then a crop at the drawn offset; rows' offsets drawn first, then columns')."""
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    m = max_shift
    padded = F.pad(x, (m, m, m, m), mode="replicate")
    dy = torch.randint(0, 2 * m + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * m + 1, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


__all__ = ["random_flips", "random_shifts"]
