"""Pictures people look at: sample grids, label distributions and bar charts (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def image_grid(rows: list[np.ndarray], scale: int = 2, pad: int = 1) -> Image.Image:
    """Tile rows of uint8 images (each row an N×C×H×W array) into one PIL image, ``scale``× upsampled."""
    if not rows:
        raise ValueError("image_grid needs at least one row")
    channels, height, width = rows[0].shape[1:]
    ncols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (height + pad) + pad, ncols * (width + pad) + pad, channels), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (height + pad), pad + j * (width + pad)
            canvas[y : y + height, x : x + width] = img.transpose(1, 2, 0)
    mode = "L" if channels == 1 else "RGB"
    image = Image.fromarray(canvas[..., 0] if channels == 1 else canvas, mode=mode)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def bar_chart(values: dict[str, dict[str, float]], path: str | Path, title: str, ylabel: str = "") -> Path:
    """Grouped bars: ``values[method][metric]``; one group per metric, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(values)
    metrics = list(next(iter(values.values())))
    x = np.arange(len(metrics))
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(metrics), 3.6))
    for k, method in enumerate(methods):
        heights = [values[method].get(m, np.nan) for m in metrics]
        bars = ax.bar(x + (k - (len(methods) - 1) / 2) * width, heights, width, label=method)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, metrics)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(methods), frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def label_distribution(counts: dict[str, int], path: str | Path, title: str) -> Path:
    """Bar chart of examples per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(counts) + 2), 3))
    bars = ax.bar(list(counts), list(counts.values()), color="#4c72b0")
    ax.bar_label(bars, fontsize=7)
    ax.set_ylabel("examples")
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=45 if len(counts) > 8 else 0, ha="right" if len(counts) > 8 else "center")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
