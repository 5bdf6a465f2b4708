"""Reproducible runs: the synthetic data is a function of the factories' content and the synthesis settings.

Two hospitals train their `tiny` factories and publish them through the real client to the real endpoint; then they
do it all again: hospital A re-publishes to the same repo (a new commit), hospital B publishes to a renamed repo.
The commits differ, the weights do not, so both aggregations must give the same synthetic dataset row for row and
the same classifier weights.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from federated_factory.errors import ManifestError
from federated_factory.hub.manifest import FactoryEntry, Manifest, SynthesisConfig, load_manifest

LABELS = ["0", "1", "2"]


@pytest.fixture(scope="module")
def twice_published(hub):
    from federated_factory.client import preset, run_client
    from federated_factory.data import load_image_dataset

    train = load_image_dataset("mnist-5k", image_size=16, channels=1)
    labels = np.asarray(train["label"])
    config = preset("tiny", image_size=16, channels=1, train_steps=20)
    hospitals = {"A": [0, 1], "B": [1, 2]}
    aggregator = hub.add_user("repro-aggregator")
    tokens = {}
    for name in hospitals:
        user = f"repro-{name.lower()}"
        tokens[name] = hub.add_user(user)
        hub.server.set_org(f"{user}-org", [user, "repro-aggregator"])
    repos = [{"A": "repro-a-org/factory", "B": "repro-b-org/factory"},   # first run
             {"A": "repro-a-org/factory", "B": "repro-b-org/renamed"}]   # second run: re-publish, rename
    runs = []
    for names in repos:
        refs = {}
        for name, digits in hospitals.items():
            rows = np.concatenate([np.flatnonzero(labels == d)[:40] for d in digits])
            refs[name], _ = run_client(train.select(np.sort(rows)), names[name], config, token=tokens[name],
                                       audit_samples_per_class=16, progress=False)
        runs.append(refs)
    return {"runs": runs, "token": aggregator}


def _manifest(refs, output_dir) -> Manifest:
    return Manifest(
        federation="repro",
        label_space=list(LABELS),
        factories=[FactoryEntry(refs[n].repo_id, refs[n].revision) for n in "AB"],
        synthesis=SynthesisConfig(samples_per_class=16, sampler="ddim", num_inference_steps=3, batch_size=8, seed=0),
        classifier={"epochs": 2, "batch_size": 16, "val_fraction": 0.25, "seed": 0},
        output_dir=str(output_dir),
    )


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def two_aggregations(twice_published, tmp_path_factory):
    from federated_factory.aggregator import aggregate

    results = []
    for i, refs in enumerate(twice_published["runs"]):
        out = tmp_path_factory.mktemp(f"repro-{i}")
        results.append(aggregate(_manifest(refs, out / "out"), token=twice_published["token"], output_dir=out / "out",
                                 cache_dir=out / "cache", publish=False, progress=False))
    return results


def test_republished_and_renamed_factories_are_new_commits_with_the_same_weights(twice_published, hub):
    from huggingface_hub import hf_hub_download

    first, second = twice_published["runs"]
    token = twice_published["token"]
    for name in "AB":
        assert first[name].revision != second[name].revision
        weights = [_file_sha256(Path(hf_hub_download(ref.repo_id, "unet/diffusion_pytorch_model.safetensors",
                                                     revision=ref.revision, token=token))) for ref in (first[name], second[name])]
        assert weights[0] == weights[1], "the same data and config must train bit-identical factories on one machine"
    assert first["B"].repo_id != second["B"].repo_id


def test_the_same_factories_give_the_same_synthetic_dataset_and_classifier(two_aggregations):
    from datasets import load_from_disk

    from federated_factory.unlearning import weights_digest

    a, b = two_aggregations
    # the resolved manifests name different commits (and a different repo), but the same content digests
    assert [f.revision for f in a.manifest.factories] != [f.revision for f in b.manifest.factories]
    assert [f.digest for f in a.manifest.factories] == [f.digest for f in b.manifest.factories]
    assert all(len(f.digest) == 64 for f in a.manifest.factories)
    rows_a = load_from_disk(str(a.output_dir / "synthetic"))
    rows_b = load_from_disk(str(b.output_dir / "synthetic"))
    assert len(rows_a) == len(rows_b) == 16 * len(LABELS)
    content = ("label", "source_digest", "seed", "index")
    for ra, rb in zip(rows_a, rows_b):  # every row: pixels and the content columns
        assert ra["image"].tobytes() == rb["image"].tobytes()
        assert {k: ra[k] for k in content} == {k: rb[k] for k in content}
    assert set(rows_a["source_revision"]).isdisjoint(rows_b["source_revision"])  # provenance names what was pulled
    assert _file_sha256(a.output_dir / "classifier" / "model.safetensors") == \
        _file_sha256(b.output_dir / "classifier" / "model.safetensors")
    assert weights_digest(a.output_dir / "classifier") == weights_digest(b.output_dir / "classifier")


def test_resolved_manifest_records_digests_and_a_rename_reuses_the_cache(twice_published, two_aggregations, tmp_path):
    from federated_factory.synthesis import ChunkCache, plan_synthesis, pull_factories, synthesize

    a, _ = two_aggregations
    saved = load_manifest(a.output_dir / "manifest.resolved.yaml")
    assert [f.digest for f in saved.factories] == [f.digest for f in a.manifest.factories]
    # the second run's factories (new commits, a renamed repo) find every chunk in the first run's cache
    manifest = _manifest(twice_published["runs"][1], tmp_path)
    _, factories = pull_factories(manifest, token=twice_published["token"])
    plan = plan_synthesis(manifest.label_space, factories, manifest.synthesis)
    stats = synthesize(plan, factories, ChunkCache(a.output_dir.parent / "cache" / "chunks", manifest.synthesis),
                       progress=False)
    assert stats.chunks_total > 0 and stats.chunks_generated == 0


def test_a_pulled_factory_whose_digest_differs_from_the_manifest_is_an_error_naming_it(twice_published, tmp_path):
    from federated_factory.synthesis import pull_factories

    first = twice_published["runs"][0]
    manifest = _manifest(first, tmp_path)
    manifest.factories[1].digest = "0" * 64
    with pytest.raises(ManifestError) as err:
        pull_factories(manifest, token=twice_published["token"])
    assert f"{first['B'].repo_id}@{first['B'].revision}" in str(err.value) and "digest" in str(err.value)
    assert first["A"].repo_id not in str(err.value)


def test_the_same_content_listed_twice_is_refused(twice_published, tmp_path):
    from federated_factory.synthesis import pull_factories

    first, second = twice_published["runs"]
    manifest = _manifest(first, tmp_path)
    manifest.factories.append(FactoryEntry(second["B"].repo_id, second["B"].revision))
    with pytest.raises(ManifestError, match="have the same content") as err:
        pull_factories(manifest, token=twice_published["token"])
    assert first["B"].repo_id in str(err.value) and second["B"].repo_id in str(err.value)


def test_factory_digest_follows_weights_and_sampling_configs_not_bookkeeping(twice_published, tmp_path):
    from huggingface_hub import snapshot_download

    from federated_factory.synthesis import FACTORY_FILES, factory_digest

    ref = twice_published["runs"][0]["A"]
    source = Path(snapshot_download(ref.repo_id, revision=ref.revision, token=twice_published["token"],
                                    allow_patterns=FACTORY_FILES))
    folder = tmp_path / "factory"
    shutil.copytree(source, folder)
    reference = factory_digest(folder)

    def edit_json(name, change):
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data, indent=4))

    edit_json("unet/config.json", lambda d: d.update(_diffusers_version="99.0.0"))  # another library version
    edit_json("factory.json", lambda d: d["train_stats"].update(wall_seconds=1.0))  # another run's timings
    assert factory_digest(folder) == reference
    edit_json("model_index.json", lambda d: d.update(class_names=list(reversed(d["class_names"]))))
    assert factory_digest(folder) != reference  # class ids map to other names: other images per class
    shutil.copytree(source, folder, dirs_exist_ok=True)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    assert factory_digest(folder) != reference
