#!/usr/bin/env python
"""Choose the aggregator's classifier settings on a fixed synthetic dataset, by the REAL validation split.

The synthetic dataset is fixed (any folder written by `datasets.save_to_disk`: `<output_dir>/synthetic`
of an aggregation, or a FedCVAE-Ens set), so the sweep isolates the classifier's settings from the
generators'. Each setting is `name:key=value,key=value` over `ClassifierConfig` fields. Every setting is
scored on the `validation` split of `--data` (never on `test`); the best by `--metric` is the chosen one.

A classifier already trained (a `save_classifier` folder, such as a run's `aggregate/classifier`) enters as a
candidate with `--trained NAME=DIR`: it is scored on `validation` like the others, without training it again,
and its settings are read from its folder. It may come from another synthetic set of the same factories
(`benchmarks/reaggregate.py --samples-per-class 1000 --evaluation-split validation` leaves one in
`<run>/reaggregate-<tag>/classifier`), which makes the synthesis settings a validation-chosen candidate too.

The test split is read only with `--final-test`, after the choice, and only for the chosen setting (the
model already trained for it is evaluated once); the result is stored apart, under `final_test`.

    python benchmarks/classifier_sweep.py --synthetic runs/blood-cells-32-silos-cpu/aggregate/synthetic \\
        --data ../shared/data/blood-cells-32 --out benchmarks/results/classifier_sweep.json \\
        e10:epochs=10,hflip=true,vflip=true e30:epochs=30,hflip=true,vflip=true [--final-test]

Metrics: `accuracy`, `balanced_accuracy` (mean per-class recall), `macro_f1`, `auroc` (macro one-vs-rest).
Ties go to the earlier candidate: the `--trained` ones first, then the settings in command-line order. Results are written atomically after every setting.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")


def config_field_types() -> dict:
    """ClassifierConfig field -> the type a `key=value` setting's value is converted to."""
    from federated_factory.classifier import ClassifierConfig

    return {f.name: {"int": int, "float": float, "bool": bool}.get(str(f.type), str) for f in fields(ClassifierConfig)}


def parse_setting(text: str, types: dict | None = None) -> tuple[str, dict]:
    """`name:key=value,...` → (name, {field: typed value}); unknown ClassifierConfig fields are refused.
    ``types``: field -> type, by default :func:`config_field_types`."""
    types = types if types is not None else config_field_types()
    name, _, body = text.partition(":")
    values = {}
    for item in filter(None, body.split(",")):
        key, _, raw = item.partition("=")
        if key not in types:
            raise SystemExit(f"unknown ClassifierConfig field {key!r} in setting {name!r}")
        kind = types[key]
        values[key] = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw) if kind in (int, float) else raw
    return name, values


def scores(metrics: dict) -> dict:
    """The sweep's metrics from `evaluate_classifier`'s dict (balanced accuracy = mean per-class recall)."""
    recall = list(metrics["per_class_recall"].values())
    return {"accuracy": metrics["accuracy"], "balanced_accuracy": sum(recall) / len(recall),
            "macro_f1": metrics["macro_f1"], "auroc": metrics["auroc"],
            "per_class_recall": metrics["per_class_recall"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", required=True, help="a synthetic dataset folder (datasets save_to_disk)")
    parser.add_argument("--data", required=True, help="the real dataset: its validation split scores the settings")
    parser.add_argument("--metric", choices=METRICS, default="accuracy", help="what the choice maximises")
    parser.add_argument("--final-test", action="store_true",
                        help="after choosing, evaluate the chosen setting once on the test split (reported apart)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("--trained", action="append", default=[], metavar="NAME=DIR",
                        help="a classifier already trained on --synthetic (save_classifier folder), scored as a "
                             "candidate; repeatable")
    parser.add_argument("settings", nargs="*", help="name:key=value,... over ClassifierConfig fields")
    args = parser.parse_args()
    trained_dirs = [text.partition("=")[::2] for text in args.trained]
    for name, folder in trained_dirs:
        if not name or not (Path(folder) / "config.json").is_file():
            parser.error(f"--trained {name}={folder}: expected NAME=DIR with a save_classifier folder (config.json)")
    if not args.settings and not trained_dirs:
        parser.error("give at least one setting or --trained candidate")

    import torch
    from datasets import load_from_disk

    from federated_factory.atomic import atomic_write_json
    from federated_factory.classifier import ClassifierConfig, evaluate_classifier, load_classifier, train_classifier
    from federated_factory.data import load_image_dataset

    types = config_field_types()
    parsed = [parse_setting(text, types) for text in args.settings]
    synthetic = load_from_disk(args.synthetic)
    validation = load_image_dataset(args.data, split="validation", image_size=args.image_size, channels=args.channels)
    record = {"command": "python benchmarks/classifier_sweep.py " + " ".join(sys.argv[1:]),
              "synthetic": args.synthetic, "synthetic_rows": len(synthetic), "selection_split": "validation",
              "metric": args.metric,
              "machine": {"platform": platform.platform(), "torch": torch.__version__}, "results": []}

    def candidates():
        """(name, row without scores, model, label names) for every candidate, in tie-breaking order."""
        for name, folder in trained_dirs:
            loaded = load_classifier(folder)
            settings = loaded.config.to_dict() if loaded.config else {}
            yield name, {"settings": settings, "trained_from": folder}, loaded.model, loaded.label_names
        for name, values in parsed:
            t0 = time.perf_counter()
            trained = train_classifier(synthetic, ClassifierConfig(**values), progress=False)
            yield name, {"settings": values, "best_epoch": trained.best_epoch,
                         "best_synthetic_val_accuracy": trained.best_val_accuracy,
                         "seconds": time.perf_counter() - t0}, trained.model, trained.label_names

    best = None
    for name, row, model, label_names in candidates():
        row = {"name": name, **row, "validation": scores(evaluate_classifier(model, validation, label_names))}
        row.setdefault("seconds", 0.0)
        record["results"].append(row)
        value = row["validation"][args.metric]
        if best is None or (value is not None and value > best[1]):
            best = (name, value, (model, label_names))
        print(f"{name:24s} validation {args.metric} {value:.4f}  ({row['seconds']:.0f} s)", flush=True)
        record["chosen"] = best[0]
        atomic_write_json(args.out, record)
    if args.final_test:
        name, _, (model, label_names) = best
        test = load_image_dataset(args.data, split="test", image_size=args.image_size, channels=args.channels)
        record["final_test"] = {"setting": name, **scores(evaluate_classifier(model, test, label_names))}
        atomic_write_json(args.out, record)
        final = record["final_test"]
        shown = ", ".join(f"{m} {final[m]:.4f}" for m in dict.fromkeys((args.metric, "accuracy")))
        print(f"chosen {name}: test {shown} (read once)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
