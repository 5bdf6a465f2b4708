#!/usr/bin/env python
"""Real images next to each generator's synthetic images, class by class: one PNG to look at.

Rows: for every class, the first `--per-class` real training images, then the first `--per-class`
images of that class in each synthetic set given with `--synthetic NAME=DIR` (a `datasets.save_to_disk`
folder: an aggregation's `<output_dir>/synthetic`, or the FedCVAE-Ens set that `benchmarks/evidence.py`
keeps under its `--work` dir). Nothing is trained or sampled here; the figure only shows what the
classifiers of the evidence table were trained on.

    python benchmarks/generator_samples.py --data ../shared/data/blood-cells-32 \\
        --synthetic FederatedFactory=../runs/blood-cells-32-silos-cpu-both/aggregate/synthetic \\
        --synthetic FedCVAE-Ens=runs/evidence/blood-cells-32/silos/fedcvae/synthetic-z16-b1-seed1 \\
        --out benchmarks/results/evidence/blood-cells-32/silos/generators.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def first_of_each_class(dataset, label_names: list[str], per_class: int, channels: int) -> dict[str, np.ndarray]:
    """class name -> up to `per_class` images (N×H×W×C uint8), in row order."""
    from federated_factory.tensors import dataset_to_tensors

    names = dataset.features["label"].names
    labels = np.asarray(dataset["label"])
    picked = {}
    for name in label_names:
        rows = np.flatnonzero(labels == names.index(name))[:per_class].tolist() if name in names else []
        if not rows:
            raise SystemExit(f"class {name!r} is missing from a synthetic set (its classes with images: "
                             f"{sorted(names[k] for k in set(labels.tolist()))})")
        x, _ = dataset_to_tensors(dataset.select(rows), channels)
        picked[name] = (x.numpy() * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)
    return picked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the real dataset (its train split is shown)")
    parser.add_argument("--synthetic", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--per-class", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    sources = [item.partition("=")[::2] for item in args.synthetic]
    for name, folder in sources:
        if not name or not Path(folder).is_dir():
            parser.error(f"--synthetic {name}={folder}: expected NAME=DIR with a save_to_disk folder")

    from datasets import load_from_disk

    from federated_factory.data import load_image_dataset
    from federated_factory.plots import new_figure, save_figure

    real = load_image_dataset(args.data, split="train", image_size=args.image_size, channels=args.channels)
    label_names = list(real.features["label"].names)
    rows = [("real", first_of_each_class(real, label_names, args.per_class, args.channels))]
    rows += [(name, first_of_each_class(load_from_disk(folder), label_names, args.per_class, args.channels))
             for name, folder in sources]
    fig = new_figure((args.per_class * 0.55 + 1.6, len(label_names) * len(rows) * 0.55))
    axes = fig.subplots(len(label_names) * len(rows), 1)
    for i, class_name in enumerate(label_names):
        for j, (source, images) in enumerate(rows):
            ax = axes[i * len(rows) + j]
            strip = np.concatenate(list(images[class_name]), axis=1)
            ax.imshow(strip[..., 0] if strip.shape[-1] == 1 else strip, cmap="gray" if strip.shape[-1] == 1 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(f"{class_name}\n{source}" if j == 0 else source, rotation=0, ha="right", va="center",
                          fontsize=7)
    save_figure(fig, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
