"""Pictures people look at: sample grids, bar charts, label distributions, confusion matrices and training
histories.

Every chart is drawn with matplotlib's object API on its own Agg canvas (``Figure`` + ``FigureCanvasAgg``),
never through pyplot, so drawing one changes no global matplotlib state (backend, current figure).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from federated_factory.errors import PlotError


def new_figure(figsize: tuple[float, float]):
    """A matplotlib ``Figure`` attached to its own Agg canvas (no pyplot, no backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Lay out ``fig`` and save it as a PNG at ``path`` (parent folders created)."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def image_grid(rows: list[np.ndarray], scale: int = 2, pad: int = 1) -> Image.Image:
    """Tile rows of uint8 images (each row an N×C×H×W array) into one PIL image, ``scale``× upsampled."""
    if not rows:
        raise PlotError("image_grid needs at least one row")
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
    methods = list(values)
    metrics = list(next(iter(values.values())))
    x = np.arange(len(metrics))
    width = 0.8 / max(1, len(methods))
    fig = new_figure((1.8 + 1.6 * len(metrics), 3.6))
    ax = fig.add_subplot()
    for k, method in enumerate(methods):
        heights = [values[method].get(m, np.nan) for m in metrics]
        bars = ax.bar(x + (k - (len(methods) - 1) / 2) * width, heights, width, label=method)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, metrics)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(methods), frameon=False)
    return save_figure(fig, path)


def label_distribution(counts: dict[str, int], path: str | Path, title: str) -> Path:
    """Bar chart of examples per class."""
    fig = new_figure((max(4, 0.5 * len(counts) + 2), 3))
    ax = fig.add_subplot()
    bars = ax.bar(list(counts), list(counts.values()), color="#4c72b0")
    ax.bar_label(bars, fontsize=7)
    ax.set_ylabel("examples")
    ax.set_title(title)
    for label in ax.get_xticklabels():
        label.set(rotation=45 if len(counts) > 8 else 0, ha="right" if len(counts) > 8 else "center")
    return save_figure(fig, path)


def plot_confusion_matrix(
    cm, label_names: Sequence[str], path, title: str = "Confusion matrix (row-normalised)"
) -> Path:
    """Save a heat map of ``cm`` (rows = true class) normalised per row, each cell annotated with its
    fraction; rows without examples stay empty."""
    counts = np.asarray(cm, dtype=float)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(label_names):
        raise PlotError(f"confusion matrix of shape {counts.shape} does not match {len(label_names)} label names")
    totals = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    k = len(label_names)
    size = max(4.0, 0.6 * k + 2)
    fig = new_figure((size, size))
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
    return save_figure(fig, path)


def plot_history(history: Sequence[dict], path, title: str = "Training history") -> Path:
    """Save training loss and validation accuracy against the epoch (or round: the x key is ``epoch`` or
    ``round``, whichever the entries have)."""
    xkey = "epoch" if history and "epoch" in history[0] else "round"
    xs = [h[xkey] for h in history]
    fig = new_figure((7, 3.5))
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
    return save_figure(fig, path)
