"""A non-editable install works: the wheel carries the card templates and the `evaluate` metric scripts.

The test builds the wheel from a copy of the package, installs it (``--no-deps``) into a fresh virtual
environment, and from there, outside the source tree, loads a packaged metric and trains, audits and publishes
a factory with the installed console script, whose card is then read back from the Hub. Nothing is downloaded:
the wheel is built with this environment's setuptools, and the fresh environment sees this environment's
dependencies through a path file (not its .pth files, so this checkout's editable install stays out of it).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

ROOT = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without PYTHONPATH (the tests run with the checkout on it), plus ``extra``."""
    return {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}, **extra}


def run(args, *, cwd, env=None) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, cwd=cwd,
                         env=env or clean_env())
    assert out.returncode == 0, f"{args[:4]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with the project's wheel installed; returns (python, console script, environment)."""
    # the wheel is built offline with this environment's setuptools (>= 70.1 builds wheels itself; torch requires 77+)
    pytest.importorskip("setuptools", minversion="70.1")
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT / "federated_factory", source / "federated_factory",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", tmp / "dist", source], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("federated_factory-*.whl")

    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    python = venv / "bin" / "python"
    venv_site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp).stdout.strip())
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel], cwd=tmp)
    # only now: pip would take this checkout's editable install, seen through the path file, for the wheel
    deps = [p for p in dict.fromkeys([*site.getsitepackages(), sysconfig.get_path("purelib")]) if Path(p).is_dir()]
    (venv_site / "_this_env_dependencies.pth").write_text("\n".join(deps) + "\n")
    assert (venv_site / "federated_factory" / "hub_cards" / "factory.md").is_file()

    env = clean_env(HF_HOME=str(tmp / "hf_home"), HF_MODULES_CACHE=str(tmp / "modules"), HF_HUB_DISABLE_XET="1")
    return python, venv / "bin" / "federated-factory", env, tmp


def test_the_wheel_ships_the_card_templates_and_metric_scripts(installed):
    python, _, env, tmp = installed
    code = textwrap.dedent("""
        import json
        from importlib.resources import files
        import federated_factory
        from federated_factory.metrics import AVAILABLE_METRICS, load_metric
        package = files("federated_factory")
        print(json.dumps({
            "file": federated_factory.__file__,
            "templates": sorted(p.name for p in (package / "hub_cards").iterdir() if p.name.endswith(".md")),
            "metrics": sorted(AVAILABLE_METRICS),
            "accuracy": load_metric("accuracy").compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])["accuracy"],
        }))
    """)
    found = json.loads(run([python, "-c", code], env=env, cwd=tmp).stdout.strip().splitlines()[-1])
    assert Path(found["file"]).resolve().is_relative_to((tmp / "venv").resolve()), found["file"]  # not this checkout
    shipped = sorted(p.name for p in (ROOT / "federated_factory" / "hub_cards").glob("*.md"))
    assert found["templates"] == shipped and "factory.md" in shipped
    assert found["accuracy"] == 0.75


@pytest.mark.slow
def test_an_installed_wheel_trains_audits_and_publishes_a_factory_with_its_card(installed, hub):
    _, script, env, tmp = installed
    repo_id = hub.repo_id("alice", "from-wheel")
    out = run([script, "train-client", "--data", "mnist-5k", "--classes", "4", "--image-size", "16", "--channels", "1",
               "--preset", "tiny", "--train-steps", "3", "--repo", repo_id, "--endpoint", hub.url,
               "--token", hub.token("alice")], env=env, cwd=tmp)
    assert f"published {repo_id}@" in out.stdout
    assert hub.token("alice") not in out.stdout + out.stderr

    api = hub.api("alice")
    card = ModelCard.load(repo_id, token=hub.token("alice"))
    assert card.data.library_name == "diffusers" and "federated-factory" in card.data.tags
    assert "## Privacy audit" in card.content and "| 4 |" in card.content
    meta = json.loads(Path(api.hf_hub_download(repo_id, "factory.json", cache_dir=tmp / "cache")).read_text())
    assert meta["classes"] == ["4"] and meta["versions"]["federated-factory"] == "0.1.0"
