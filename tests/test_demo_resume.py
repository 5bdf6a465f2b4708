"""`federated-factory demo --resume`: a run interrupted in the hospitals' stage picks up where it stopped.

The hospitals' stage runs in this process (``workers=1``) against the session's endpoint, with two hospitals
of one digit each, so that an interruption can be staged exactly: the second hospital stops right after its
checkpoint at half its steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from federated_factory import demo
from federated_factory.errors import DemoError

WEIGHTS = "pipeline/unet/diffusion_pytorch_model.safetensors"


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def two_hospitals():
    from federated_factory.data import load_image_dataset

    train = load_image_dataset("mnist-5k", image_size=16, channels=1)
    labels = np.asarray(train["label"])
    client_sets = [train.select(np.flatnonzero(labels == digit)[:40]) for digit in (0, 1)]
    return demo.DataStage(train=train, test=None, label_space=list(train.features["label"].names), partition=None,
                          client_sets=client_sets, table="", image_size=16, channels=1, seconds=0.0)


def _config(out, **changes) -> demo.DemoConfig:
    options = dict(preset="tiny", train_steps=20, workers=1, resume=True, progress=False, audit_samples_per_class=8,
                   output_dir=str(out))
    return demo.DemoConfig(**{**options, **changes})


def _train(hub, config, data):
    out = Path(config.output_dir)
    demo.prepare_output_dir(config, out)
    fed = demo.register_identities(hub.server, len(data.client_sets))
    return demo.train_factories(config, out, hub.server, fed, data), fed


def test_resume_republishes_finished_factories_and_continues_an_interrupted_one(hub, two_hospitals, tmp_path,
                                                                               monkeypatch):
    import torch

    import federated_factory.client as client_module
    import federated_factory.factory_training as training
    from huggingface_hub import hf_hub_download

    out = tmp_path / "run"
    save_checkpoint = training._save_checkpoint

    def stop_hospital_01_at_half_time(ckpt_dir, *args, **kwargs):
        save_checkpoint(ckpt_dir, *args, **kwargs)
        if "hospital-01" in str(ckpt_dir) and args[5] == 10:  # args[5]: the step just saved
            raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(training, "_save_checkpoint", stop_hospital_01_at_half_time)
        with pytest.raises(Interrupted):
            _train(hub, _config(out), two_hospitals)
    assert (out / "clients" / "hospital-00" / demo.CLIENT_SUMMARY_FILE).is_file()
    assert not (out / "clients" / "hospital-01" / demo.CLIENT_SUMMARY_FILE).exists()
    (out / "leftover-of-a-later-stage").mkdir()
    (out / "cache" / "chunks").mkdir(parents=True)  # the synthesis chunk cache, keyed by content: kept

    trained_from = {}
    train_factory = client_module.train_factory

    def record(data, config, *, output_dir, **kwargs):
        state = Path(output_dir) / "checkpoint" / "state.pt"
        trained_from[Path(output_dir).name] = torch.load(state)["step"] if state.exists() else 0
        return train_factory(data, config, output_dir=output_dir, **kwargs)

    monkeypatch.setattr(client_module, "train_factory", record)
    resumed, fed = _train(hub, _config(out), two_hospitals)
    assert trained_from == {"hospital-01": 10}  # hospital-00 is not trained again; hospital-01 goes on from step 10
    assert [c.resumed for c in resumed.clients] == [True, False]
    assert not (out / "leftover-of-a-later-stage").exists() and (out / "cache" / "chunks").is_dir()

    # An uninterrupted run of the same options trains the same two factories, bit for bit.
    reference, _ = _train(hub, _config(tmp_path / "reference", resume=False), two_hospitals)
    for name in ("hospital-00", "hospital-01"):
        assert (out / "clients" / name / WEIGHTS).read_bytes() == \
               (tmp_path / "reference" / "clients" / name / WEIGHTS).read_bytes()
    # What the resumed run published for hospital-00 is its factory as the earlier run left it.
    client = fed.clients[0]
    published = hf_hub_download(client.repo, "unet/diffusion_pytorch_model.safetensors",
                                revision=resumed.clients[0].revision, token=client.token, cache_dir=tmp_path / "cache")
    assert Path(published).read_bytes() == (out / "clients" / "hospital-00" / WEIGHTS).read_bytes()
    # A finished factory is reused only for the images it was trained on.
    changed = demo.DataStage(**{**two_hospitals.__dict__,
                                "client_sets": [two_hospitals.client_sets[0].select(range(39)),
                                                two_hospitals.client_sets[1]]})
    with pytest.raises(DemoError, match="cannot resume hospital-00: the factory .* was trained on other images"):
        _train(hub, _config(out), changed)

    factories = [json.loads((out / "clients" / name / "factory.json").read_text())
                 for name in ("hospital-00", "hospital-01")]
    assert [f["config"]["checkpoint_every"] for f in factories] == [2, 2]
    assert [f["train_stats"]["resumed_from_step"] for f in factories] == [0, 10]


def test_resume_refuses_other_factory_options_and_removes_nothing(tmp_path):
    out = tmp_path / "run"
    demo.prepare_output_dir(_config(out), out)
    (out / "clients").mkdir()
    with pytest.raises(DemoError, match=r"train_steps: 20 then, 40 now; seed: 0 then, 1 now"):
        demo.prepare_output_dir(_config(out, train_steps=40, seed=1, classifier_epochs=3), out)
    with pytest.raises(DemoError, match=r"factory_precision: None then, 'no' now"):
        demo.prepare_output_dir(_config(out, factory_precision="no"), out)
    assert (out / "clients").is_dir()
    # What comes after the factories may change: their options are the new run's.
    demo.prepare_output_dir(_config(out, classifier_epochs=3, samples_per_class=50, mode="network", workers=2), out)
    assert (out / "clients").is_dir()
    assert json.loads((out / demo.RUN_CONFIG_FILE).read_text())["classifier_epochs"] == 3
    (out / demo.RUN_CONFIG_FILE).unlink()
    with pytest.raises(DemoError, match="holds no demo_config.json"):
        demo.prepare_output_dir(_config(out), out)
    assert (out / "clients").is_dir()


def test_factory_precision_overrides_the_presets(hub, two_hospitals, tmp_path):
    """--factory-precision pins the factories' training precision, so that seeds trained on machines with and
    without native bfloat16 train alike (the `cpu` preset's "auto" is bf16 on one and fp32 on the other)."""
    import torch

    from federated_factory.runtime import resolve_precision

    out = tmp_path / "run"
    _train(hub, _config(out, resume=False, train_steps=4, factory_precision="auto"), two_hospitals)
    factory = json.loads((out / "clients" / "hospital-00" / "factory.json").read_text())
    assert factory["config"]["mixed_precision"] == "auto"  # the tiny preset's own is "no"
    native = resolve_precision("auto", torch.device("cpu")) == "bf16"
    assert factory["train_stats"]["precision"] == ("bf16" if native else "no")


def _federation_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "federation.py"
    spec = importlib.util.spec_from_file_location("federation_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_factories_kept_in_the_repository_resume_a_run_on_another_machine(hub, two_hospitals, tmp_path, monkeypatch):
    """benchmarks/federation.py --save-factories / --restore-factories: a run whose work dir is lost between
    sessions goes on from the factories it finished, which travel as safetensors and JSON only."""
    import torch

    import federated_factory.client as client_module
    import federated_factory.factory_training as training

    script, first, kept, moved = _federation_script(), tmp_path / "first", tmp_path / "kept", tmp_path / "moved"
    save_checkpoint = training._save_checkpoint

    def stop_hospital_01(ckpt_dir, *args, **kwargs):
        save_checkpoint(ckpt_dir, *args, **kwargs)
        if "hospital-01" in str(ckpt_dir) and args[5] == 10:
            raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(training, "_save_checkpoint", stop_hospital_01)
        with pytest.raises(Interrupted):
            _train(hub, _config(first), two_hospitals)
    assert script.save_factories(first, kept) == 0
    assert sorted(p.name for p in kept.iterdir()) == ["demo_config.json", "hospital-00"]  # 01 was still training
    files = sorted(str(p.relative_to(kept / "hospital-00")) for p in (kept / "hospital-00").rglob("*") if p.is_file())
    assert "checkpoint/state.pt" not in files and WEIGHTS in files and "factory.json" in files
    assert all(f.endswith((".json", ".safetensors", ".png")) for f in files)
    assert script.save_factories(first, kept) == 0  # saving again keeps what is there

    assert script.restore_factories(kept, moved) == 0
    trained = []
    train_factory = client_module.train_factory

    def record(data, config, *, output_dir, **kwargs):
        trained.append((Path(output_dir).name, (Path(output_dir) / "checkpoint" / "state.pt").exists()))
        return train_factory(data, config, output_dir=output_dir, **kwargs)

    monkeypatch.setattr(client_module, "train_factory", record)
    resumed, _ = _train(hub, _config(moved), two_hospitals)
    assert trained == [("hospital-01", False)]  # hospital-00 comes from the repository; 01 starts afresh here
    assert [c.resumed for c in resumed.clients] == [True, False]
    assert (moved / "clients" / "hospital-00" / WEIGHTS).read_bytes() == \
           (first / "clients" / "hospital-00" / WEIGHTS).read_bytes()
    assert torch.load(first / "clients" / "hospital-01" / "checkpoint" / "state.pt")["step"] == 10

    # Kept factories go only where they belong: not over another run's options, nor into a folder that is
    # not a run's, and a hospital the work dir already holds is left alone.
    other = tmp_path / "other"
    demo.prepare_output_dir(_config(other, seed=1), other)
    assert script.restore_factories(kept, other) == 2
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    assert script.restore_factories(kept, stray) == 2
    assert not (stray / "clients").exists()
    assert script.restore_factories(tmp_path / "nothing-kept", tmp_path / "new") == 2
    (moved / "clients" / "hospital-00" / "factory.json").write_text("{}")
    assert script.restore_factories(kept, moved) == 0
    assert (moved / "clients" / "hospital-00" / "factory.json").read_text() == "{}"
    # A factory of another run under the same name is refused, not overwritten.
    assert script.save_factories(moved, kept) == 2
    # Weights travel as safetensors only: a pickle in a pipeline is refused, and nothing of that factory is kept.
    (first / "clients" / "hospital-00" / "pipeline" / "unet" / "extra.bin").write_bytes(b"pickle")
    assert script.save_factories(first, tmp_path / "kept-again") == 2
    assert not (tmp_path / "kept-again" / "hospital-00").exists()
