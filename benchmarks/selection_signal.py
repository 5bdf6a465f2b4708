#!/usr/bin/env python
"""Does a data-free signal choose the classifier's epoch as the real validation split would?

The aggregator never sees real images, so it chooses among its classifier's epochs on a slice held out of
the *synthetic* training set (`ClassifierConfig.val_fraction`, ties to the later epoch). This script
measures that rule, and the held-out synthetic cross-entropy as an alternative, against the real
`validation` split: one classifier is trained on a fixed synthetic dataset exactly as the aggregator trains
it, and after every epoch it is scored on the synthetic held-out slice and on the real validation split
(`train_classifier(..., watch=...)`: watched, never used to choose). The test split is not read.

Reported in `--out` (JSON) and `--plot` (PNG), per epoch and per rule:
* the epoch each rule picks (synthetic held-out accuracy with ties to the later epoch, which is the
  aggregator's rule; lowest synthetic held-out cross-entropy; the last epoch) and the real validation
  accuracy there, beside the best real validation accuracy over the epochs (a ceiling no data-free rule
  can beat);
* the Spearman rank correlation, over epochs, between each signal and real validation accuracy.

    python benchmarks/selection_signal.py --synthetic ../runs/blood-cells-32-silos-cpu-both/aggregate/synthetic \\
        --data ../shared/data/blood-cells-32 --setting epochs=30,hflip=true,vflip=true \\
        --out benchmarks/results/selection_signal/blood-cells-32.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from classifier_sweep import parse_setting  # noqa: E402  (same folder: one parser of `key=value,...`)


def rules(history: list[dict]) -> dict[str, int]:
    """The epoch (from 1) each selection rule keeps, given a history with ``val_accuracy`` and ``val_loss``."""
    acc = [h["val_accuracy"] for h in history]
    loss = [h["val_loss"] for h in history]
    return {
        "synthetic_accuracy_ties_later": max(i for i, a in enumerate(acc) if a == max(acc)) + 1,
        "synthetic_loss": min(range(len(loss)), key=loss.__getitem__) + 1,
        "last_epoch": len(history),
    }


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (ties averaged); None when either series is constant."""
    from scipy.stats import spearmanr

    if len(set(a)) < 2 or len(set(b)) < 2:
        return None
    return float(spearmanr(a, b).statistic)


def summarize(history: list[dict], watched: str = "real_validation") -> dict:
    """Per rule: the epoch kept and the watched set's accuracy there; the watched ceiling; rank correlations."""
    real = [h["watched"][watched]["accuracy"] for h in history]
    best_real = max(real)
    chosen = {name: {"epoch": epoch, "real_validation_accuracy": real[epoch - 1],
                     "gap_to_best": best_real - real[epoch - 1]}
              for name, epoch in rules(history).items()}
    for row in chosen.values():  # the mean per-class recall too, for rows judged on it (derma-28)
        balanced = history[row["epoch"] - 1]["watched"][watched].get("balanced_accuracy")
        if balanced is not None:
            row["real_validation_balanced_accuracy"] = balanced
    return {
        "rules": chosen,
        "best_real_validation": {"epoch": real.index(best_real) + 1, "accuracy": best_real},
        "synthetic_accuracy_saturated_from_epoch": next(
            (h["epoch"] for h in history if h["val_accuracy"] == 1.0
             and all(later["val_accuracy"] == 1.0 for later in history[h["epoch"] - 1:])), None),
        "spearman_with_real_validation_accuracy": {
            "synthetic_accuracy": spearman([h["val_accuracy"] for h in history], real),
            "minus_synthetic_loss": spearman([-h["val_loss"] for h in history], real),
        },
    }


def plot(history: list[dict], summary: dict, path: Path, title: str) -> None:
    from federated_factory.plots import new_figure, save_figure

    epochs = [h["epoch"] for h in history]
    fig = new_figure((10, 3.8))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    left.plot(epochs, [h["val_accuracy"] for h in history], marker=".", label="synthetic held-out")
    left.plot(epochs, [h["watched"]["real_validation"]["accuracy"] for h in history], marker=".",
              label="real validation")
    for name, style in (("synthetic_accuracy_ties_later", ":"), ("synthetic_loss", "--")):
        left.axvline(summary["rules"][name]["epoch"], linestyle=style, color="grey",
                     label=f"kept by {name.replace('_', ' ')}")
    left.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    left.legend(fontsize=7)
    right.plot(epochs, [h["val_loss"] for h in history], marker=".", label="synthetic held-out")
    right.plot(epochs, [h["watched"]["real_validation"]["loss"] for h in history], marker=".",
               label="real validation")
    right.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    right.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", required=True, help="a synthetic dataset folder (datasets save_to_disk)")
    parser.add_argument("--data", required=True, help="the real dataset: only its validation split is read")
    parser.add_argument("--setting", default="",
                        help="key=value,... over ClassifierConfig fields (the aggregator's classifier settings)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--out", required=True, help="JSON results (written atomically)")
    parser.add_argument("--plot", default=None, help="PNG (default: --out with .png)")
    args = parser.parse_args()

    import torch
    from datasets import load_from_disk

    from federated_factory.atomic import atomic_write_json
    from federated_factory.classifier import ClassifierConfig, train_classifier
    from federated_factory.data import load_image_dataset

    _, values = parse_setting("setting:" + args.setting)
    config = ClassifierConfig(**values)
    if config.val_fraction <= 0:
        parser.error("--setting val_fraction must be > 0: the synthetic held-out slice is what is measured")
    synthetic = load_from_disk(args.synthetic)
    validation = load_image_dataset(args.data, split="validation", image_size=args.image_size, channels=args.channels)
    t0 = time.perf_counter()
    trained = train_classifier(synthetic, config, watch={"real_validation": validation})
    summary = summarize(trained.history)
    if summary["rules"]["synthetic_accuracy_ties_later"]["epoch"] != trained.best_epoch:  # the rule, recomputed
        raise SystemExit(f"the aggregator's rule kept epoch {trained.best_epoch}, the recomputed rule "
                         f"{summary['rules']['synthetic_accuracy_ties_later']['epoch']}: rules() is out of date")
    record = {"command": "python benchmarks/selection_signal.py " + " ".join(sys.argv[1:]),
              "synthetic": args.synthetic, "synthetic_rows": len(synthetic), "synthetic_held_out": trained.num_val,
              "real_validation_rows": len(validation), "config": config.to_dict(), "test_split_read": False,
              "seconds": time.perf_counter() - t0,
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()},
              **summary, "history": trained.history}
    atomic_write_json(args.out, record)
    plot_path = Path(args.plot) if args.plot else Path(args.out).with_suffix(".png")
    plot(trained.history, summary, plot_path, f"{Path(args.synthetic)} ({len(synthetic)} rows) vs {args.data}")
    for name, row in summary["rules"].items():
        print(f"{name:32s} epoch {row['epoch']:3d}  real validation {row['real_validation_accuracy']:.4f}", flush=True)
    best = summary["best_real_validation"]
    print(f"{'best real validation':32s} epoch {best['epoch']:3d}  real validation {best['accuracy']:.4f}")
    print(f"written {args.out} and {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
