"""benchmarks/choose_across_seeds.py: one setting for a row, by the mean of its validation scores over seeds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def script():
    spec = importlib.util.spec_from_file_location("choose_across_seeds", ROOT / "benchmarks" / "choose_across_seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def signal(path: Path, ties_later: float, loss: float, test_read=False) -> str:
    """Balanced accuracy is recorded in the reverse order of accuracy, so the two metrics choose differently."""
    rules = {"synthetic_accuracy_ties_later": {"epoch": 21, "real_validation_accuracy": ties_later,
                                               "real_validation_balanced_accuracy": loss},
             "synthetic_loss": {"epoch": 23, "real_validation_accuracy": loss,
                                "real_validation_balanced_accuracy": ties_later},
             "last_epoch": {"epoch": 30, "real_validation_accuracy": 0.5}}
    path.write_text(json.dumps({"rules": rules, "test_split_read": test_read}))
    return str(path)


def sweep(path: Path, **accuracy: float) -> str:
    path.write_text(json.dumps({"selection_split": "validation", "results": [
        {"name": n, "validation": {"accuracy": a, "balanced_accuracy": a}} for n, a in accuracy.items()]}))
    return str(path)


def run(script, monkeypatch, *argv) -> int:
    monkeypatch.setattr(sys, "argv", ["choose_across_seeds.py", *argv])
    return script.main()


def test_the_best_mean_over_seeds_wins_not_the_best_single_seed(script, tmp_path, monkeypatch):
    out = tmp_path / "choice.json"
    argv = ["--candidates", "rule:synthetic_accuracy_ties_later", "rule:synthetic_loss", "ema",
            "--signal", f"0={signal(tmp_path / 's0.json', 0.99, 0.90)}", f"1={signal(tmp_path / 's1.json', 0.80, 0.91)}",
            "--sweep", f"0={sweep(tmp_path / 'w0.json', ema=0.92)}", f"1={sweep(tmp_path / 'w1.json', ema=0.905)}",
            "--out", str(out)]
    assert run(script, monkeypatch, *argv) == 0
    record = json.loads(out.read_text())
    # ties-later has the best seed (0.99) but the worst mean (0.895); ema 0.9125 beats loss 0.905
    assert record["chosen"] == "ema" and record["test_split_read"] is False
    assert record["candidates"]["rule:synthetic_loss"]["mean"] == pytest.approx(0.905)
    assert record["reported_beside"]["rule:last_epoch"]["mean"] == pytest.approx(0.5)


def test_balanced_accuracy_chooses_when_asked(script, tmp_path, monkeypatch):
    out = tmp_path / "choice.json"
    common = ["--candidates", "rule:synthetic_accuracy_ties_later", "rule:synthetic_loss",
              "--signal", f"0={signal(tmp_path / 's0.json', 0.9, 0.8)}", "--out", str(out)]
    assert run(script, monkeypatch, *common) == 0
    assert json.loads(out.read_text())["chosen"] == "rule:synthetic_accuracy_ties_later"
    assert run(script, monkeypatch, *common, "--metric", "balanced_accuracy") == 0
    record = json.loads(out.read_text())
    assert record["chosen"] == "rule:synthetic_loss" and record["metric"] == "balanced_accuracy"
    with pytest.raises(SystemExit, match=r"without a validation score.*'rule:last_epoch': \[0\]"):
        run(script, monkeypatch, "--candidates", "rule:last_epoch", "--metric", "balanced_accuracy",
            "--signal", f"0={signal(tmp_path / 's1.json', 0.9, 0.8)}", "--out", str(out))


def test_a_tie_goes_to_the_earlier_candidate(script, tmp_path, monkeypatch):
    out = tmp_path / "choice.json"
    assert run(script, monkeypatch, "--candidates", "rule:synthetic_loss", "ema", "--signal",
               f"0={signal(tmp_path / 's0.json', 0.8, 0.9)}", "--sweep", f"0={sweep(tmp_path / 'w0.json', ema=0.9)}",
               "--out", str(out)) == 0
    assert json.loads(out.read_text())["chosen"] == "rule:synthetic_loss"


def test_a_candidate_missing_a_seed_or_a_record_that_read_test_is_refused(script, tmp_path, monkeypatch):
    s0, s1 = signal(tmp_path / "s0.json", 0.8, 0.9), signal(tmp_path / "s1.json", 0.8, 0.9)
    with pytest.raises(SystemExit, match=r"every seed \[0, 1\].*'ema': \[1\]"):
        run(script, monkeypatch, "--candidates", "rule:synthetic_loss", "ema", "--signal", f"0={s0}", f"1={s1}",
            "--sweep", f"0={sweep(tmp_path / 'w0.json', ema=0.9)}", "--out", str(tmp_path / "c.json"))
    with pytest.raises(SystemExit, match="left test unread"):
        run(script, monkeypatch, "--candidates", "rule:synthetic_loss", "--signal",
            f"0={signal(tmp_path / 't.json', 0.8, 0.9, test_read=True)}", "--out", str(tmp_path / "c.json"))
    assert not (tmp_path / "c.json").exists()
