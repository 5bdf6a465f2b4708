"""Compare two demo runs that should be identical: the same command, the same machine, two endpoints.

`compare_runs(a, b)` reads two demo output folders and lists every difference in what the run produced:
the factories' weights, the synthetic dataset row by row, the classifier's and every expert's weights, every
method's test metrics, and the unlearned classifier. What names a commit (``source_revision``, repo@sha)
and wall times are not compared: each run publishes to its own endpoint, so its commit ids are new.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

METHODS = ("federated_factory", "network", "fedavg", "fedprox", "scaffold", "centralized")
METRICS = ("accuracy", "macro_f1", "auroc", "per_class_recall", "confusion_matrix")
#: Columns of the synthetic dataset that name a commit rather than content.
COMMIT_COLUMNS = ("source_revision",)


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _experts(out: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["weights_sha256"]
            for p in sorted((out / "network" / "experts").glob("*/results.json"))}


def compare_runs(a: str | Path, b: str | Path) -> dict:
    """``{"identical": bool, "differences": [...], "checked": {...}}`` for two demo output folders.

    ``checked`` counts what was compared (factories, synthetic rows, classifiers, experts, metrics). A factory
    or classifier missing on both sides is a difference, not a match; a synthetic dataset or method absent
    from both runs (network mode alone, no SCAFFOLD) is skipped and shows as a lower count.
    """
    from datasets import load_from_disk

    a, b = Path(a), Path(b)
    results = [json.loads((out / "results.json").read_text()) for out in (a, b)]
    differences: list[str] = []
    checked = {"factories": 0, "synthetic_rows": 0, "experts": 0, "metrics": 0, "classifiers": 0}

    names = [[c["name"] for c in r["clients"]] for r in results]
    if names[0] != names[1]:
        differences.append(f"hospitals differ: {names[0]} vs {names[1]}")
    for name in names[0]:
        weights = [_sha256(out / "clients" / name / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
                   for out in (a, b)]
        if weights[0] is None or weights[0] != weights[1]:
            differences.append(f"factory weights of {name}: {weights[0]} vs {weights[1]}")
        checked["factories"] += 1

    synthetic = [out / "aggregate" / "synthetic" for out in (a, b)]
    if all(path.is_dir() for path in synthetic):
        rows = [load_from_disk(str(path)) for path in synthetic]
        if rows[0].features != rows[1].features or len(rows[0]) != len(rows[1]):
            differences.append(f"synthetic datasets differ in features or length "
                               f"({len(rows[0])} vs {len(rows[1])} rows)")
        else:
            columns = [c for c in rows[0].column_names if c not in COMMIT_COLUMNS]
            for i, (row_a, row_b) in enumerate(zip(rows[0].select_columns(columns), rows[1].select_columns(columns))):
                same_pixels = row_a.pop("image").tobytes() == row_b.pop("image").tobytes()
                if not same_pixels or row_a != row_b:
                    differences.append(f"synthetic row {i} differs")
                checked["synthetic_rows"] += 1
    elif any(path.is_dir() for path in synthetic):
        differences.append("only one run has a synthetic dataset")

    for sub in ("aggregate", "unlearned"):
        if (a / sub).is_dir() or (b / sub).is_dir():
            weights = [_sha256(out / sub / "classifier" / "model.safetensors") for out in (a, b)]
            if weights[0] is None or weights[0] != weights[1]:
                differences.append(f"{sub} classifier weights: {weights[0]} vs {weights[1]}")
            checked["classifiers"] += 1

    experts = [_experts(out) for out in (a, b)]
    if experts[0] != experts[1]:
        differences.append(f"expert weights differ: {experts[0]} vs {experts[1]}")
    checked["experts"] = len(experts[0])

    for method in METHODS:
        if (results[0].get(method) is None) != (results[1].get(method) is None):
            differences.append(f"only one run has {method}")
            continue
        if results[0].get(method) is None:
            continue
        for metric in METRICS:
            if results[0][method].get(metric) != results[1][method].get(metric):
                values = [r[method].get(metric) for r in results]
                differences.append(f"{method} {metric}: {values[0]} vs {values[1]}")
            checked["metrics"] += 1
    return {"identical": not differences, "differences": differences, "checked": checked,
            "runs": [str(a), str(b)]}


__all__ = ["compare_runs"]
