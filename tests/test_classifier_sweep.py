"""Bookkeeping of benchmarks/classifier_sweep.py: every candidate (trained here, or already trained and
given with --trained) is scored on the validation split; test is read once, for the chosen one, and only
with --final-test. Training and evaluation are replaced by fakes (they have their own tests)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
VALIDATION_ACCURACY = {"run-e30": 0.91, "e10": 0.88, "e20": 0.93}


@pytest.fixture
def sweep(monkeypatch, tmp_path):
    """The script's module, with fake data, training, loading and evaluation; ``reads`` lists the splits
    every evaluation saw and ``trained`` the epochs trained here."""
    import datasets

    import federated_factory.classifier as classifier
    import federated_factory.data as data

    spec = importlib.util.spec_from_file_location("classifier_sweep", ROOT / "benchmarks" / "classifier_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reads, trained = [], []

    def fake_train(synthetic, config, progress):
        trained.append(config.epochs)
        return SimpleNamespace(model=f"e{config.epochs}", label_names=["a", "b"], best_epoch=config.epochs,
                               best_val_accuracy=1.0)

    def fake_load(folder):
        return SimpleNamespace(model="run-e30", label_names=["a", "b"],
                               config=classifier.ClassifierConfig(epochs=30, hflip=True))

    def fake_evaluate(model, split, label_names):
        reads.append((split, model))
        accuracy = VALIDATION_ACCURACY[model] if split == "validation" else 0.5
        return {"accuracy": accuracy, "macro_f1": accuracy, "auroc": 0.9, "per_class_recall": {"a": accuracy}}

    monkeypatch.setattr(classifier, "train_classifier", fake_train)
    monkeypatch.setattr(classifier, "load_classifier", fake_load)
    monkeypatch.setattr(classifier, "evaluate_classifier", fake_evaluate)
    monkeypatch.setattr(data, "load_image_dataset", lambda source, split, **kwargs: split)
    monkeypatch.setattr(datasets, "load_from_disk", lambda path: ["row"] * 7)
    run_classifier = tmp_path / "aggregate" / "classifier"
    run_classifier.mkdir(parents=True)
    (run_classifier / "config.json").write_text("{}")
    module.reads, module.trained, module.run_classifier = reads, trained, run_classifier
    return module


def _main(sweep, monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["classifier_sweep.py", "--synthetic", "syn", "--data", "d", *argv])
    return sweep.main()


def test_a_trained_classifier_is_a_candidate_scored_on_validation_and_test_is_read_once(sweep, monkeypatch,
                                                                                         tmp_path):
    out = tmp_path / "sweep.json"
    assert _main(sweep, monkeypatch, "--out", str(out), "--trained", f"run-e30={sweep.run_classifier}",
                 "e10:epochs=10", "e20:epochs=20", "--final-test") == 0
    record = json.loads(out.read_text())
    assert sweep.trained == [10, 20]  # the given classifier is not trained again
    assert [row["name"] for row in record["results"]] == ["run-e30", "e10", "e20"]
    assert record["results"][0]["trained_from"] == str(sweep.run_classifier)
    assert record["results"][0]["settings"]["epochs"] == 30 and record["results"][0]["settings"]["hflip"] is True
    assert [row["validation"]["accuracy"] for row in record["results"]] == [0.91, 0.88, 0.93]
    assert record["chosen"] == "e20"
    assert [split for split, _ in sweep.reads].count("test") == 1
    assert sweep.reads[-1] == ("test", "e20") and record["final_test"]["setting"] == "e20"


def test_without_final_test_the_test_split_is_never_read(sweep, monkeypatch, tmp_path):
    out = tmp_path / "sweep.json"
    _main(sweep, monkeypatch, "--out", str(out), "--trained", f"run-e30={sweep.run_classifier}", "e10:epochs=10")
    record = json.loads(out.read_text())
    assert record["chosen"] == "run-e30" and "final_test" not in record
    assert all(split == "validation" for split, _ in sweep.reads)


def test_a_trained_candidate_must_name_a_classifier_folder(sweep, monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _main(sweep, monkeypatch, "--out", str(tmp_path / "x.json"), "--trained", f"run={tmp_path / 'missing'}")
    assert "expected NAME=DIR with a save_classifier folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _main(sweep, monkeypatch, "--out", str(tmp_path / "x.json"))
    assert "give at least one setting" in capsys.readouterr().err


def test_selection_signal_reports_the_epoch_each_rule_keeps_and_its_real_validation_accuracy():
    spec = importlib.util.spec_from_file_location("selection_signal", ROOT / "benchmarks" / "selection_signal.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    synthetic_acc = [0.6, 0.9, 1.0, 0.95, 1.0, 1.0]  # saturates for good from epoch 5
    synthetic_loss = [1.0, 0.5, 0.3, 0.2, 0.25, 0.4]  # lowest at epoch 4
    real_acc = [0.5, 0.7, 0.8, 0.85, 0.83, 0.8]  # best at epoch 4
    history = [{"epoch": i + 1, "val_accuracy": a, "val_loss": l,
                "watched": {"real_validation": {"accuracy": r, "balanced_accuracy": r / 2, "loss": 1 - r}}}
               for i, (a, l, r) in enumerate(zip(synthetic_acc, synthetic_loss, real_acc))]
    summary = module.summarize(history)
    rules = summary["rules"]
    assert rules["synthetic_accuracy_ties_later"]["epoch"] == 6  # the aggregator's rule: ties go to the later epoch
    assert rules["synthetic_loss"]["epoch"] == 4 and rules["last_epoch"]["epoch"] == 6
    assert rules["synthetic_loss"]["real_validation_accuracy"] == 0.85 and rules["synthetic_loss"]["gap_to_best"] == 0
    assert rules["synthetic_loss"]["real_validation_balanced_accuracy"] == 0.425  # that epoch's, as recorded
    assert rules["last_epoch"]["gap_to_best"] == pytest.approx(0.05)
    assert summary["best_real_validation"] == {"epoch": 4, "accuracy": 0.85}
    assert summary["synthetic_accuracy_saturated_from_epoch"] == 5
    correlation = summary["spearman_with_real_validation_accuracy"]
    assert correlation["minus_synthetic_loss"] > correlation["synthetic_accuracy"] > 0
    flat = [dict(h, val_accuracy=1.0) for h in history]  # a constant signal has no rank correlation
    assert module.summarize(flat)["spearman_with_real_validation_accuracy"]["synthetic_accuracy"] is None
