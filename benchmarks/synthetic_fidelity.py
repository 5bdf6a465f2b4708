#!/usr/bin/env python
"""Which factory's images are off? Score each class of a synthetic set with a classifier trained on real data.

The aggregator's accuracy on real test images says how good a synthetic training set is as a whole ("GAN-train"
in Shmelkov et al., 2018, "How good is my GAN?"); it does not say which hospital's factory made the images that
mislead it. This script measures the other direction, "GAN-test": a *reference* classifier is trained on the
real training split (the centralized baseline's recipe), and each synthetic set is scored class by class with
it. A factory whose images the reference calls another class, more often than it misreads that class's real
validation images, is drawing something else.

Recognition measures fidelity, not coverage: a factory that draws only the easiest cells of its class scores
perfectly and still leaves the aggregator blind to the rest. So the script also compares the sets in the
reference's feature space (its pooled features before the last layer), per class, against the real validation
images: "coverage" and "density" (Naeem et al., 2020, "Reliable fidelity and diversity metrics for generative
models", k nearest neighbours among the real images set each real image's radius): coverage is the share of
real images with at least one synthetic image of their class inside their radius, density how many real radii
a synthetic image falls in, over k (about 1 when the two spread alike). And for each real validation image, the
label of its nearest synthetic image of any class: the aggregator's confusion as a 1-nearest-neighbour sees it,
which names the factory whose images sit where a real class's images are.

Reported per synthetic set: per class, the share of its images the reference recognises (its "recognition
rate"), the full confusion (synthetic class -> reference's label), the mean confidence the reference gives the
intended class, coverage, density and the nearest-synthetic-label confusion; beside them, the reference's own
per-class recall on the real validation split, the ceiling a perfect factory would reach. Reads the real train
split (to train the reference; its epoch is kept on a slice held out of train) and the validation split; the
test split is not read.

This is a diagnostic run by the benchmark's authors, who hold every hospital's data; in a federation no party
could train the reference (it pools all hospitals' images).

    python benchmarks/synthetic_fidelity.py --data ../shared/data/blood-cells-32 \\
        --synthetic seed0=../runs/blood-cells-32-silos-cpu-both-seed0-s1000-n50/aggregate/synthetic \\
        --synthetic seed1=../runs/blood-cells-32-silos-cpu-both-seed1-s1000-n50/aggregate/synthetic \\
        --setting epochs=30,hflip=true,vflip=true,class_weighting=balanced \\
        --reference-dir ../runs/reference-blood-cells-32 --out benchmarks/results/synthetic_fidelity/blood-cells-32.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from classifier_sweep import parse_setting  # noqa: E402  (same folder: one parser of `key=value,...`)

REFERENCE_RECORD = "reference.json"  # beside a kept reference: how it was trained and which epoch it kept


def fidelity(probabilities, labels, label_names: list[str]) -> dict:
    """Per intended class: recognition rate, mean probability of the intended class, and the confusion row
    (intended class -> how many the reference gave each label). ``probabilities``: (n, classes) softmax."""
    import torch

    predicted = probabilities.argmax(1)
    per_class = {}
    for c, name in enumerate(label_names):
        rows = labels == c
        n = int(rows.sum())
        if n == 0:
            continue
        counts = torch.bincount(predicted[rows], minlength=len(label_names))
        per_class[name] = {
            "images": n,
            "recognised": float(counts[c]) / n,
            "mean_probability": float(probabilities[rows, c].mean()),
            "called": {label_names[k]: int(v) for k, v in enumerate(counts) if v},
        }
    return per_class


def coverage_density(real, fake, k: int) -> dict:
    """Naeem et al. (2020) on feature rows: each real row's radius is the distance to its k-th nearest other real
    row; coverage = share of real rows with a fake row inside their radius; density = mean over fake rows of how
    many real radii hold it, divided by k."""
    import torch

    if len(real) <= k or len(fake) == 0:
        return {"coverage": float("nan"), "density": float("nan")}
    radii = torch.cdist(real, real).kthvalue(k + 1, dim=1).values  # the 1st "neighbour" is the row itself
    inside = torch.cdist(real, fake) < radii[:, None]  # (real, fake)
    return {"coverage": float(inside.any(1).float().mean()), "density": float(inside.sum(0).float().mean() / k)}


def nearest_label(real, real_labels, fake, fake_labels, label_names: list[str]) -> dict:
    """Per real class: how many of its rows have their nearest fake row in each class."""
    import torch

    nearest = fake_labels[torch.cdist(real, fake).argmin(1)]
    return {name: {label_names[k]: int(v) for k, v in
                   enumerate(torch.bincount(nearest[real_labels == c], minlength=len(label_names))) if v}
            for c, name in enumerate(label_names) if (real_labels == c).any()}


def embed_and_classify(model, dataset, label_names: list[str], channels: int, batch_size: int = 512):
    """The reference's softmax probabilities and pooled features (before its last layer) for ``dataset``."""
    import torch

    from federated_factory.data import label_names_of
    from federated_factory.tensors import dataset_to_tensors

    if label_names_of(dataset) != label_names:
        raise SystemExit(f"classes {label_names_of(dataset)} differ from the reference's {label_names}")
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise SystemExit(f"the reference ({type(model).__name__}) has no forward_features/forward_head: use a timm "
                         f"architecture (ff_cnn, ff_resnet18, ...)")
    x, y = dataset_to_tensors(dataset, channels)
    features, probabilities = [], []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            maps = model.forward_features(x[i : i + batch_size])
            features.append(model.forward_head(maps, pre_logits=True).float())
            probabilities.append(torch.softmax(model.forward_head(maps).float(), dim=1))
    return torch.cat(features), torch.cat(probabilities), y


