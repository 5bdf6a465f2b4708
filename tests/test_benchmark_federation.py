"""benchmarks/federation.py --factories-only: what a long --resume run has finished so far, read from the
hospitals' dirs (no weights, nothing run)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("federation_benchmark", ROOT / "benchmarks" / "federation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _factory(resumed_from_step=None) -> dict:
    stats = {"steps": 1200, "images_per_second": 25.0, "wall_seconds": 3000.0, "final_loss": 0.05, "precision": "no"}
    if resumed_from_step is not None:
        stats["resumed_from_step"] = resumed_from_step
    return {"classes": ["basophil"], "class_counts": {"basophil": 768}, "train_stats": stats,
            "privacy_audit": {"copy_rate": 0.0, "passed": True}, "training_set_fingerprint": "ab" * 32}


def test_factories_only_records_the_published_factories_and_where_each_resumed(tmp_path, capsys):
    script = _script()
    clients = tmp_path / "run" / "clients"
    for name, factory, published in (("hospital-00", _factory(), True), ("hospital-01", _factory(240), True),
                                     ("hospital-02", _factory(), False)):  # hospital-02 is still training
        (clients / name).mkdir(parents=True)
        (clients / name / "factory.json").write_text(json.dumps(factory))
        if published:
            (clients / name / "client_summary.json").write_text("{}")
    out = tmp_path / "factories.json"
    assert script.record_finished_factories(tmp_path / "run", out) == 0
    finished = json.loads(out.read_text())["finished"]
    assert sorted(finished) == ["hospital-00", "hospital-01"]
    assert [finished[n]["resumed_from_step"] for n in ("hospital-00", "hospital-01")] == [0, 240]
    assert finished["hospital-01"]["privacy_passed"] is True and finished["hospital-01"]["train_seconds"] == 3000.0
    assert script.record_finished_factories(tmp_path / "elsewhere", out) == 2
    assert "holds no clients/ folder" in capsys.readouterr().err
