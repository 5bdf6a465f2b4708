"""The main job end to end at the `tiny` preset: every report artefact exists, every number is the run's own.

The demo starts its own Hub endpoint, and huggingface_hub fixes its endpoint per process, so the demo
runs in a subprocess, through the console script's code path (`python -m federated_factory.cli demo`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest


TINY_DEMO = ["--preset", "tiny", "--samples-per-class", "12", "--num-inference-steps", "3", "--classifier-epochs", "1",
             "--fl-rounds", "2", "--scaffold", "--no-progress"]


def _run_tiny_demo(out):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_ENDPOINT", "HF_TOKEN")}
    cmd = [sys.executable, "-m", "federated_factory.cli", "demo", *TINY_DEMO, "--output-dir", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, json.loads((out / "results.json").read_text()), proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    return _run_tiny_demo(tmp_path_factory.mktemp("demo") / "demo_output")


@pytest.fixture(scope="module")
def second_demo_run(tmp_path_factory):
    return _run_tiny_demo(tmp_path_factory.mktemp("demo-again") / "demo_output")


def test_demo_writes_every_report_artefact(demo_run):
    out, results, log = demo_run
    for name in ("report.md", "results.json", "methods.png", "partition_heatmap.png", "real_vs_synthetic.png",
                 "unlearning_recall.png", "manifest.yaml", "aggregate/confusion_matrix.png",
                 "aggregate/synthetic_samples.png", "aggregate/results.json", "unlearned/unlearning_certificate.json"):
        assert (out / name).exists(), name
    report = (out / "report.md").read_text()
    for picture in ("methods.png", "partition_heatmap.png", "aggregate/confusion_matrix.png", "unlearning_recall.png"):
        assert f"]({picture})" in report
    for method in ("FederatedFactory (server)", "FederatedFactory (network, product of experts)", "FedAvg", "FedProx",
                   "SCAFFOLD", "Centralized"):
        assert f"| {method} |" in report
    assert "](network/federation/confusion_matrix.png)" in report
    for client in results["clients"]:  # the per-expert table, next to the product's row
        assert f"| {client['name']} | {', '.join(client['classes'])} |" in report
    assert "| **product of experts** |" in report
    assert "vs central" in log  # the final summary table on the terminal


def test_demo_numbers_are_derived_from_the_run(demo_run):
    out, results, _ = demo_run
    n_test = results["dataset"]["test"]["num_rows"]
    for key in ("federated_factory", "network", "fedavg", "fedprox", "scaffold", "centralized"):
        cm = np.asarray(results[key]["confusion_matrix"])
        assert cm.sum() == n_test
        assert results[key]["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    # The partition table is the real one: silos, every client holds all training images of one class.
    counts = np.asarray(results["partition"]["counts"])
    assert counts.sum() == results["dataset"]["train"]["num_rows"]
    assert ((counts > 0).sum(axis=1) == 1).all()
    # Communication: FederatedFactory uploads each pipeline once; the aggregator downloads each once.
    ff = results["federated_factory"]["communication"]
    for client in results["clients"]:
        pipeline_dir = out / "clients" / client["name"] / "pipeline"
        size = sum(p.stat().st_size for p in pipeline_dir.rglob("*") if p.is_file())
        assert ff["per_client_upload_bytes"][client["name"]] == size
    assert ff["aggregator_download_bytes"] == sum(ff["per_client_upload_bytes"].values())
    fedavg = results["fedavg"]["communication"]
    assert fedavg["total_bytes"] == 2 * results["config"]["fl_rounds"] * len(results["clients"]) * fedavg["model_bytes"]
    scaffold = results["scaffold"]["communication"]  # model + control variate (one float32 per parameter)
    assert fedavg["model_bytes"] < scaffold["model_bytes"] < 2 * fedavg["model_bytes"]
    assert results["scaffold"]["method"] == "scaffold" and results["scaffold"]["local_optimizer"] == "sgd"
    # The manifest pins the factories that were published, and the unlearning removed one of them.
    pinned = {f["repo"]: f["revision"] for f in results["manifest"]["factories"]}
    assert pinned == {c["repo"]: c["revision"] for c in results["clients"]}
    unlearning = results["unlearning"]
    assert unlearning["removed"]["repo"] == results["clients"][-1]["repo"]
    assert unlearning["examples_from_removed"] == 0
    assert unlearning["from_scratch"]["identical"] is True
    # Network mode: one expert per hospital, each holding its own silo's class and synthesizing the others from
    # the aggregator's cache (nothing new generated); every expert and the product evaluated on the test set.
    network = results["network"]
    assert [row["hospital"] for row in network["experts"]] == [c["name"] for c in results["clients"]]
    label_space = results["partition"]["class_names"]
    for row, client in zip(network["experts"], results["clients"]):
        assert row["own_classes"] == client["classes"]
        assert sorted(row["own_classes"] + row["synthetic_classes"]) == sorted(label_space)
        assert 0.0 <= row["own_validation_accuracy"] <= 1.0 and 0.0 <= row["test_accuracy"] <= 1.0
        assert row["expert"].startswith(f"{client['name']}/expert@")
    assert network["chunks_generated"] == 0
    assert network["n"] == n_test and network["expert_epochs"] == 1
    assert network["federation_model"].startswith("aggregator/federation-model@")
    timings = results["timings"]
    assert all(v > 0 for v in timings.values())
    assert timings["total_seconds"] >= timings["clients_seconds"] + timings["aggregation_seconds"]


def test_report_command_re_renders_the_report_from_results_json(demo_run):
    out, results, _ = demo_run
    (out / "report.md").unlink()
    (out / "methods.png").unlink()
    proc = subprocess.run([sys.executable, "-m", "federated_factory.cli", "report", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (out / "report.md").read_text()
    assert (out / "methods.png").exists()
    assert f"{results['federated_factory']['accuracy']:.2%}" in report
    assert f"{results['fedavg']['accuracy']:.2%}" in report


def test_demo_flags_are_generated_from_the_config_dataclass():
    """HfArgumentParser writes the flags from DemoConfig: defaults match, dashes and underscores both work,
    0 / 'none' mean 'native' / 'skip', and default-on switches get a --no- form."""
    from federated_factory.demo import DemoConfig, config_from_args, demo_argument_parser

    parser = demo_argument_parser()
    assert config_from_args(parser.parse_args([])) == DemoConfig()
    config = config_from_args(parser.parse_args(
        ["--samples-per-class", "7", "--fl_rounds", "3", "--image-size", "0", "--channels", "0", "--unlearn", "none",
         "--no-progress", "--no-verify-unlearning", "--scaffold", "--flip", "hv"]))
    assert (config.samples_per_class, config.fl_rounds) == (7, 3)
    assert config.image_size is None and config.channels is None and config.unlearn is None
    assert config.progress is False and config.verify_unlearning is False and config.scaffold is True
    assert config.flip == "hv"
    assert DemoConfig().mode == "both"
    assert config_from_args(parser.parse_args(["--mode", "network", "--expert-epochs", "0"])).expert_epochs is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--flip", "diagonal"])
    from federated_factory.errors import FederatedFactoryError

    with pytest.raises(FederatedFactoryError, match="workers"):
        DemoConfig(workers=0)
    with pytest.raises(FederatedFactoryError, match="mode"):
        DemoConfig(mode="peer-to-peer")


def test_baselines_option_names_the_comparisons_to_run():
    """--baselines picks the real-data comparisons; --scaffold adds SCAFFOLD; a wrong name is refused by name."""
    from federated_factory.demo import DemoConfig, config_from_args, demo_argument_parser
    from federated_factory.errors import DemoError

    parser = demo_argument_parser()
    assert DemoConfig().baseline_names() == ["centralized", "fedavg", "fedprox"]
    assert config_from_args(parser.parse_args(["--baselines", "none"])).baseline_names() == []
    chosen = config_from_args(parser.parse_args(["--baselines", "fedprox, centralized", "--scaffold"]))
    assert chosen.baseline_names() == ["centralized", "fedprox", "scaffold"] and chosen.scaffold is True
    assert DemoConfig(baselines="scaffold").scaffold is True
    with pytest.raises(DemoError, match="'fedsgd'"):
        DemoConfig(baselines="fedavg,fedsgd")


def test_run_baselines_runs_only_the_named_baselines(tmp_path):
    from federated_factory.classifier import ClassifierConfig
    from federated_factory.demo import DemoConfig, prepare_data, run_baselines

    config = DemoConfig(baselines="fedavg", fl_rounds=1, progress=False)
    data = prepare_data(config, tmp_path)
    small = ClassifierConfig(epochs=1)
    stage = run_baselines(config, data, small)
    assert stage.centralized is None and stage.fedprox is None and stage.scaffold is None
    assert 0.0 <= stage.fedavg["accuracy"] <= 1.0 and "model" not in stage.fedavg
    assert list(stage.seconds) == ["fedavg_seconds"]


def test_evaluation_split_chooses_the_held_out_split_every_method_is_scored_on(tmp_path):
    """--evaluation-split validation scores a candidate setting without reading test: the held-out split of
    the data stage and of the manifest is the one named; a split the dataset lacks is refused by name."""
    from types import SimpleNamespace

    from PIL import Image

    from federated_factory.demo import DemoConfig, build_manifest, prepare_data
    from federated_factory.errors import DemoError

    sizes = {"train": 6, "validation": 3, "test": 2}  # images per class
    for split, n in sizes.items():
        for label in ("a", "b"):
            (tmp_path / "data" / split / label).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (8, 8), 40 * i).save(tmp_path / "data" / split / label / f"{i}.png")
    config = DemoConfig(dataset=str(tmp_path / "data"), evaluation_split="validation", progress=False)
    data = prepare_data(config, tmp_path / "out")
    assert data.test.num_rows == 2 * sizes["validation"] and data.train.num_rows == 2 * sizes["train"]
    fed = SimpleNamespace(aggregator_user="aggregator")
    factories = SimpleNamespace(clients=[SimpleNamespace(repo=f"h{i}/factory", revision="0" * 40) for i in range(2)])
    manifest, _ = build_manifest(config, tmp_path / "out", fed, data, factories)
    assert manifest.evaluation["split"] == "validation"
    assert prepare_data(DemoConfig(dataset=str(tmp_path / "data")), tmp_path / "out2").test.num_rows == 4
    with pytest.raises(DemoError, match="no 'dev' split"):
        prepare_data(DemoConfig(dataset=str(tmp_path / "data"), evaluation_split="dev"), tmp_path / "out3")


def test_report_of_a_run_without_baselines_says_what_was_left_out(demo_run, tmp_path):
    """A results.json without centralized / FedAvg / FedProx (``--baselines none``) renders: their rows are
    absent, the vs-centralized column is empty, and the report names what was not run."""
    import shutil

    from federated_factory.demo import DemoResults
    from federated_factory.report import render_report

    out, results, _ = demo_run
    stripped = {k: v for k, v in results.items() if k not in ("centralized", "fedavg", "fedprox", "scaffold")}
    stripped["config"] = {**results["config"], "baselines": "none", "scaffold": False}
    stripped["timings"] = {k: v for k, v in results["timings"].items()
                           if k.split("_")[0] not in ("centralized", "fedavg", "fedprox", "scaffold")}
    (tmp_path / "results.json").write_text(json.dumps(stripped))
    for picture in ("partition_heatmap.png",):
        shutil.copy(out / picture, tmp_path / picture)
    assert list(DemoResults.load(tmp_path).methods()) == ["federated_factory", "network"]
    report = render_report(tmp_path).read_text()
    assert "| FedAvg |" not in report and "| Centralized |" not in report
    assert f"| FederatedFactory (server) | {results['federated_factory']['accuracy']:.2%} |" in report
    assert "— (not run)" in report
    assert "Not run here (`--baselines none`): centralized, FedAvg, FedProx" in report


def test_results_are_a_dataclass_whose_dict_is_results_json(demo_run):
    from federated_factory.demo import DemoResults

    out, results, _ = demo_run
    typed = DemoResults.load(out)
    assert typed.to_dict() == results  # results.json itself is written with sorted keys
    assert list(typed.methods()) == ["federated_factory", "network", "fedavg", "fedprox", "scaffold", "centralized"]
    assert typed.fedprox["mu"] == results["config"]["fedprox_mu"]


def test_the_same_demo_twice_gives_the_same_data_models_and_numbers(demo_run, second_demo_run):
    """Two runs of the same command, each with its own endpoint (so every commit id differs): the factories,
    the synthetic dataset (every row), the classifier, every expert, the unlearned classifier and every
    reported number are the same. Only what names a commit (``source_revision``, repo@sha) and wall times differ."""
    from federated_factory.reproduce import compare_runs

    (out_a, results_a, _), (out_b, results_b, _) = demo_run, second_demo_run
    revisions = [{c["repo"]: c["revision"] for c in r["clients"]} for r in (results_a, results_b)]
    assert revisions[0].keys() == revisions[1].keys()
    assert all(revisions[0][repo] != revisions[1][repo] for repo in revisions[0])  # new commits, new ids

    report = compare_runs(out_a, out_b)
    assert report["differences"] == [] and report["identical"]
    n_clients = len(results_a["clients"])
    assert report["checked"] == {"factories": n_clients, "synthetic_rows": 12 * n_clients,  # --samples-per-class 12
                                 "experts": n_clients, "metrics": 6 * 5, "classifiers": 2}


def test_compare_runs_reports_a_changed_row_and_a_changed_model(demo_run, tmp_path):
    """The comparison is not vacuous: a copy of a run with one synthetic pixel and one expert's weights changed
    is reported with exactly those two differences."""
    import shutil

    from datasets import load_from_disk

    from federated_factory.reproduce import compare_runs

    out, _, _ = demo_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("hub", "cache"))
    synthetic = load_from_disk(str(out / "aggregate" / "synthetic"))

    def nudge(batch, indices):
        batch["image"] = [image.point(lambda v: 255 - v) if i == 3 else image
                          for image, i in zip(batch["image"], indices)]
        return batch

    shutil.rmtree(copy / "aggregate" / "synthetic")
    changed = synthetic.map(nudge, with_indices=True, batched=True, features=synthetic.features)
    changed.save_to_disk(str(copy / "aggregate" / "synthetic"))
    expert = sorted((copy / "network" / "experts").glob("*/results.json"))[0]
    record = json.loads(expert.read_text())
    record["weights_sha256"] = "0" * 64
    expert.write_text(json.dumps(record))

    report = compare_runs(out, copy)
    assert not report["identical"]
    assert report["differences"][0] == "synthetic row 3 differs"
    assert report["differences"][1].startswith("expert weights differ")
    assert len(report["differences"]) == 2


def test_reaggregate_scores_a_candidate_on_the_split_it_is_told(demo_run, tmp_path):
    """benchmarks/reaggregate.py --evaluation-split: a re-aggregation that never reads test (here the train
    split stands in for validation, which mnist-5k lacks), for classifier_sweep.py --trained to choose on."""
    import shutil
    from pathlib import Path

    out, results, _ = demo_run
    run = tmp_path / "run"
    shutil.copytree(out, run)  # the re-aggregation writes beside the run; leave the shared fixture untouched
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "reaggregate.py"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_ENDPOINT", "HF_TOKEN")}
    proc = subprocess.run([sys.executable, str(script), "--run", str(run), "--samples-per-class", "14",
                           "--evaluation-split", "train", "--out", str(tmp_path / "candidate.json")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    candidate = json.loads((tmp_path / "candidate.json").read_text())
    assert candidate["evaluation_split"] == "train"
    assert candidate["num_evaluated"] == results["dataset"]["train"]["num_rows"]
    assert candidate["vs_centralized"] is None  # the run's centralized number is a test number
    assert candidate["synthesis"]["samples_per_class"] == 14
    assert [p.name for p in run.glob("reaggregate-s14-*/classifier")] == ["classifier"]  # for --trained
    # what an import of the re-aggregated number needs: the settings it ran with, the factories' own cost
    assert candidate["config"]["samples_per_class"] == 14 and candidate["config"]["evaluation_split"] == "train"
    assert candidate["config"]["seed"] == results["config"]["seed"]
    assert [c["train_seconds"] for c in candidate["clients"]] == [c["train_seconds"] for c in results["clients"]]
    # the same pinned factories, uploaded and pulled once: the bytes the run exchanged, not the synthesis counters
    assert candidate["communication"] == results["federated_factory"]["communication"]
    assert candidate["communication"]["total_bytes"] > 0
    assert candidate["machine"]["cpu_capability"] and candidate["run_machine"] == results["machine"]