def score(real, synthetic, label_names: list[str], k: int) -> dict:
    """Per class: recognition (:func:`fidelity`) plus coverage and density against the real rows; and the
    nearest-synthetic-label confusion of the real rows. ``real``/``synthetic``: (features, probabilities, labels)."""
    real_f, _, real_y = real
    fake_f, fake_p, fake_y = synthetic
    per_class = fidelity(fake_p, fake_y, label_names)
    for c, name in enumerate(label_names):
        if name in per_class:
            per_class[name].update(coverage_density(real_f[real_y == c], fake_f[fake_y == c], k))
    return {"per_class": per_class,
            "real_validation_nearest_synthetic_label": nearest_label(real_f, real_y, fake_f, fake_y, label_names)}


def plot(record: dict, path: Path) -> None:
    """Top: recognition rate (beside the reference's real-validation recall) and coverage, per class and set.
    Bottom: for each set, the label of each real validation image's nearest synthetic image (rows sum to 1)."""
    import numpy as np

    from federated_factory.plots import new_figure, save_figure

    names, sets = record["label_names"], list(record["synthetic"])
    fig = new_figure((max(10.0, 4.2 * len(sets)), 8.4))
    x = np.arange(len(names))
    grid = fig.add_gridspec(2, 2 * len(sets))  # top: two panels of len(sets) columns; bottom: one of 2 per set

    colours = {"real validation (reference's recall)": "grey", **{s: f"C{i}" for i, s in enumerate(sets)}}

    def bars(ax, series: dict, ylabel: str, title: str) -> None:
        width = 0.8 / len(series)
        for i, (label, values) in enumerate(series.items()):
            ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label, color=colours[label])
        lowest = np.nanmin([v for values in series.values() for v in values])
        ax.set(xticks=x, ylabel=ylabel, ylim=(max(0.0, np.floor((lowest - 0.05) * 10) / 10), 1.0), title=title)
        ax.set_xticklabels(names, rotation=20, fontsize=8)
        ax.legend(fontsize=7, loc="lower left")

    def column(table: dict, key: str) -> list[float]:
        return [table[c][key] if c in table else np.nan for c in names]

    bars(fig.add_subplot(grid[0, :len(sets)]),
         {"real validation (reference's recall)": column(record["real_validation"], "recognised"),
          **{s: column(record["synthetic"][s]["per_class"], "recognised") for s in sets}},
         "share recognised", "recognition by the real-data reference")
    bars(fig.add_subplot(grid[0, len(sets):]), {s: column(record["synthetic"][s]["per_class"], "coverage") for s in sets},
         "share of real validation covered", f"coverage (k = {record['k']})")
    for i, name in enumerate(sets):
        ax = fig.add_subplot(grid[1, 2 * i : 2 * i + 2])
        table = record["synthetic"][name]["real_validation_nearest_synthetic_label"]
        matrix = np.array([[table[c].get(k, 0) / sum(table[c].values()) for k in names] if c in table
                           else [np.nan] * len(names) for c in names])
        ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
        for r in range(len(names)):
            for k in range(len(names)):
                if matrix[r, k] >= 0.02:
                    ax.text(k, r, f"{matrix[r, k]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if matrix[r, k] > 0.5 else "black")
        ax.set(title=f"{name}: nearest synthetic image's label", xlabel="nearest synthetic label",
               ylabel="real validation class" if i == 0 else None, xticks=x, yticks=x)
        ax.set_xticklabels(names, rotation=90, fontsize=6)
        ax.set_yticklabels(names if i == 0 else [], fontsize=6)
    save_figure(fig, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the real dataset: its train and validation splits are read")
    parser.add_argument("--synthetic", action="append", required=True, metavar="NAME=PATH",
                        help="a synthetic dataset folder (datasets save_to_disk), named; repeat for several")
    parser.add_argument("--setting", default="",
                        help="key=value,... over ClassifierConfig fields: how the reference is trained")
    parser.add_argument("--reference-dir", default=None,
                        help="keep the trained reference here (safetensors) and reuse it when it is already there")
    parser.add_argument("--k", type=int, default=5, help="neighbours that set a real image's radius (coverage)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--out", required=True, help="JSON results (written atomically)")
    parser.add_argument("--plot", default=None, help="PNG (default: --out with .png)")
    args = parser.parse_args()

    import torch
    from datasets import load_from_disk

    from federated_factory.atomic import atomic_write_json
    from federated_factory.classifier import ClassifierConfig, load_classifier, save_classifier, train_classifier
    from federated_factory.data import label_names_of, load_image_dataset

    synthetic = {}
    for item in args.synthetic:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            parser.error(f"--synthetic {item!r}: expected NAME=PATH")
        if not Path(folder).is_dir():
            parser.error(f"--synthetic {name}: {folder} is not a folder")
        synthetic[name] = folder
    _, values = parse_setting("setting:" + args.setting)
    config = ClassifierConfig(**values)
    load = dict(image_size=args.image_size, channels=args.channels)
    validation = load_image_dataset(args.data, split="validation", **load)
    t0 = time.perf_counter()
    reference = Path(args.reference_dir) if args.reference_dir else None
    if reference is not None and (reference / "model.safetensors").is_file():
        if not (reference / REFERENCE_RECORD).is_file():
            raise SystemExit(f"{reference} holds a model but no {REFERENCE_RECORD}: not a reference this script kept "
                             f"(remove the folder to train one)")
        loaded = load_classifier(reference)
        model, label_names = loaded.model, loaded.label_names
        trained = json.loads((reference / REFERENCE_RECORD).read_text())
        config = ClassifierConfig(**trained["config"])
        print(f"reference reused from {reference} (trained with {trained['config']})", flush=True)
    else:
        result = train_classifier(load_image_dataset(args.data, split="train", **load), config)
        model, label_names = result.model, result.label_names
        trained = {"config": config.to_dict(), "best_epoch": result.best_epoch,
                   "seconds": result.wall_time_s}
        if reference is not None:
            save_classifier(model, reference, label_names=label_names, image_size=args.image_size)
            atomic_write_json(reference / REFERENCE_RECORD, trained)
    model.eval()
    if label_names_of(validation) != label_names:
        raise SystemExit(f"validation classes {label_names_of(validation)} differ from the reference's {label_names}")
    real = embed_and_classify(model, validation, label_names, args.channels)
    record = {
        "command": "python benchmarks/synthetic_fidelity.py " + " ".join(sys.argv[1:]),
        "data": args.data, "label_names": label_names, "reference": trained,
        "reference_dir": str(reference) if reference else None, "test_split_read": False, "k": args.k,
        "real_validation": fidelity(real[1], real[2], label_names),
        "synthetic_paths": synthetic,
        "synthetic": {name: score(real, embed_and_classify(model, load_from_disk(folder), label_names, args.channels),
                                  label_names, args.k)
                      for name, folder in synthetic.items()},
        "seconds": time.perf_counter() - t0,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    atomic_write_json(args.out, record)
    plot_path = Path(args.plot) if args.plot else Path(args.out).with_suffix(".png")
    plot(record, plot_path)
    print(f"{'class':14s}{'real val':>9s}" + "".join(f"{name + ' rec/cov':>18s}" for name in synthetic))
    for c in label_names:
        cells = [record["synthetic"][name]["per_class"].get(c, {}) for name in synthetic]
        print(f"{c:14s}{record['real_validation'][c]['recognised']:9.3f}"
              + "".join(f"{cell.get('recognised', float('nan')):12.3f}{cell.get('coverage', float('nan')):6.3f}"
                        for cell in cells))
    print(f"written {args.out} and {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
