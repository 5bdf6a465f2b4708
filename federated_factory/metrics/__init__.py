"""`evaluate` metric modules that ship inside the package and load offline.

Each metric lives in ``federated_factory/metrics/<name>/<name>.py`` (an ``evaluate.Metric`` wrapping
scikit-learn). :func:`load_metric` hands ``evaluate.load`` the absolute path of that script, which evaluate
0.4.x turns into a ``LocalEvaluationModuleFactory``: the script is copied into the evaluate modules cache
(``HF_MODULES_CACHE``) and imported from there; the Hub is never asked. ``HF_EVALUATE_OFFLINE=1`` is set
(if unset) before evaluate is first imported, so that a slip towards the Hub would fail loudly instead of
downloading. Instances are computed in memory (``keep_in_memory=True``): no Arrow cache files, no locks.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
AVAILABLE_METRICS = ("accuracy", "f1", "roc_auc", "confusion_matrix")


def metric_path(name: str) -> Path:
    """Absolute path of the packaged script of metric ``name``."""
    path = METRICS_DIR / name / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"unknown metric {name!r}: no script at {path}; available: {', '.join(AVAILABLE_METRICS)}")
    return path


@functools.cache
def load_metric(name: str, config_name: str | None = None):
    """``evaluate.load`` of the packaged metric ``name`` (cached per process), without network access."""
    os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
    import evaluate

    return evaluate.load(str(metric_path(name)), config_name, keep_in_memory=True)


__all__ = ["AVAILABLE_METRICS", "METRICS_DIR", "load_metric", "metric_path"]
