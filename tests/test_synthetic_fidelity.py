"""benchmarks/synthetic_fidelity.py: a reference trained on real rows finds the factory that draws the wrong class,
reads only the train and validation splits, and reuses a kept reference instead of training again."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from tests.test_classifier import pattern_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def script(monkeypatch):
    """The script's module, with the real data loader replaced by pattern images; ``module.reads`` lists the
    splits it asked for."""
    import federated_factory.data as data

    spec = importlib.util.spec_from_file_location("synthetic_fidelity", ROOT / "benchmarks" / "synthetic_fidelity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reads = []

    def fake_load(source, split, **kwargs):
        reads.append(split)
        return pattern_dataset(40 if split == "train" else 12, seed={"train": 0, "validation": 1}.get(split, 9))

    monkeypatch.setattr(data, "load_image_dataset", fake_load)
    module.reads = reads
    return module


def test_fidelity_counts_recognition_and_confusion_per_intended_class(script):
    probabilities = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]])
    labels = torch.tensor([0, 0, 1, 1])
    table = script.fidelity(probabilities, labels, ["a", "b"])
    assert table["a"] == {"images": 2, "recognised": 0.5, "mean_probability": pytest.approx(0.55),
                          "called": {"a": 1, "b": 1}}
    assert table["b"]["recognised"] == 1.0 and table["b"]["called"] == {"b": 2}


def test_a_factory_drawing_another_class_is_found_and_test_is_never_read(script, tmp_path, monkeypatch):
    import datasets

    good = pattern_dataset(20, classes=(0, 2), seed=5)
    # hospital c1's "factory" draws c2's pattern under c1's label
    wrong = pattern_dataset(20, classes=(2,), seed=6).cast_column(
        "label", datasets.ClassLabel(names=["c0", "c1", "c2"])).map(lambda row: {"label": 1})
    datasets.concatenate_datasets([good, wrong]).save_to_disk(str(tmp_path / "synthetic"))
    out, reference = tmp_path / "fidelity.json", tmp_path / "reference"
    argv = ["synthetic_fidelity.py", "--data", "d", "--synthetic", f"run={tmp_path / 'synthetic'}",
            "--setting", "epochs=6,batch_size=8,seed=0", "--image-size", "12", "--channels", "1",
            "--reference-dir", str(reference), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    assert script.main() == 0
    record = json.loads(out.read_text())
    assert script.reads == ["validation", "train"] and record["test_split_read"] is False
    run = record["synthetic"]["run"]["per_class"]
    assert run["c0"]["recognised"] >= 0.9 and run["c2"]["recognised"] >= 0.9
    assert run["c1"]["recognised"] <= 0.1 and run["c1"]["called"].get("c2", 0) >= 18
    assert record["real_validation"]["c1"]["recognised"] >= 0.9  # the reference itself knows c1
    # real c1 images are nearest to synthetic images labelled c1 (drawn as c2) or c2: never "covered" as c1's own
    nearest = record["synthetic"]["run"]["real_validation_nearest_synthetic_label"]
    assert nearest["c0"].get("c0", 0) >= 10 and nearest["c1"].get("c0", 0) <= 2
    assert run["c1"]["coverage"] < run["c0"]["coverage"]
    assert record["reference"]["best_epoch"] >= 1 and record["reference"]["config"]["epochs"] == 6
    assert (reference / "model.safetensors").is_file() and out.with_suffix(".png").is_file()

    # a second run reuses the kept reference: no training, the same scores
    import federated_factory.classifier as classifier

    monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: pytest.fail("trained again"))
    script.reads.clear()
    assert script.main() == 0
    again = json.loads(out.read_text())
    assert script.reads == ["validation"] and again["synthetic"] == record["synthetic"]
    assert again["reference"] == record["reference"]


def test_coverage_and_density_tell_collapsed_and_shifted_generators_from_a_faithful_one(script):
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(200, 2, generator=generator)
    faithful = torch.randn(400, 2, generator=generator)
    collapsed = 0.05 * torch.randn(400, 2, generator=generator)  # every image near the class's mean
    good, bad = script.coverage_density(real, faithful, 5), script.coverage_density(real, collapsed, 5)
    assert good["coverage"] > 0.9 and 0.6 < good["density"] < 1.5
    assert bad["coverage"] < 0.2  # faithful where it draws, absent elsewhere
    shifted = script.coverage_density(real, faithful + 6.0, 5)  # off the data: only the real tail meets it
    assert shifted["coverage"] < 0.02 and shifted["density"] < 0.02
    assert math.isnan(script.coverage_density(real[:5], faithful, 5)["coverage"])  # too few real rows for k = 5


def test_nearest_label_counts_the_label_of_each_real_rows_nearest_synthetic_row(script):
    real = torch.tensor([[0.0], [4.0], [10.8]])
    fake = torch.tensor([[0.2], [5.0], [11.0]])
    table = script.nearest_label(real, torch.tensor([0, 0, 1]), fake, torch.tensor([0, 1, 0]), ["a", "b"])
    assert table == {"a": {"a": 1, "b": 1}, "b": {"a": 1}}


def test_a_synthetic_argument_without_a_name_is_refused(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["synthetic_fidelity.py", "--data", "d", "--synthetic", "just/a/path",
                                      "--out", "x.json"])
    with pytest.raises(SystemExit):
        script.main()
    assert "expected NAME=PATH" in capsys.readouterr().err
