"""Behaviour of the evidence driver (benchmarks/evidence.py): validation-only choice, one test read per
reported number, resumable stage files, the rendered table. The methods are replaced by fakes: the
driver's bookkeeping is what is tested here (the methods have their own tests)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def evidence(monkeypatch):
    spec = importlib.util.spec_from_file_location("evidence_driver", ROOT / "benchmarks" / "evidence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeData:
    name = "blood-cells-32"
    spec = {"metrics": ("accuracy",)}
    validation = "VALIDATION"

    def __init__(self):
        self.test_reads = 0

    def test(self):
        self.test_reads += 1
        return "TEST"


def args_for(tmp_path):
    return argparse.Namespace(out=str(tmp_path), cvae_grid=["z16-b1", "z32-b1"], select_seed=0, metric="accuracy",
                              work=str(tmp_path / "work"), keep_models=False)


def test_choice_uses_validation_test_read_once_per_seed_and_rerun_skips(evidence, tmp_path, monkeypatch):
    calls = []
    validation_accuracy = {16: 0.6, 32: 0.8}  # z32 wins on validation

    def fake_once(args, data, method, setting, seed):
        calls.append((setting.get("latent_dim"), seed))
        return ({"validation": {"accuracy": validation_accuracy[setting["latent_dim"]]}, "timings": {"x": 1.0},
                 "bytes": {"upload": 10}}, ("model", ["a"]))

    evaluated = []

    def fake_evaluate(model, dataset, label_names):
        evaluated.append(dataset)
        return {"accuracy": 0.5, "macro_f1": 0.5, "auroc": 0.9, "per_class_recall": {"a": 0.5}}

    monkeypatch.setattr(evidence, "once", fake_once)
    monkeypatch.setattr("federated_factory.classifier.evaluate_classifier", fake_evaluate)
    args = args_for(tmp_path)
    data = FakeData()
    evidence.run_method(args, data, "silos", "fedcvae", [0, 1])

    # two candidates scored at seed 0, the chosen one reused for seed 0, rerun only for seed 1
    assert calls == [(16, 0), (32, 0), (32, 1)]
    assert evaluated == ["TEST", "TEST"] and data.test_reads == 2  # test only for the chosen setting, once a seed
    seed0 = json.loads((tmp_path / "blood-cells-32/silos/fedcvae/seed0.json").read_text())
    assert seed0["chosen"] == "z32-b1" and seed0["reused_from"] == "select-z32-b1"
    assert "test" not in json.loads((tmp_path / "blood-cells-32/silos/fedcvae/select-z16-b1.json").read_text())
    assert {"platform", "cpu_count", "cpu_capability", "native_bf16", "load_average"} <= set(seed0["machine"])

    calls.clear()
    evidence.run_method(args, data, "silos", "fedcvae", [0, 1, 2])  # resume: only seed 2 is new
    assert calls == [(32, 2)]

    table = evidence.render_table(tmp_path)
    assert "50.00 ± 0.00 (3 seeds)" in table
    assert "BloodMNIST" in table


def test_import_records_a_federated_factory_row(evidence, tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"federated_factory": {"accuracy": 0.9, "auroc": 0.99, "macro_f1": 0.88,
                                                         "per_class_recall": {"a": 1.0, "b": 0.6},
                                                         "communication": {"upload": 5}},
                                   "timings": {"clients_seconds": 10.0}}))
    evidence.main(["--out", str(tmp_path / "out"), "import", "--dataset", "derma-28", "--partition", "silos",
                   "--seed", "0", "--method", "ff-server", "--results", str(results)])
    record = json.loads((tmp_path / "out/derma-28/silos/ff-server/seed0.json").read_text())
    assert record["test"]["balanced_accuracy"] == pytest.approx(0.8)
    table = (tmp_path / "out/TABLE.md").read_text()
    assert "80.00 (1 seed) / 99.00 (1 seed) / 90.00 (1 seed)" in table  # balanced accuracy / AUROC / accuracy
    assert (tmp_path / "out/TABLE.png").stat().st_size > 0  # the table, plotted


def test_derma_rows_are_compared_on_balanced_accuracy_not_on_accuracy(evidence):
    # nevi are 67% of derma: a FedAvg that calls every lesion a nevus has the higher accuracy and the
    # worse classifier; the row's verdict must be taken on balanced accuracy, and name it
    def record(accuracy, balanced):
        return {"seed": 0, "test": {"accuracy": accuracy, "balanced_accuracy": balanced}}

    methods = {"ff-server": [record(0.57, 0.56)], "fedavg": [record(0.67, 1 / 7)]}
    metric = evidence.DATASETS["derma-28"]["metrics"][0]
    sentence = evidence.comparison(methods, metric)
    assert metric == "balanced_accuracy"
    assert "no FedAvg-family method beats FederatedFactory" in sentence and "balanced accuracy" in sentence
    # on accuracy the same records would read the other way, which is why the metric is the row's, not global
    # and the server mode's ratio to centralized is given on every metric of the row, not only the headline one
    methods["ff-server"][0]["test"]["auroc"], methods["centralized"] = 0.87, [record(0.78, 0.51)]
    methods["centralized"][0]["test"]["auroc"] = 0.93
    sentence = evidence.comparison(methods, *evidence.headline_and_others("derma-28"))
    assert ("server mode 1.098 × centralized (meets 0.95; 1 server seed); on macro-AUROC 0.935 × (below 0.95)"
            in sentence)
    assert "**FedAvg beats FederatedFactory** by 10.00 points of accuracy" in evidence.comparison(methods, "accuracy")


def test_import_records_the_factories_training_time_which_a_resumed_run_does_not_time(evidence, tmp_path):
    results = tmp_path / "results.json"  # a --resume run: its clients stage only republished the factories
    clients = [{"name": "hospital-00", "train_seconds": 3000.0, "train_images_per_second": 25.6},
               {"name": "hospital-01", "train_seconds": 4200.0, "train_images_per_second": 18.3}]
    results.write_text(json.dumps({"federated_factory": {"accuracy": 0.9}, "clients": clients,
                                   "timings": {"clients_seconds": 19.0}}))
    evidence.main(["--out", str(tmp_path / "out"), "import", "--dataset", "blood-cells-32", "--partition", "silos",
                   "--seed", "0", "--method", "ff-server", "--results", str(results)])
    timings = json.loads((tmp_path / "out/blood-cells-32/silos/ff-server/seed0.json").read_text())["timings"]
    assert timings["factory_train_seconds_max"] == 4200.0 and timings["factory_images_per_second_min"] == 18.3
    table = (tmp_path / "out/TABLE.md").read_text()
    assert "the longest factory training 70 min on one core (budget 60; 1 seed recorded)" in table
    assert "factory_train_seconds_max 4200 s" in table and "factory_images_per_second_min 18," in table


def test_import_of_the_network_mode_reads_the_network_row_of_a_run_with_both_modes(evidence, tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"federated_factory": {"accuracy": 0.9, "per_class_recall": {"a": 0.9}},
                                   "network": {"accuracy": 0.7, "per_class_recall": {"a": 0.7}},
                                   "timings": {"network_seconds": 3.0}}))
    for method in ("ff-server", "ff-network"):
        evidence.main(["--out", str(tmp_path / "out"), "import", "--dataset", "blood-cells-32", "--partition",
                       "silos", "--seed", "0", "--method", method, "--results", str(results)])
    rows = {m: json.loads((tmp_path / f"out/blood-cells-32/silos/{m}/seed0.json").read_text())
            for m in ("ff-server", "ff-network")}
    assert (rows["ff-server"]["test"]["accuracy"], rows["ff-network"]["test"]["accuracy"]) == (0.9, 0.7)
    evidence.main(["--out", str(tmp_path / "out"), "import", "--dataset", "blood-cells-32", "--partition", "silos",
                   "--seed", "0", "--method", "ff-network", "--results", str(results)])  # imported again
    assert [p.name.startswith("seed0-") for p in (tmp_path / "out/blood-cells-32/silos/ff-network/superseded").iterdir()] == [True]
    validation_only = tmp_path / "reaggregate.json"  # a reaggregate.py candidate scored on validation
    validation_only.write_text(json.dumps({"evaluation_split": "validation", "accuracy": 0.95}))
    with pytest.raises(SystemExit, match="not on test"):
        evidence.main(["--out", str(tmp_path / "out"), "import", "--dataset", "blood-cells-32", "--partition",
                       "silos", "--seed", "0", "--method", "ff-server", "--results", str(validation_only)])
    scored_on_validation = tmp_path / "candidate-run.json"  # a federation.py run with --evaluation-split validation
    scored_on_validation.write_text(json.dumps({"federated_factory": {"accuracy": 0.9},
                                                "config": {"evaluation_split": "validation"}}))
    with pytest.raises(SystemExit, match="'validation', not on test"):
        evidence.main(["--out", str(tmp_path / "out"), "import", "--dataset", "blood-cells-32", "--partition",
                       "silos", "--seed", "0", "--method", "ff-server", "--results", str(scored_on_validation)])
    results.write_text(json.dumps({"federated_factory": {"accuracy": 0.9}}))  # a server-only run
    with pytest.raises(SystemExit, match="no FederatedFactory network mode accuracy"):
        evidence.main(["--out", str(tmp_path / "out"), "import", "--dataset", "blood-cells-32", "--partition",
                       "silos", "--seed", "1", "--method", "ff-network", "--results", str(results)])


def test_import_with_a_sweep_takes_the_validation_chosen_setting_s_test_number(evidence, tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"federated_factory": {"accuracy": 0.9, "communication": {"total_bytes": 7}},
                                   "timings": {"clients_seconds": 10.0}}))
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"selection_split": "validation", "metric": "accuracy", "chosen": "e20",
                                 "results": [{"name": "run-e30", "validation": {"accuracy": 0.91}},
                                             {"name": "e20", "validation": {"accuracy": 0.93}}],
                                 "final_test": {"setting": "e20", "accuracy": 0.8, "per_class_recall": {"a": 0.8}}}))
    command = ["--out", str(tmp_path / "out"), "import", "--dataset", "blood-cells-32", "--partition", "silos",
               "--seed", "0", "--results", str(results), "--sweep", str(sweep)]
    evidence.main([*command, "--method", "ff-server"])
    record = json.loads((tmp_path / "out/blood-cells-32/silos/ff-server/seed0.json").read_text())
    assert record["test"]["accuracy"] == 0.8  # the chosen setting's one test read, not the run's 0.9
    assert record["selection"]["chosen"] == "e20" and record["selection"]["candidates"] == {"run-e30": 0.91,
                                                                                            "e20": 0.93}
    assert record["bytes"] == {"total_bytes": 7} and record["timings"]["clients_seconds"] == 10.0
    with pytest.raises(SystemExit, match="use it with --method ff-server"):
        evidence.main([*command, "--method", "ff-network"])
    sweep.write_text(json.dumps({"selection_split": "validation", "metric": "accuracy", "chosen": "e20",
                                 "results": []}))  # chosen, but test never read: nothing to report
    with pytest.raises(SystemExit, match="read once on test"):
        evidence.main([*command, "--method", "ff-server"])


def test_import_of_a_reaggregation_records_the_bytes_exchanged_not_the_synthesis_counters(evidence, tmp_path):
    stats = {"images_generated": 10000, "chunks_generated": 100}  # what synthesis did, not what was exchanged
    candidate = {"evaluation_split": "validation", "accuracy": 0.49, "synthesis_stats": stats,
                 "communication": {"per_client_upload_bytes": {"hospital-00": 4272705}, "total_bytes": 8545410}}
    results = tmp_path / "reaggregate.json"
    results.write_text(json.dumps(candidate))
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"selection_split": "validation", "metric": "accuracy", "chosen": "s2000",
                                 "results": [{"name": "s2000", "validation": {"accuracy": 0.49}}],
                                 "final_test": {"setting": "s2000", "accuracy": 0.48, "per_class_recall": {"a": 0.48}}}))
    command = ["--out", str(tmp_path / "out"), "import", "--dataset", "cifar10-32", "--partition", "silos",
               "--method", "ff-server", "--results", str(results), "--sweep", str(sweep)]
    evidence.main([*command, "--seed", "0"])
    record = json.loads((tmp_path / "out/cifar10-32/silos/ff-server/seed0.json").read_text())
    assert record["bytes"] == candidate["communication"] and record["synthesis"] == stats
    del candidate["communication"]  # an older reaggregate.py JSON: the bytes are unknown, and the record says so
    results.write_text(json.dumps(candidate))
    evidence.main([*command, "--seed", "1"])
    record = json.loads((tmp_path / "out/cifar10-32/silos/ff-server/seed1.json").read_text())
    assert record["bytes"] is None and record["synthesis"] == stats


def test_import_at_another_seed_reuses_the_choice_made_on_validation_at_seed_0(evidence, tmp_path):
    out = tmp_path / "out"
    sweep = tmp_path / "sweep.json"  # seed 0: chosen on validation, test read once
    sweep.write_text(json.dumps({"selection_split": "validation", "metric": "accuracy", "chosen": "s1000-e30",
                                 "results": [{"name": "s500-e30", "validation": {"accuracy": 0.90}},
                                             {"name": "s1000-e30", "validation": {"accuracy": 0.92}}],
                                 "final_test": {"setting": "s1000-e30", "accuracy": 0.92,
                                                "per_class_recall": {"a": 0.92}}}))
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"federated_factory": {"accuracy": 0.9, "per_class_recall": {"a": 0.9}}}))
    common = ["--out", str(out), "import", "--dataset", "blood-cells-32", "--partition", "silos", "--method",
              "ff-server"]
    evidence.main([*common, "--seed", "0", "--results", str(results), "--sweep", str(sweep)])
    seed0 = json.loads((out / "blood-cells-32/silos/ff-server/seed0.json").read_text())
    assert seed0["run_settings"] is None  # the run's settings are not the sweep's chosen one (s1000-e30)
    seed1 = tmp_path / "seed1.json"  # a run at seed 1 with the chosen setting
    seed1.write_text(json.dumps({"federated_factory": {"accuracy": 0.93, "per_class_recall": {"a": 0.93}},
                                 "config": {"samples_per_class": 1000, "classifier_epochs": 30, "seed": 1},
                                 "machine": {"platform": "Linux-run-host", "cpu_count": 2,
                                             "cpu_capability": "AVX512"}}))
    command = [*common, "--seed", "1", "--results", str(seed1)]
    evidence.main([*command, "--reuse-choice", "0"])
    record = json.loads((out / "blood-cells-32/silos/ff-server/seed1.json").read_text())
    assert record["test"]["accuracy"] == 0.93
    assert record["selection"]["chosen"] == "s1000-e30" and record["selection"]["reused_from_seed"] == 0
    assert record["run_settings"]["samples_per_class"] == 1000 and record["run_settings"]["seed"] == 1
    assert "92.50 ± 0.71 (2 seeds)" in (out / "TABLE.md").read_text()
    # the table names the machine the run measured on, not the one that imported it
    assert "seed 1: test accuracy 93.00%" in (out / "TABLE.md").read_text()
    assert "machine Linux-run-host, 2 cores (AVX512)" in (out / "TABLE.md").read_text()
    with pytest.raises(SystemExit, match="seed2.json records no choice"):
        evidence.main([*command, "--reuse-choice", "2"])
    with pytest.raises(SystemExit, match="--sweep .* or --reuse-choice"):
        evidence.main([*command, "--reuse-choice", "0", "--sweep", str(sweep)])


def test_the_table_says_where_the_fedavg_family_beats_federated_factory(evidence):
    def records(*values):
        return [{"test": {"accuracy": v}} for v in values]

    behind = evidence.comparison({"ff-server": records(0.92, 0.94), "ff-network": records(0.90),
                                  "fedavg": records(0.20), "fedprox": records(0.27), "centralized": records(0.98)},
                                 "accuracy")
    assert ("no FedAvg-family method beats FederatedFactory (the best, FedProx, is 66.00 points below, on accuracy)"
            in behind)
    assert "server mode 0.949 × centralized (below 0.95; 2 server seeds)" in behind
    ahead = evidence.comparison({"ff-server": records(0.80), "scaffold": records(0.85)}, "accuracy")
    assert ahead.startswith("**SCAFFOLD beats FederatedFactory** by 5.00 points")
    assert evidence.comparison({"fedavg": records(0.5)}, "accuracy") == ""


def test_baseline_methods_report_validation_metrics_bytes_and_a_model(evidence):
    from federated_factory.classifier import evaluate_classifier
    from federated_factory.partition import partition_dataset
    from test_fedcvae import digits

    class TinyData:
        name = "tiny"
        spec = {"hflip": False, "vflip": False}

        def __init__(self):
            self.train, self.validation = digits(0, 12), digits(100, 5)
            self.partition = partition_dataset(self.train, "iid", num_clients=2, seed=0)

        def clients(self):
            return [self.partition.client_dataset(self.train, i) for i in range(2)]

    data = TinyData()
    args = argparse.Namespace(classifier_epochs=1, fl_rounds=1, fl_local_epochs=1, fedprox_mu=0.01)
    for method, setting in (("fedavg", {"lr": 3e-3}), ("scaffold", {"lr": 0.05}), ("centralized", {}),
                            ("centralized", {"class_weighting": "balanced", "selection_metric": "balanced_accuracy"})):
        record, (model, label_names) = evidence.once(args, data, method, setting, 0)
        assert label_names == data.train.features["label"].names
        again = evidence.scores(evaluate_classifier(model, data.validation, label_names))
        assert record["validation"]["accuracy"] == pytest.approx(again["accuracy"])  # scored on validation
        assert "test" not in record and record["bytes"] is not None


def test_centralized_chooses_its_class_weighting_and_epoch_rule_on_validation_like_any_setting(evidence):
    args = argparse.Namespace(centralized_weighting=["none", "balanced"],
                              centralized_selection=["accuracy", "balanced_accuracy"])
    by_balanced = {"selection_metric": "balanced_accuracy"}
    assert evidence.candidates(args, "centralized") == {  # the accuracy-picked ones keep their earlier names
        "none": {"class_weighting": "none", "selection_metric": "accuracy"},
        "none-epoch-by-balanced_accuracy": {"class_weighting": "none", **by_balanced},
        "balanced": {"class_weighting": "balanced", "selection_metric": "accuracy"},
        "balanced-epoch-by-balanced_accuracy": {"class_weighting": "balanced", **by_balanced}}
    args = argparse.Namespace(centralized_weighting=["none"], centralized_selection=["accuracy"])
    assert evidence.candidates(args, "centralized") == {"none": {"class_weighting": "none",
                                                                 "selection_metric": "accuracy"}}


def test_centralized_gets_the_same_learning_rate_grid_as_the_fedavg_family(evidence):
    # the default rate keeps the names of the records scored before the grid existed; the others say their rate
    args = argparse.Namespace(centralized_weighting=["balanced"], centralized_selection=["accuracy"],
                              centralized_lrs=[3e-3, 1e-3, 1e-2])
    grid = evidence.candidates(args, "centralized")
    assert list(grid) == ["balanced", "balanced-lr0.001", "balanced-lr0.01"]
    assert grid["balanced"] == {"class_weighting": "balanced", "selection_metric": "accuracy"}
    assert grid["balanced-lr0.01"] == {"class_weighting": "balanced", "selection_metric": "accuracy", "lr": 1e-2}
    data = argparse.Namespace(spec={"hflip": True, "vflip": False})
    config = evidence.classifier_config(argparse.Namespace(classifier_epochs=3), data, 0, **grid["balanced-lr0.001"])
    assert config.lr == 1e-3 and config.class_weighting == "balanced"


def test_generator_samples_shows_real_and_synthetic_images_class_by_class(tmp_path):
    import datasets
    from PIL import Image

    from test_fedcvae import NAMES, SIZE, digits

    spec = importlib.util.spec_from_file_location("generator_samples", ROOT / "benchmarks" / "generator_samples.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    datasets.DatasetDict({"train": digits(0, 5)}).save_to_disk(str(tmp_path / "real"))
    digits(40, 3).save_to_disk(str(tmp_path / "synthetic"))
    common = ["--data", str(tmp_path / "real"), "--image-size", str(SIZE), "--channels", "1", "--per-class", "3"]
    assert script.main([*common, "--synthetic", f"gen={tmp_path / 'synthetic'}", "--out", str(tmp_path / "a.png")]) == 0
    picked = script.first_of_each_class(digits(40, 3), NAMES, 3, 1)
    assert sorted(picked) == NAMES and all(images.shape == (3, SIZE, SIZE, 1) for images in picked.values())
    assert Image.open(tmp_path / "a.png").size[1] > Image.open(tmp_path / "a.png").size[0]  # 2 rows per class
    digits(40, 3).filter(lambda row: row["label"] != 2).save_to_disk(str(tmp_path / "partial"))
    with pytest.raises(SystemExit, match="class '2' is missing"):
        script.main([*common, "--synthetic", f"gen={tmp_path / 'partial'}", "--out", str(tmp_path / "b.png")])


def test_a_candidate_scored_later_that_wins_replaces_the_finished_seeds(evidence, tmp_path, monkeypatch):
    validation_accuracy = {16: 0.6, 32: 0.8}
    calls = []

    def fake_once(args, data, method, setting, seed):
        calls.append((setting["latent_dim"], seed))
        return ({"validation": {"accuracy": validation_accuracy[setting["latent_dim"]]}, "timings": {}},
                ("model", ["a"]))

    monkeypatch.setattr(evidence, "once", fake_once)
    monkeypatch.setattr("federated_factory.classifier.evaluate_classifier",
                        lambda model, dataset, names: {"accuracy": 0.5, "macro_f1": 0.5, "auroc": 0.9,
                                                       "per_class_recall": {"a": 0.5}})
    args, data = args_for(tmp_path), FakeData()
    row = tmp_path / "blood-cells-32/silos/fedcvae"
    args.cvae_grid = ["z16-b1"]
    evidence.run_method(args, data, "silos", "fedcvae", [0, 1])
    assert json.loads((row / "seed1.json").read_text())["chosen"] == "z16-b1"

    args.cvae_grid = ["z32-b1"]  # a bigger grid, scored later, wins on validation
    calls.clear()
    evidence.run_method(args, data, "silos", "fedcvae", [0, 1])
    assert calls == [(32, 0), (32, 1)]  # scored, then seed 1 measured again (seed 0 reuses the candidate)
    for seed in (0, 1):
        record = json.loads((row / f"seed{seed}.json").read_text())
        assert record["chosen"] == "z32-b1" and record["candidates"] == ["z16-b1", "z32-b1"]
        assert json.loads((row / "superseded" / f"seed{seed}-z16-b1.json").read_text())["chosen"] == "z16-b1"
    assert data.test_reads == 4

    args.cvae_grid = ["z16-b1"]  # part of the grid again: the choice made on both candidates stands
    calls.clear()
    evidence.run_method(args, data, "silos", "fedcvae", [0, 1])
    assert calls == [] and data.test_reads == 4
    assert "(2 seeds)" in evidence.render_table(tmp_path)  # superseded records are not in the table


def test_fedcvae_candidates_name_images_per_class_and_epochs(evidence):
    # FedCVAE-Ens gets the images-per-class and epoch candidates FederatedFactory's server mode was tuned on
    assert evidence.cvae_candidate("z32-b1") == evidence.CVAE_GRID["z32-b1"]
    assert evidence.cvae_candidate("z32-w128-b1-n1000-e15") == {**evidence.CVAE_GRID["z32-w128-b1"],
                                                                "samples_per_class": 1000, "classifier_epochs": 15}
    assert evidence.cvae_candidate("z16-b0.25-n2000") == {**evidence.CVAE_GRID["z16-b0.25"], "samples_per_class": 2000}
    assert evidence.cvae_candidate("z32-b1-n1000-lr0.01") == {**evidence.CVAE_GRID["z32-b1"], "samples_per_class": 1000,
                                                              "classifier_lr": 0.01}  # and the learning-rate grid
    for bad, says in [("z64-b1", "unknown --cvae-grid entry 'z64-b1'"), ("z32-b1-n0", "once, > 0"),
                      ("z32-b1-n500-n1000", "once, > 0"), ("z32-b1-x3", "unknown --cvae-grid entry"),
                      ("z32-b1-lrfast", "once, > 0"), ("z32-b1-lr0", "once, > 0")]:
        with pytest.raises(SystemExit, match=says):
            evidence.cvae_candidate(bad)


def test_fedcvae_candidates_differing_in_images_per_class_reuse_the_decoders(evidence, tmp_path):
    from test_fedcvae import digits

    from federated_factory.partition import partition_dataset

    class TinyData:
        name, partition_name = "digits", "silos"
        spec = {"channels": 1, "hflip": False, "vflip": False}
        train = digits(0, 12)
        validation = digits(40, 3)
        partition = partition_dataset(train, "silos")

    args = argparse.Namespace(cvae_steps=15, cvae_batch_size=16, samples_per_class=4, classifier_epochs=1,
                              work=str(tmp_path / "work"))
    first, _ = evidence.fedcvae_once(args, TinyData, evidence.cvae_candidate("z16-b1"), seed=0)
    second, _ = evidence.fedcvae_once(args, TinyData, evidence.cvae_candidate("z16-b1-n6-e2-lr0.01"), seed=0)
    assert first["decoders_reused"] is None and second["decoders_reused"]  # trained once, reused once
    assert (first["samples_per_class"], first["classifier_epochs"]) == (4, 1)
    assert (second["samples_per_class"], second["classifier_epochs"]) == (6, 2)
    trained = second["classifier"]
    assert trained["num_train"] + trained["num_val"] == 6 * 4 and trained["config"]["epochs"] == 2
    assert first["classifier_lr"] == 3e-3 and second["classifier_lr"] == trained["config"]["lr"] == 0.01
    assert second["clients"] == first["clients"]
    assert second["bytes"] == first["bytes"]  # the same uploads
    other_seed, _ = evidence.fedcvae_once(args, TinyData, evidence.cvae_candidate("z16-b1-n6"), seed=1)
    assert other_seed["decoders_reused"] is None  # another seed trains its own decoders


def test_a_row_without_centralized_shows_the_dataset_s_measured_one_marked_and_listed_once(evidence, tmp_path):
    machine = {"platform": "test", "cpu_count": 2}

    def save(partition, method, seed, accuracy):
        path = tmp_path / "blood-cells-32" / partition / method / f"seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"seed": seed, "test": {"accuracy": accuracy}, "machine": machine}))

    save("silos", "centralized", 0, 0.98)
    save("silos", "centralized", 1, 0.99)
    save("dirichlet-0.5", "ff-server", 0, 0.89)
    save("dirichlet-0.5", "fedavg", 0, 0.97)
    table = evidence.render_table(tmp_path)
    dirichlet = next(line for line in table.splitlines() if line.startswith("| blood-cells-32 | dirichlet-0.5 |"))
    assert dirichlet.rstrip(" |").endswith("98.50 ± 0.71 (2 seeds) [the silos row's: the same pooled rows]")
    assert "blood-cells-32 / dirichlet-0.5: **FedAvg beats FederatedFactory** by 8.00 points" in table
    assert "server mode 0.904 × centralized" in table
    details = [line for line in table.splitlines() if "/ centralized / seed" in line]
    assert len(details) == 2 and all(line.startswith("- blood-cells-32 / silos /") for line in details)
