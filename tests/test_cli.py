"""The console commands a hospital and an aggregator type, run as subprocesses against the test endpoint."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest


def _run(args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HF_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "federated_factory.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_train_client_publishes_one_silo_and_prints_the_manifest_entry(hub):
    token = hub.add_user("cli-hospital")
    proc = _run(["train-client", "--data", "mnist-5k", "--partition", "silos", "--client", "3",
                 "--repo", "cli-hospital/factory", "--preset", "tiny", "--image-size", "16", "--channels", "1",
                 "--endpoint", hub.url, "--token", token])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert token not in proc.stdout + proc.stderr
    match = re.search(r"repo: (cli-hospital/factory)\n\s+revision: ([0-9a-f]{40})", proc.stdout)
    assert match, proc.stdout
    info = hub.api("cli-hospital").model_info("cli-hospital/factory", revision=match.group(2))
    assert info.sha == match.group(2) and info.private
    import json

    from huggingface_hub import hf_hub_download

    metadata = json.loads(open(hf_hub_download("cli-hospital/factory", "factory.json", revision=info.sha,
                                                token=token)).read())
    assert metadata["classes"] == ["3"] and metadata["image_size"] == 16


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--classes", "eleven"], "unknown class 'eleven'"),
        (["--data", "/nonexistent/images"], "/nonexistent/images"),
    ],
)
def test_train_client_bad_input_is_a_clear_error_without_traceback(hub, extra, message):
    args = ["train-client", "--data", "mnist-5k", "--repo", "cli-hospital/never", "--preset", "tiny",
            "--image-size", "16", "--channels", "1", "--endpoint", hub.url, "--token", hub.token("alice")]
    # later options win in argparse, so the bad one is appended
    proc = _run(args + extra)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_aggregate_with_a_broken_manifest_names_the_problem(tmp_path):
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("label_space: [a]\nfactories: []\n")
    proc = _run(["aggregate", "--manifest", str(manifest), "--endpoint", "http://127.0.0.1:9"])
    assert proc.returncode == 2
    assert "no factories" in proc.stderr and "Traceback" not in proc.stderr


def test_any_project_error_is_one_line_and_exit_status_2(tmp_path, capsys):
    """The CLI contract: a FederatedFactoryError (here a folder without results.json, a config the classifier
    rejects through the demo, a bad partition) ends the command with one `error:` line, status 2."""
    from federated_factory.cli import main

    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "results.json" in err

    assert main(["demo", "--unlearn", "someone", "--output-dir", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unlearn" in err
    assert not (tmp_path / "demo").exists()  # rejected before anything was written

    assert main(["data", "summary", "--dataset", "mnist-5k", "--partition", "silos", "--num-clients", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_data_summary_is_a_real_sub_command_and_hub_serve_gets_its_own_options(capsys):
    from federated_factory.cli import build_parser, main

    args = build_parser().parse_args(["data", "summary", "--dataset", "mnist-5k", "--partition", "iid",
                                      "--num-clients", "4"])
    assert (args.dataset, args.partition, args.num_clients) == ("mnist-5k", "iid", 4)
    assert main(["data", "summary", "--dataset", "mnist-5k", "--partition", "iid", "--num-clients", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3 and table[0].split()[-1] == "total"
    with pytest.raises(SystemExit) as exit_info:  # hub serve parses the rest of the line itself
        main(["hub", "serve", "--help"])
    assert exit_info.value.code == 0
    assert "--data-dir" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # other commands refuse options they do not know
        main(["report", "somewhere", "--bogus"])
    assert exit_info.value.code == 2


def test_network_sub_commands_parse_their_options():
    """train-expert, combine and unlearn --mode network are real sub-commands with the network module's options."""
    from federated_factory.cli import build_parser, run_combine, run_train_expert, run_unlearn

    parser = build_parser()
    args = parser.parse_args(["train-expert", "--manifest", "m.yaml", "--data", "mnist-5k", "--partition", "silos",
                              "--client", "2", "--repo", "hospital-c/expert", "--max-real-per-class", "0"])
    assert args.func is run_train_expert
    assert (args.manifest, args.data, args.partition, args.client, args.repo) == (
        "m.yaml", "mnist-5k", "silos", 2, "hospital-c/expert")
    assert args.max_real_per_class == 0 and args.no_publish is False and args.top_up is False
    assert parser.parse_args(["train-expert", "--manifest", "m.yaml", "--data", "d", "--top-up"]).top_up is True
    args = parser.parse_args(["combine", "--manifest", "m.yaml", "--experts", "a/expert@1", "b/expert@2",
                              "--repo", "net/federation-model", "--floor", "1e-4"])
    assert args.func is run_combine
    assert args.experts == ["a/expert@1", "b/expert@2"] and args.floor == 1e-4
    args = parser.parse_args(["unlearn", "--manifest", "m.yaml", "--remove", "a/factory"])
    assert args.func is run_unlearn and args.mode == "server"
    args = parser.parse_args(["unlearn", "--manifest", "m.yaml", "--remove", "a/factory", "--mode", "network",
                              "--hospitals", "h.yaml", "--federation-repo", "net/federation-model"])
    assert (args.mode, args.hospitals, args.federation_repo) == ("network", "h.yaml", "net/federation-model")
    with pytest.raises(SystemExit):
        parser.parse_args(["unlearn", "--manifest", "m.yaml", "--remove", "a/factory", "--mode", "p2p"])
    # Building the parser imports no HF library: --endpoint must be applied before huggingface_hub is imported.
    probe = subprocess.run([sys.executable, "-c", "import sys; from federated_factory.cli import build_parser; "
                            "build_parser(); print(sorted(m for m in ('huggingface_hub', 'torch', 'transformers') "
                            "if m in sys.modules))"], capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stdout + probe.stderr


def test_network_sub_commands_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys):
    """Each network command rejects bad input with one `error:` line naming the problem, before any compute."""
    from federated_factory.cli import main

    broken = tmp_path / "manifest.yaml"
    broken.write_text("label_space: [a]\nfactories: []\n")
    endpoint: list[str] = []  # in-process: huggingface_hub may already be imported with the test endpoint
    assert main(["train-expert", "--manifest", str(broken), "--data", "mnist-5k", "--no-publish", *endpoint]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no factories" in err

    missing = tmp_path / "nowhere.yaml"
    assert main(["combine", "--manifest", str(missing), "--experts", "a/expert@1", *endpoint]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nowhere.yaml" in err

    good = tmp_path / "good.yaml"
    good.write_text("label_space: [a]\nfactories:\n  - repo: a/factory\n    revision: main\n")
    assert main(["unlearn", "--mode", "network", "--manifest", str(good), "--remove", "a/factory", *endpoint]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--hospitals" in err
