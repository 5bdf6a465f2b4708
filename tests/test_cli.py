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
