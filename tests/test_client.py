"""Behaviour of the client job: data checks, training, checkpoint/resume, privacy audit, card and publishing."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler
from huggingface_hub import ModelCard, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from PIL import Image

import federated_factory.factory_training as factory_training
from federated_factory.client import factory_metadata, publish_factory, run_client, sample_grid
from federated_factory.client_data import ClientData, dataset_fingerprint, prepare_client_data
from federated_factory.data import load_image_dataset
from federated_factory.errors import FactoryError, PrivacyAuditError, PublishError
from federated_factory.factory_config import build_scheduler, build_unet, preset
from federated_factory.factory_training import train_factory
from federated_factory.privacy import audit_privacy
from federated_factory.pipeline import DEFAULT_SAMPLER, FactoryPipeline, make_scheduler

DIGITS = ["2", "5", "8"]
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")




@pytest.fixture(scope="module")
def mnist():
    return load_image_dataset("mnist-5k", image_size=16, channels=1)


def digits(mnist, wanted, per_class):
    labels = np.asarray(mnist["label"])
    return mnist.select(np.concatenate([np.flatnonzero(labels == int(d))[:per_class] for d in wanted]))


def tiny(**overrides):
    return preset("tiny", image_size=16, channels=1, **overrides)


@pytest.fixture(scope="module")
def factory(mnist):
    """A normally trained client: 3 digits × 80 images (72 train + 8 held out each), 60 steps."""
    config = tiny(train_steps=60)
    data = prepare_client_data(digits(mnist, DIGITS, 80), config)
    pipeline, stats = train_factory(data, config, progress=False)
    audit = audit_privacy(pipeline, data, samples_per_class=32, seed=config.seed)
    return data, config, pipeline, stats, audit, factory_metadata(data, config, stats, audit)


@pytest.fixture(scope="module")
def published(hub, factory):
    """The factory published by alice to a new private repo (publish_factory creates it)."""
    _, _, pipeline, _, _, metadata = factory
    repo_id = hub.repo_id("alice", "factory")
    result = publish_factory(pipeline, metadata, repo_id, token=hub.token("alice"))
    return result


def sample(pipe, classes, n=4, seed=0, sampler_steps=10):
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    return pipe(classes, num_images=n, num_inference_steps=sampler_steps, generator=generator,
                output_type="np").images


def image_dataset(images, labels, names=("a", "b"), label_feature=None):
    features = datasets.Features(
        {"image": datasets.Image(), "label": label_feature or datasets.ClassLabel(names=list(names))}
    )
    return datasets.Dataset.from_dict({"image": list(images), "label": list(labels)}, features=features)


def gray(value, size=16, mode="L"):
    return Image.new(mode, (size, size), value if mode == "L" else (value, value, value))


# --------------------------------------------------------------------------- training


def test_training_lowers_the_loss(factory):
    _, config, _, stats, _, _ = factory
    history = stats.loss_history
    assert stats.steps == config.train_steps == len(history) == 60
    first, last = np.mean(history[:15]), np.mean(history[-15:])
    assert np.isfinite(history).all()
    assert last < 0.8 * first, (first, last)


def test_report_seconds_prints_progress_lines_and_changes_no_weight(mnist, capsys):
    """A training whose bar is off (one of several in worker processes) reports a line per interval."""
    data = prepare_client_data(digits(mnist, DIGITS[:2], 20), tiny(train_steps=6))
    quiet, _ = train_factory(data, tiny(train_steps=6), progress=False)
    capsys.readouterr()
    reported, _ = train_factory(data, tiny(train_steps=6), progress=False, report_seconds=1e-9)
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(": step ")[1].split(",")[0] for line in lines] == [f"{k}/6" for k in range(1, 7)]
    assert all(line.startswith(f"factory {'+'.join(data.class_names)}: ") and "images/s, loss" in line for line in lines)
    for a, b in zip(quiet.unet.state_dict().values(), reported.unet.state_dict().values()):
        assert torch.equal(a, b)


def test_auto_precision_trains_exactly_as_the_precision_it_resolves_to(mnist):
    """``mixed_precision="auto"`` (the `cpu` and `gpu` presets) is bf16 only where the device runs bf16 natively,
    else fp32: the same weights as the explicit setting it resolves to, and the resolved one is recorded."""
    from federated_factory.runtime import resolve_precision

    assert preset("cpu").mixed_precision == preset("gpu").mixed_precision == "auto"
    native = resolve_precision("auto", torch.device("cpu")) == "bf16"
    data = prepare_client_data(digits(mnist, DIGITS[:2], 20), tiny(train_steps=4))
    weights = {}
    for setting in ("auto", "bf16" if native else "no"):
        pipeline, stats = train_factory(data, tiny(train_steps=4, mixed_precision=setting), progress=False)
        assert stats.precision == ("bf16" if native else "no")
        weights[setting] = torch.cat([t.flatten() for t in pipeline.unet.state_dict().values()])
    assert torch.equal(*weights.values())
    with pytest.raises(FactoryError, match="mixed_precision"):
        train_factory(data, tiny(train_steps=4, mixed_precision="fp16"), progress=False)


def test_prepare_splits_a_stratified_holdout_and_counts_training_images(mnist):
    config = tiny(audit_holdout_fraction=0.25)
    dataset = digits(mnist, ["3", "4"], 20)
    small = digits(mnist, ["6"], 5)  # fewer than 10 images: no hold-out, all of them train
    data = prepare_client_data(datasets.concatenate_datasets([dataset, small]), config)
    assert data.class_names == ["3", "4", "6"]
    assert data.counts == {"3": 15, "4": 15, "6": 5}
    assert np.bincount(data.holdout_labels, minlength=3).tolist() == [5, 5, 0]
    assert data.train_images.shape == (35, 1, 16, 16) and data.train_images.dtype == np.uint8
    train = {img.tobytes() for img in data.train_images}
    assert not any(img.tobytes() in train for img in data.holdout_images)  # disjoint
    # restricting to a subset of the classes keeps their order and drops the rest
    only = prepare_client_data(dataset, config, classes=["4"])
    assert only.class_names == ["4"] and only.counts == {"4": 15}


# --------------------------------------------------------------------------- fingerprint and checkpoints


def test_fingerprint_is_stable_and_changes_when_one_image_changes(mnist):
    config = tiny()
    dataset = digits(mnist, ["1", "2"], 12)
    first = prepare_client_data(dataset, config).fingerprint
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert prepare_client_data(dataset, config).fingerprint == first
    images = np.stack([np.asarray(img) for img in dataset["image"]])
    assert dataset_fingerprint(images) == dataset_fingerprint(images[::-1].copy())  # order does not matter

    pixels = [np.asarray(img).copy() for img in dataset["image"]]
    data = prepare_client_data(dataset, config)
    # change one pixel of one *training* image (the hold-out is not part of the fingerprint)
    row = next(i for i, p in enumerate(pixels) if any(np.array_equal(p, t[0]) for t in data.train_images))
    pixels[row][0, 0] ^= 1
    changed = image_dataset([Image.fromarray(p, "L") for p in pixels], dataset["label"],
                            names=dataset.features["label"].names)
    assert prepare_client_data(changed, config).fingerprint != first


def test_resuming_from_a_checkpoint_matches_an_uninterrupted_run(mnist, tmp_path, monkeypatch):
    config = tiny(train_steps=20, checkpoint_every=10, cfg_dropout=0.2, flip="h")
    data = prepare_client_data(digits(mnist, ["0", "1"], 24), config)
    reference, reference_stats = train_factory(data, config, progress=False)

    save = factory_training._save_checkpoint

    class Interrupted(Exception):
        pass

    def save_then_crash(*args, **kwargs):
        save(*args, **kwargs)
        raise Interrupted

    monkeypatch.setattr(factory_training, "_save_checkpoint", save_then_crash)
    with pytest.raises(Interrupted):
        train_factory(data, config, output_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=True)
    assert state["step"] == 10 and len(state["losses"]) == 10
    monkeypatch.setattr(factory_training, "_save_checkpoint", save)

    resumed, resumed_stats = train_factory(data, config, output_dir=tmp_path, progress=False)
    assert resumed_stats.loss_history == reference_stats.loss_history  # bit-for-bit, step by step
    expected, got = reference.unet.state_dict(), resumed.unet.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=True)["step"] == 20


def test_a_checkpoint_from_a_different_run_is_not_resumed(mnist, tmp_path):
    config = tiny(train_steps=4, checkpoint_every=2)
    data = prepare_client_data(digits(mnist, ["0", "1"], 12), config)
    train_factory(data, config, output_dir=tmp_path, progress=False)
    other_images = prepare_client_data(digits(mnist, ["0", "1"], 13), config)
    with pytest.raises(FactoryError, match="different training run"):
        train_factory(other_images, config, output_dir=tmp_path, progress=False)
    with pytest.raises(FactoryError, match="different training run"):
        train_factory(data, replace(config, lr=1e-3), output_dir=tmp_path, progress=False)
    # the checkpoint interval is not part of the run: changing it still resumes (here: nothing left to do)
    _, stats = train_factory(data, replace(config, checkpoint_every=1), output_dir=tmp_path, progress=False)
    assert len(stats.loss_history) == 4


# --------------------------------------------------------------------------- bad input


def test_empty_dataset_is_refused():
    with pytest.raises(FactoryError, match="empty"):
        prepare_client_data(image_dataset([], []), tiny())


def test_unknown_absent_or_repeated_class_is_refused_by_name(mnist):
    dataset = digits(mnist, ["1", "2"], 5)
    with pytest.raises(FactoryError, match="'cat'"):
        prepare_client_data(dataset, tiny(), classes=["1", "cat"])
    with pytest.raises(FactoryError, match="'9' has no images"):
        prepare_client_data(dataset, tiny(), classes=["9"])
    with pytest.raises(FactoryError, match="duplicate class names"):
        prepare_client_data(dataset, tiny(), classes=["1", "2", "1"])


@pytest.mark.parametrize("bad", [gray(0, size=20), gray(0, mode="RGB")], ids=["wrong-size", "wrong-mode"])
def test_image_of_wrong_size_or_mode_is_refused_naming_the_row(bad):
    images = [gray(10 * i) for i in range(5)]
    images[3] = bad
    with pytest.raises(FactoryError, match="row 3"):
        prepare_client_data(image_dataset(images, [0] * 5), tiny())


def test_label_column_must_be_a_class_label():
    dataset = image_dataset([gray(0), gray(50)], [0, 1], label_feature=datasets.Value("int64"))
    with pytest.raises(FactoryError, match="ClassLabel"):
        prepare_client_data(dataset, tiny())


@pytest.mark.parametrize("who", ["read-token", "bad-token"])
def test_publishing_without_a_write_token_is_refused_and_publishes_nothing(hub, factory, who):
    _, _, pipeline, _, _, metadata = factory
    if who == "read-token":
        token, owner, match = hub.add_user("ro", role="read"), "ro", "role 'read'"
    else:
        token, owner, match = "hf_not-a-valid-token", "alice", "rejected the token"
    repo_id = hub.repo_id(owner, "factory")
    with pytest.raises(PublishError, match=match) as err:
        publish_factory(pipeline, metadata, repo_id, token=token)
    assert token not in str(err.value)
    with pytest.raises(RepositoryNotFoundError):  # asked with the owner's own token: the repo was never created
        hub.api(owner).repo_info(repo_id)


# The unreachable-endpoint path is tested on the publish helper itself, in a child process (huggingface_hub fixes
# its endpoint once per process): tests/test_publish.py::test_an_unreachable_endpoint_is_an_error_naming_it.


# --------------------------------------------------------------------------- privacy audit


def test_normally_trained_factory_passes_the_audit(factory):
    data, _, _, _, audit, _ = factory
    assert audit["passed"] is True and audit["copy_rate"] <= audit["max_copy_rate"]
    assert set(audit["per_class"]) == set(DIGITS)
    for row in audit["per_class"].values():
        assert row["reference"] == "held-out" and row["samples"] == 32 and row["threshold"] > 0


def test_memorizing_factory_is_flagged_and_not_published(hub, mnist, hf_cache):
    """4 training images of one digit (6 more held out), 300 steps with a short EMA: the model reproduces them.

    Measured at this size (copy rate over 16-32 samples; limit 10%): 0.31 (this seed), 0.38, 0.38, 0.47, 0.63 at
    300 steps over seeds/learning rates, sample NN distance q50 0.06-0.09 vs a threshold of 0.067-0.069;
    only 0.0-0.19 at 150-200 steps, so 300 is about the least that memorizes reliably. ~15 s on one thread.
    """
    config = tiny(train_steps=300, ema_decay=0.9, audit_holdout_fraction=0.6)
    data = prepare_client_data(digits(mnist, ["3"], 10), config)
    assert len(data.train_images) == 4 and len(data.holdout_images) == 6
    pipeline, stats = train_factory(data, config, progress=False)
    audit = audit_privacy(pipeline, data, samples_per_class=32, seed=config.seed)
    assert audit["passed"] is False
    assert audit["copy_rate"] > audit["max_copy_rate"] == 0.1
    assert audit["worst_class"] == "3" and audit["worst_copy_rate"] == audit["per_class"]["3"]["copy_rate"]
    assert audit["per_class"]["3"]["reference"] == "held-out"

    metadata = factory_metadata(data, config, stats, audit)
    api = hub.api("alice")
    new_repo = hub.repo_id("alice", "memorized")
    with pytest.raises(PrivacyAuditError, match="nothing was published"):
        publish_factory(pipeline, metadata, new_repo, token=hub.token("alice"))
    assert not api.repo_exists(new_repo)

    existing = hub.repo_id("alice", "memorized")
    api.create_repo(existing, private=True)
    before = [c.commit_id for c in api.list_repo_commits(existing)]
    with pytest.raises(PrivacyAuditError):
        publish_factory(pipeline, metadata, existing, token=hub.token("alice"))
    assert [c.commit_id for c in api.list_repo_commits(existing)] == before

    # an explicit override publishes, and factory.json and the card say the audit failed and was overridden
    forced = publish_factory(pipeline, metadata, new_repo, token=hub.token("alice"), allow_copies=True)
    card = ModelCard.load(new_repo, token=hub.token("alice"))
    assert forced.revision == api.repo_info(new_repo).sha
    assert "FAILED - published with an explicit override (--allow-copies)" in card.content
    assert card.data.to_dict()["federated_factory"]["privacy_audit_allowed_copies"] is True
    published_audit = json.loads(open(api.hf_hub_download(new_repo, "factory.json", revision=forced.revision,
                                                          cache_dir=hf_cache)).read())["privacy_audit"]
    assert published_audit["allowed_copies"] is True and published_audit["passed"] is False
    assert published_audit["worst_class"] == "3" and metadata["privacy_audit"]["allowed_copies"] is False


def test_audit_falls_back_to_leave_one_out_without_holdout():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 1, 16, 16), dtype=np.uint8)
    data = ClientData(class_names=["a"], train_images=images, train_labels=np.zeros(6, np.int64),
                      holdout_images=images[:0], holdout_labels=np.zeros(0, np.int64), counts={"a": 6})
    config = tiny()
    torch.manual_seed(0)
    pipe = FactoryPipeline(unet=build_unet(config, 1), scheduler=build_scheduler(config), class_names=["a"])
    audit = audit_privacy(pipe, data, samples_per_class=4, num_inference_steps=2)
    row = audit["per_class"]["a"]
    assert row["reference"] == "leave-one-out" and row["samples"] == 4
    assert audit["passed"] is True and row["threshold"] > 0  # untrained noise is no copy of anything


# --------------------------------------------------------------------------- publish and pull


def test_published_repo_is_private(hub, published):
    with pytest.raises((RepositoryNotFoundError, HfHubHTTPError)) as err:
        hub.api().repo_info(published.repo_id)
    if not isinstance(err.value, RepositoryNotFoundError):
        assert err.value.response.status_code == 401
    with pytest.raises((RepositoryNotFoundError, HfHubHTTPError)):
        snapshot_download(published.repo_id, token=False)
    assert hub.api("alice").repo_info(published.repo_id).private is True


def test_publish_makes_one_commit_and_returns_its_sha(hub, published):
    commits = hub.api("alice").list_repo_commits(published.repo_id)
    # a new repo starts with the server's initial commit; the publish adds exactly one on top
    assert len(commits) == 2
    assert commits[0].commit_id == published.revision == hub.api("alice").repo_info(published.repo_id).sha
    assert commits[0].title.startswith("Publish factory for classes 2, 5, 8")
    assert published.manifest_entry() == {"repo": published.repo_id, "revision": published.revision}


def test_publish_to_an_existing_repo_adds_exactly_one_commit(hub, factory):
    _, _, pipeline, _, _, metadata = factory
    api = hub.api("alice")
    repo_id = hub.repo_id("alice", "factory")
    api.create_repo(repo_id, private=True)
    api.upload_file(path_or_fileobj=b"notes\n", path_in_repo="NOTES.txt", repo_id=repo_id)
    before = [c.commit_id for c in api.list_repo_commits(repo_id)]
    result = publish_factory(pipeline, metadata, repo_id, token=hub.token("alice"), grid=gray(0))
    after = [c.commit_id for c in api.list_repo_commits(repo_id)]
    assert after[1:] == before and after[0] == result.revision


def test_publishing_into_an_existing_public_repo_is_refused(hub, factory):
    _, _, pipeline, _, _, metadata = factory
    api = hub.api("alice")
    repo_id = hub.repo_id("alice", "public")
    api.create_repo(repo_id, private=False)
    before = [c.commit_id for c in api.list_repo_commits(repo_id)]
    with pytest.raises(PublishError, match="is public"):
        publish_factory(pipeline, metadata, repo_id, token=hub.token("alice"), grid=gray(0))
    assert [c.commit_id for c in api.list_repo_commits(repo_id)] == before
    assert api.repo_info(repo_id).private is False


def test_pulled_factory_gives_identical_samples(hub, published, factory, hf_cache):
    _, _, pipeline, _, _, _ = factory
    folder = snapshot_download(published.repo_id, revision=published.revision, token=hub.token("alice"),
                               cache_dir=hf_cache)
    pulled = FactoryPipeline.from_pretrained(folder, use_safetensors=True)
    assert pulled.class_names == DIGITS
    assert type(pulled.scheduler) is DPMSolverMultistepScheduler
    np.testing.assert_array_equal(sample(pipeline.with_sampler(DEFAULT_SAMPLER), ["2", "5", "8", "5"]),
                                  sample(pulled, ["2", "5", "8", "5"]))


def test_the_published_scheduler_is_the_default_sampler_whatever_ran_last(hub, factory, hf_cache):
    data, config, pipeline, _, _, metadata = factory
    trained_with = pipeline.scheduler
    assert type(trained_with) is DDPMScheduler  # train_factory returns the scheduler the factory was trained with
    audit_privacy(pipeline, data, samples_per_class=2, sampler="ddim", num_inference_steps=2)
    sample_grid(pipeline, data.class_names, per_class=1, sampler="ddpm", num_inference_steps=2)
    assert pipeline.scheduler is trained_with  # the audit and the grid sample on copies

    last_run = pipeline.with_sampler("ddim")  # even a pipeline whose scheduler was swapped publishes the default
    published = publish_factory(last_run, metadata, hub.repo_id("alice", "scheduler"), token=hub.token("alice"),
                                grid=gray(0))
    folder = snapshot_download(published.repo_id, revision=published.revision, token=hub.token("alice"),
                               cache_dir=hf_cache)
    pulled = FactoryPipeline.from_pretrained(folder, use_safetensors=True).scheduler
    expected = make_scheduler(DEFAULT_SAMPLER, build_scheduler(config).config)
    assert type(pulled) is type(expected) is DPMSolverMultistepScheduler
    public = lambda cfg: json.loads(json.dumps({k: v for k, v in cfg.items() if not k.startswith("_")}))  # noqa: E731
    assert public(pulled.config) == public(expected.config)
    assert pulled.config.prediction_type == config.prediction_type and pulled.config.beta_schedule == config.beta_schedule
    assert type(last_run.scheduler).__name__ == "DDIMScheduler"  # the caller's pipeline is left as it was


def test_published_files_are_safetensors_weights_card_metadata_and_grid(hub, published):
    files = hub.api("alice").list_repo_files(published.repo_id, revision=published.revision)
    for name in ("model_index.json", "unet/diffusion_pytorch_model.safetensors", "unet/config.json",
                 "scheduler/scheduler_config.json", "factory.json", "README.md", "samples.png"):
        assert name in files
    assert not [f for f in files if f.endswith(WEIGHT_SUFFIXES) or "checkpoint" in f], files


def test_factory_json_carries_what_the_aggregator_needs(hub, published, factory, hf_cache):
    data, config, _, _, audit, _ = factory
    path = hub.api("alice").hf_hub_download(published.repo_id, "factory.json", revision=published.revision,
                                            cache_dir=hf_cache)
    meta = json.loads(open(path).read())
    assert meta["classes"] == DIGITS
    assert meta["class_counts"] == {"2": 72, "5": 72, "8": 72} == data.counts
    assert meta["image_size"] == 16 and meta["channels"] == 1
    assert "127.5" in meta["normalization"]
    assert meta["config"] == config.to_dict() and meta["config"]["train_steps"] == 60
    assert {"torch", "diffusers", "huggingface-hub"} <= set(meta["versions"])
    assert re.fullmatch(r"[0-9a-f]{64}", meta["training_set_fingerprint"])
    assert meta["training_set_fingerprint"] == data.fingerprint
    assert meta["privacy_audit"]["copy_rate"] == audit["copy_rate"] and meta["privacy_audit"]["passed"] is True
    assert meta["pipeline_class"] == "FactoryPipeline"


def test_card_carries_library_tags_classes_config_and_audit(hub, published, factory):
    data, config, _, _, audit, meta = factory
    card = ModelCard.load(published.repo_id, token=hub.token("alice"))
    assert card.data.library_name == "diffusers"
    assert {"federated-learning", "federated-factory", "diffusers:FactoryPipeline"} <= set(card.data.tags)
    header = card.data.to_dict()["federated_factory"]
    assert header["classes"] == DIGITS and header["class_counts"] == data.counts
    assert header["training_set_fingerprint"] == data.fingerprint
    assert header["privacy_audit_copy_rate"] == pytest.approx(audit["copy_rate"])
    text = card.content
    for name in DIGITS:
        assert f"| {name} | 72 |" in text
    assert "| train_steps | `60` |" in text and "| image_size | `16` |" in text and "| lr | `0.002` |" in text
    assert f"**Copy rate: {100 * audit['copy_rate']:.2f}%**" in text
    assert "![samples](samples.png)" in text
    assert yaml.safe_load(text.split("---")[1])["library_name"] == "diffusers"


def test_no_token_appears_in_the_published_text(hub, published, hf_cache):
    folder = snapshot_download(published.repo_id, revision=published.revision, token=hub.token("alice"),
                               cache_dir=hf_cache, allow_patterns=["*.json", "*.md"])
    texts = [p.read_text() for p in Path(folder).rglob("*") if p.is_file()]
    assert len(texts) >= 5
    for user in ("alice", "bob", "reader"):
        assert not any(hub.token(user) in text for text in texts)
    assert not any(re.search(r"tok-[a-z]+-[0-9a-f]{12}", text) for text in texts)


def test_run_client_trains_audits_saves_locally_and_publishes_one_commit(hub, mnist, tmp_path, hf_cache):
    repo_id = hub.repo_id("alice", "client")
    published, metadata = run_client(digits(mnist, ["4"], 12), repo_id, tiny(train_steps=3),
                                     token=hub.token("alice"), output_dir=tmp_path, audit_samples_per_class=4,
                                     progress=False)
    assert metadata["classes"] == ["4"] and metadata["class_counts"] == {"4": 11}  # 12 images, 1 held out
    assert metadata["privacy_audit"]["passed"] is True
    local = tmp_path / "pipeline"
    assert (local / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert metadata["published_sampler"] == DEFAULT_SAMPLER
    assert type(FactoryPipeline.from_pretrained(local, use_safetensors=True).scheduler) is DPMSolverMultistepScheduler
    assert json.loads((tmp_path / "factory.json").read_text())["privacy_audit"]["allowed_copies"] is False
    assert (tmp_path / "factory.json").exists() and (tmp_path / "samples.png").exists()

    commits = hub.api("alice").list_repo_commits(repo_id)
    assert len(commits) == 2 and commits[0].commit_id == published.revision
    folder = snapshot_download(repo_id, revision=published.revision, token=hub.token("alice"), cache_dir=hf_cache)
    pulled = FactoryPipeline.from_pretrained(folder, use_safetensors=True)
    np.testing.assert_array_equal(sample(FactoryPipeline.from_pretrained(local, use_safetensors=True), "4", n=2),
                                  sample(pulled, "4", n=2))
