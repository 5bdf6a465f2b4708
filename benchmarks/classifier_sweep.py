#!/usr/bin/env python
"""Train the aggregator's classifier on one synthetic dataset with several settings; real test accuracy.

The synthetic dataset is fixed (a folder an aggregation wrote, `<output_dir>/synthetic`), so the sweep
isolates the classifier's settings from the factories'. Each setting is `name:key=value,key=value` over
`ClassifierConfig` fields. Results go to a JSON file.

    python benchmarks/classifier_sweep.py --synthetic runs/blood-cells-32-silos-cpu/aggregate/synthetic \\
        --test ../shared/data/blood-cells-32 --out benchmarks/results/classifier_sweep.json \\
        base:epochs=10,hflip=true,vflip=true long:epochs=30,hflip=true,vflip=true
"""

import argparse
import json
import platform
import sys
import time
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_setting(text: str, types: dict) -> tuple[str, dict]:
    name, _, body = text.partition(":")
    values = {}
    for item in filter(None, body.split(",")):
        key, _, raw = item.partition("=")
        if key not in types:
            raise SystemExit(f"unknown ClassifierConfig field {key!r} in setting {name!r}")
        kind = types[key]
        values[key] = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw) if kind in (int, float) else raw
    return name, values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", required=True, help="a synthetic dataset folder (datasets save_to_disk)")
    parser.add_argument("--test", required=True, help="the real dataset whose test split is evaluated")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("settings", nargs="+", help="name:key=value,... over ClassifierConfig fields")
    args = parser.parse_args()

    import torch
    from datasets import load_from_disk

    from federated_factory.classifier import ClassifierConfig, evaluate_classifier, train_classifier
    from federated_factory.data import load_image_dataset

    types = {f.name: {"int": int, "float": float, "bool": bool}.get(str(f.type), str) for f in fields(ClassifierConfig)}
    synthetic = load_from_disk(args.synthetic)
    test = load_image_dataset(args.test, split="test", image_size=args.image_size, channels=args.channels)
    results = []
    for text in args.settings:
        name, values = parse_setting(text, types)
        config = ClassifierConfig(**values)
        t0 = time.perf_counter()
        trained = train_classifier(synthetic, config, progress=False)
        metrics = evaluate_classifier(trained.model, test, trained.label_names)
        row = {"name": name, "settings": values, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
               "auroc": metrics["auroc"], "per_class_recall": metrics.get("per_class_recall"),
               "seconds": time.perf_counter() - t0}
        results.append(row)
        print(f"{name:24s} accuracy {row['accuracy']:.4f}  macro-F1 {row['macro_f1']:.4f}  ({row['seconds']:.0f} s)",
              flush=True)
        Path(args.out).write_text(json.dumps({
            "command": "python benchmarks/classifier_sweep.py " + " ".join(sys.argv[1:]),
            "synthetic_rows": len(synthetic), "machine": {"platform": platform.platform(), "torch": torch.__version__},
            "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
