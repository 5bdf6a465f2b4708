"""Aggregator, synthesis, manifest and unlearning, end to end through the project's Hub endpoint.

Three tiny factories are published by three hospitals: A holds digits 0 and 1, B holds 1 and 2 (so class
1 is split between A and B by their declared counts), C holds 3 alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from federated_factory.errors import ManifestError, UnlearningError
from federated_factory.hub.manifest import FactoryEntry, Manifest, SynthesisConfig, load_manifest, parse_manifest

REPO_ROOT = Path(__file__).resolve().parents[1]
LABELS = ["0", "1", "2", "3"]


def _subset(dataset, digits, per_class):
    labels = np.asarray(dataset["label"])
    rows = np.concatenate([np.flatnonzero(labels == d)[:per_class] for d in digits])
    return dataset.select(np.sort(rows))


@pytest.fixture(scope="module")
def federation(hub, tmp_path_factory):
    """Publish factories A, B, C (tiny preset) and return their refs, tokens and a base manifest."""
    from federated_factory.client import preset, run_client
    from federated_factory.data import load_image_dataset

    train = load_image_dataset("mnist-5k", image_size=16, channels=1)
    config = preset("tiny", image_size=16, channels=1, train_steps=20)
    owners = {"A": "fed-alpha", "B": "fed-beta", "C": "fed-gamma"}
    tokens = {name: hub.add_user(user) for name, user in owners.items()}
    aggregator_token = hub.add_user("fed-aggregator")
    for name, user in owners.items():  # each hospital's org lets the aggregator read its private repo
        hub.server.set_org(f"{user}-org", [user, "fed-aggregator"])
    holdings = {"A": ([0, 1], {0: 60, 1: 90}), "B": ([1, 2], {1: 30, 2: 60}), "C": ([3], {3: 60})}
    refs = {}
    for name, (digits, counts) in holdings.items():
        labels = np.asarray(train["label"])
        rows = np.concatenate([np.flatnonzero(labels == d)[: counts[d]] for d in digits])
        repo = f"{owners[name]}-org/factory"
        published, _ = run_client(train.select(np.sort(rows)), repo, config, token=tokens[name],
                                  audit_samples_per_class=16, progress=False)
        refs[name] = published
    manifest = Manifest(
        federation="test-federation",
        label_space=list(LABELS),
        factories=[FactoryEntry(refs[n].repo_id, refs[n].revision) for n in "ABC"],
        synthesis=SynthesisConfig(samples_per_class=24, sampler="ddim", num_inference_steps=3, batch_size=8, seed=0),
        classifier={"epochs": 2, "batch_size": 32, "val_fraction": 0.2, "seed": 0},
        evaluation={"dataset": "mnist-5k", "split": "test", "image_size": 16, "channels": 1},
        output_dir=str(tmp_path_factory.mktemp("agg")),
        publish={"classifier_repo": "fed-aggregator/classifier", "dataset_repo": "fed-aggregator/synthetic", "private": True},
    )
    return {"refs": refs, "manifest": manifest, "token": aggregator_token, "tokens": tokens, "owners": owners}


# ---- manifest --------------------------------------------------------------------------------------


def test_manifest_reports_every_problem_at_once():
    bad = {
        "label_space": ["a", "a"],
        "factories": [{"repo": "not a repo"}, "org/x@abc", {"repo": "org/x"}],
        "synthesis": {"sampler": "euler", "samples_per_class": 0, "precision": "fp16"},
        "colour": "blue",
    }
    with pytest.raises(ManifestError) as err:
        parse_manifest(bad)
    message = str(err.value)
    for expected in ("duplicate class names", "not a valid repo id", "listed twice", "euler", "samples_per_class",
                     "synthesis.precision", "colour"):
        assert expected in message


def test_empty_manifest_is_refused(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"label_space": ["0"], "factories": []}))
    with pytest.raises(ManifestError, match="no factories"):
        load_manifest(path)


def test_manifest_round_trips_through_yaml(tmp_path, federation):
    path = federation["manifest"].save(tmp_path / "m.yaml")
    again = load_manifest(path)
    assert again.to_dict() == federation["manifest"].to_dict()
    assert again.content_hash() == federation["manifest"].content_hash()


# ---- plan ------------------------------------------------------------------------------------------


def test_plan_balances_classes_and_splits_shared_class_by_declared_counts(federation):
    from federated_factory.synthesis import plan_synthesis, pull_factories

    manifest = federation["manifest"]
    manifest_with_extra_class = Manifest(**{**manifest.__dict__, "label_space": LABELS + ["9"]})
    _, factories = pull_factories(manifest_with_extra_class, token=federation["token"])
    plan = plan_synthesis(manifest_with_extra_class.label_space, factories, manifest.synthesis)
    counts = plan.counts()
    assert all(counts[c] == 24 for c in LABELS)
    assert plan.missing_classes == ["9"] and counts["9"] == 0
    shared = {s.repo: s.count for s in plan.shards if s.class_name == "1"}
    a, b = federation["refs"]["A"].repo_id, federation["refs"]["B"].repo_id
    # A declared 81 training images of "1" and B 27 (90 and 30 minus the 10% audit hold-out): 3 to 1.
    assert shared == {a: 18, b: 6}
    assert len({s.stream_seed for s in plan.shards}) == len(plan.shards)


def test_branch_name_is_resolved_and_pinned(federation, tmp_path):
    from federated_factory.synthesis import pull_factories

    manifest = federation["manifest"]
    unpinned = Manifest(**{**manifest.__dict__, "factories": [FactoryEntry(f.repo, "main") for f in manifest.factories]})
    resolved, _ = pull_factories(unpinned, token=federation["token"])
    assert [f.revision for f in resolved] == [f.revision for f in manifest.factories]
    assert all(f.pinned for f in resolved)


# ---- bad input, all before compute ------------------------------------------------------------------


def _copy_factory_to(hub, federation, source_name: str, repo: str, token: str, edit=None, drop=(), add=None):
    """Re-upload a published factory's files to ``repo`` with edits (for the bad-input tests)."""
    from huggingface_hub import HfApi, snapshot_download

    src = federation["refs"][source_name]
    local = Path(snapshot_download(src.repo_id, revision=src.revision, token=federation["tokens"][source_name]))
    api = HfApi(token=token)
    api.create_repo(repo, private=True, exist_ok=True)
    from huggingface_hub import CommitOperationAdd

    ops = []
    for path in local.rglob("*"):
        rel = path.relative_to(local).as_posix()
        if path.is_file() and rel not in drop:
            data = path.read_bytes()
            if edit and rel in edit:
                data = edit[rel](data)
            ops.append(CommitOperationAdd(rel, data))
    for rel, data in (add or {}).items():
        ops.append(CommitOperationAdd(rel, data))
    return api.create_commit(repo, operations=ops, commit_message="copy").oid


def test_bad_factories_are_all_reported_before_any_compute(hub, federation, tmp_path):
    from federated_factory.aggregator import aggregate

    mallory = hub.add_user("fed-mallory")
    hub.server.set_org("fed-mallory-org", ["fed-mallory", "fed-aggregator"])
    pickled = _copy_factory_to(hub, federation, "C", "fed-mallory-org/pickled", mallory,
                               drop=("unet/diffusion_pytorch_model.safetensors",),
                               add={"unet/diffusion_pytorch_model.bin": b"not really a pickle"})
    resized = _copy_factory_to(hub, federation, "C", "fed-mallory-org/resized", mallory,
                               edit={"factory.json": lambda b: json.dumps({**json.loads(b), "image_size": 32}).encode()})
    alien = _copy_factory_to(hub, federation, "C", "fed-mallory-org/alien", mallory,
                             edit={"factory.json": lambda b: json.dumps({**json.loads(b), "classes": ["7"]}).encode()})
    hub.api("fed-mallory").create_repo("fed-mallory/secret", private=True)  # the aggregator may not read it
    manifest = Manifest(**{**federation["manifest"].__dict__, "factories": [
        FactoryEntry(federation["refs"]["A"].repo_id, federation["refs"]["A"].revision),
        FactoryEntry("fed-mallory-org/pickled", pickled),
        FactoryEntry("fed-mallory-org/resized", resized),
        FactoryEntry("fed-mallory-org/alien", alien),
        FactoryEntry("fed-mallory/secret", "main"),
        FactoryEntry("fed-nobody/missing", "main"),
    ], "output_dir": str(tmp_path / "out")})
    with pytest.raises(ManifestError) as err:
        aggregate(manifest, token=federation["token"], cache_dir=tmp_path / "cache", publish=False, progress=False)
    message = str(err.value)
    assert "fed-mallory-org/pickled" in message and "pickle-only" in message
    assert "fed-mallory-org/alien" in message and "outside the label space" in message
    assert "image size" in message and "fed-mallory-org/resized" in message
    assert "fed-mallory/secret" in message and "fed-nobody/missing" in message
    assert not (tmp_path / "cache").exists(), "no synthesis may start when the manifest has problems"


# ---- synthesis: determinism, processes, cache ------------------------------------------------------


def _dataset_rows(path):
    from datasets import load_from_disk

    ds = load_from_disk(str(path))
    return [(r["image"].tobytes(), r["label"], r["source_repo"], r["source_revision"], r["seed"], r["index"]) for r in ds]


@pytest.fixture(scope="module")
def single_process_run(federation, tmp_path_factory):
    from federated_factory.aggregator import aggregate

    out = tmp_path_factory.mktemp("single")
    result = aggregate(federation["manifest"], token=federation["token"], output_dir=out / "out",
                       cache_dir=out / "cache", progress=False)
    return result, out


def test_aggregation_produces_dataset_classifier_evaluation_and_cards(hub, federation, single_process_run):
    from datasets import load_dataset
    from huggingface_hub import ModelCard, hf_hub_download

    result, _ = single_process_run
    out = result.output_dir
    for name in ("manifest.resolved.yaml", "results.json", "synthetic_samples.png", "confusion_matrix.png",
                 "classifier/model.safetensors", "classifier/config.json"):
        assert (out / name).exists(), name
    assert set(result.evaluation) >= {"accuracy", "macro_f1", "auroc", "per_class_recall", "confusion_matrix"}
    token = federation["token"]
    classifier = result.published["classifier"]
    card = ModelCard.load(classifier["repo"], token=token)
    for factory in result.manifest.factories:
        assert f"{factory.repo}@{factory.revision}" in card.content
    assert card.data.to_dict()["model-index"][0]["results"][0]["metrics"][0]["value"] == pytest.approx(result.evaluation["accuracy"])
    dataset_ref = result.published["dataset"]
    assert f"{dataset_ref['repo']}@{dataset_ref['revision']}" in card.content
    assert result.training["selection"]["note"] in card.content  # what the epoch selection really did
    pulled = load_dataset(dataset_ref["repo"], revision=dataset_ref["revision"], token=token, split="train")
    assert len(pulled) == 24 * len(LABELS)
    assert set(pulled["source_repo"]) == {f.repo for f in result.manifest.factories}
    config = json.loads(Path(hf_hub_download(classifier["repo"], "config.json", token=token)).read_text())
    assert config["label_names"] == LABELS


def test_two_processes_give_the_identical_dataset(federation, single_process_run, tmp_path):
    _, single_dir = single_process_run
    manifest_path = federation["manifest"].save(tmp_path / "manifest.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # On a CPU-only machine accelerate's `--cpu` launcher starts several processes only through mpirun;
    # `--multi_gpu` launches through torchrun and the recipe falls back to CPU DDP (gloo) without a GPU.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(REPO_ROOT / "recipes" / "aggregate.py"), "--manifest", str(manifest_path),
           "--endpoint", os.environ["HF_ENDPOINT"], "--token", federation["token"],
           "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--no-publish", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert federation["token"] not in proc.stdout + proc.stderr
    assert _dataset_rows(tmp_path / "out" / "synthetic") == _dataset_rows(single_dir / "out" / "synthetic")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["synthesis"]["processes"] == 2
    assert results["evaluation"]["accuracy"] >= 0


def test_interrupted_synthesis_resumes_from_cached_chunks(federation, tmp_path):
    from federated_factory.synthesis import ChunkCache, assemble_dataset, plan_synthesis, pull_factories, synthesize

    manifest = federation["manifest"]
    _, factories = pull_factories(manifest, token=federation["token"])
    plan = plan_synthesis(manifest.label_space, factories, manifest.synthesis)
    cache = ChunkCache(tmp_path / "chunks", manifest.synthesis)
    first = synthesize(plan, factories, cache, progress=False)
    reference = assemble_dataset(plan, cache)
    chunk_files = sorted((tmp_path / "chunks").rglob("chunk-*.npy"))
    assert first.chunks_generated == len(chunk_files) == first.chunks_total
    for path in chunk_files[::3]:  # an "interrupted" run: a third of the chunks never got written
        path.unlink()
    (chunk_files[1].parent / ".chunk-99999.npy.123.tmp").write_bytes(b"half-written")  # leftovers are ignored
    second = synthesize(plan, factories, cache, progress=False)
    assert second.chunks_generated == len(chunk_files[::3])
    assert assemble_dataset(plan, cache)["image"] == reference["image"]
    third = synthesize(plan, factories, cache, progress=False)
    assert third.chunks_generated == 0


def test_bf16_synthesis_is_deterministic_close_to_fp32_and_cached_apart(federation, tmp_path):
    """bf16 autocast changes the images (by at most a couple of grey levels here), so its chunks live under
    their own cache keys; fp32 keys stay what they were before precision was a setting."""
    import dataclasses

    from federated_factory.synthesis import ChunkCache, assemble_dataset, plan_synthesis, pull_factories, synthesize

    manifest = federation["manifest"]
    bf16 = dataclasses.replace(manifest.synthesis, precision="bf16")
    _, factories = pull_factories(manifest, token=federation["token"])
    plan = plan_synthesis(manifest.label_space, factories, manifest.synthesis)
    fp32_cache = ChunkCache(tmp_path / "chunks", manifest.synthesis)
    bf16_cache = ChunkCache(tmp_path / "chunks", bf16)
    shard = plan.shards[0]
    assert fp32_cache.stream_key(shard) != bf16_cache.stream_key(shard)
    assert "precision" not in manifest.to_dict()["synthesis"]  # the default is left out of the manifest
    assert dataclasses.replace(manifest, synthesis=bf16).content_hash() != manifest.content_hash()

    synthesize(plan, factories, fp32_cache, progress=False)
    total = sum(len(list(s.chunks(bf16.batch_size))) for s in plan.shards)
    assert synthesize(plan, factories, bf16_cache, progress=False).chunks_generated == total  # none reused
    fp32 = np.stack([np.asarray(im, dtype=np.int16) for im in assemble_dataset(plan, fp32_cache)["image"]])
    half = np.stack([np.asarray(im, dtype=np.int16) for im in assemble_dataset(plan, bf16_cache)["image"]])
    again_cache = ChunkCache(tmp_path / "again", bf16)
    synthesize(plan, factories, again_cache, progress=False)
    again = np.stack([np.asarray(im, dtype=np.int16) for im in assemble_dataset(plan, again_cache)["image"]])
    assert np.array_equal(half, again)  # deterministic
    assert not np.array_equal(half, fp32)
    assert np.abs(half - fp32).mean() < 2.0  # grey levels out of 255: the same images up to rounding


# ---- classifier.init_from lineage ------------------------------------------------------------------


def test_init_from_that_learned_from_the_removed_factory_is_refused_before_any_compute(federation, single_process_run,
                                                                                        tmp_path):
    """The previous classifier learned from C: starting the rebuild from it would carry C's influence over."""
    from federated_factory.aggregator import aggregate
    from federated_factory.unlearning import check_init_from, unlearn

    result, single_dir = single_process_run
    removed = federation["refs"]["C"].repo_id
    published = result.published["classifier"]
    hub_source = f"{published['repo']}@{published['revision']}"
    for source in (str(result.output_dir / "classifier"), hub_source):  # a local folder and a Hub revision
        manifest = Manifest(**{**result.manifest.__dict__, "classifier": {**result.manifest.classifier, "init_from": source}})
        with pytest.raises(UnlearningError, match="learned from the removed factory") as err:
            unlearn(manifest, removed, output_dir=tmp_path / "u", cache_dir=single_dir / "cache",
                    token=federation["token"], progress=False)
        assert removed in str(err.value)
        assert not (tmp_path / "u").exists()
    # a manifest whose history removed C refuses the same init_from at aggregation time, before any compute
    reduced = manifest.without(removed)
    reduced.history = [{"removed": {"repo": removed, "revision": federation["refs"]["C"].revision}}]
    with pytest.raises(ManifestError, match="learned from the removed factory"):
        aggregate(reduced, token=federation["token"], output_dir=tmp_path / "a", cache_dir=tmp_path / "cache",
                  publish=False, progress=False)
    assert not (tmp_path / "cache").exists()
    # a lineage without the removed factory is returned, as the certificate records it
    lineage = check_init_from(hub_source, [{"repo": "fed-nobody/factory"}], token=federation["token"])
    assert lineage[0]["source"] == hub_source
    assert sorted(f.partition("@")[0] for f in lineage[0]["factories"]) == sorted(f.repo for f in result.manifest.factories)
    assert sorted(lineage[0]["digests"]) == sorted(f.digest for f in result.manifest.factories)


def test_init_from_lineage_follows_the_chain_and_refuses_unknown_provenance(federation, single_process_run, tmp_path):
    import shutil

    from federated_factory.unlearning import check_init_from

    result, _ = single_process_run
    removed = {"repo": federation["refs"]["C"].repo_id}
    # a child classifier whose own data never saw C, but which started from the classifier that did
    child = tmp_path / "child" / "classifier"
    shutil.copytree(result.output_dir / "classifier", child)
    config = json.loads((child / "config.json").read_text())
    config["federated_factory"]["config"]["init_from"] = str(result.output_dir / "classifier")
    (child / "config.json").write_text(json.dumps(config))
    kept = [f for f in result.manifest.to_dict()["factories"] if f["repo"] != removed["repo"]]
    (child.parent / "results.json").write_text(json.dumps({"manifest": {"factories": kept}}))
    with pytest.raises(UnlearningError, match="learned from the removed factory") as err:
        check_init_from(str(child), [removed], token=federation["token"])
    assert str(result.output_dir / "classifier") in str(err.value)
    # a classifier with no card and no results.json: nothing shows what it learned from
    orphan = tmp_path / "orphan"
    shutil.copytree(result.output_dir / "classifier", orphan)
    with pytest.raises(UnlearningError, match="cannot be established"):
        check_init_from(str(orphan), [removed], token=federation["token"])


# ---- unlearning ----------------------------------------------------------------------------------------


def _holders(root, secrets: dict[str, bytes], skip_sha256: set[str] = frozenset()) -> dict[str, list[str]]:
    """Per name, the files under ``root`` whose path or content holds the secret's bytes or its sha256 (hex);
    files whose own sha256 is in ``skip_sha256`` are not searched for the hex (only for the bytes)."""
    import hashlib

    digests = {name: hashlib.sha256(data).hexdigest() for name, data in secrets.items()}
    found = {name: [] for name in secrets}
    for folder, _, files in os.walk(root):
        for file in files:
            path = os.path.join(folder, file)
            with open(path, "rb") as f:
                data = f.read()
            own = hashlib.sha256(data).hexdigest()
            for name, secret in secrets.items():
                hex_hit = own not in skip_sha256 and (digests[name] in path or digests[name].encode() in data)
                if secret in data or hex_hit:
                    found[name].append(os.path.relpath(path, root))
    return found


@pytest.fixture(scope="module")
def superseded(hub, single_process_run, federation):
    """The previous classifier's weights and the previous dataset's parquet (its rows from C included), downloaded
    before the unlearning, and proof that the endpoint's data directory holds them at that point."""
    import pandas as pd
    from huggingface_hub import hf_hub_download

    result, _ = single_process_run
    token = federation["token"]
    classifier, dataset = result.published["classifier"], result.published["dataset"]
    weights = Path(hf_hub_download(classifier["repo"], "model.safetensors", revision=classifier["revision"],
                                   token=token)).read_bytes()
    parquet_path = hf_hub_download(dataset["repo"], "data/train-00000-of-00001.parquet", repo_type="dataset",
                                   revision=dataset["revision"], token=token)
    assert federation["refs"]["C"].repo_id in set(pd.read_parquet(parquet_path)["source_repo"])
    secrets = {"weights": weights, "parquet": Path(parquet_path).read_bytes()}
    found = _holders(hub.data_dir, secrets)
    assert found["weights"] and found["parquet"], found  # the scan sees them before the purge
    return secrets


@pytest.fixture(scope="module")
def unlearned(hub, federation, single_process_run, superseded, tmp_path_factory):
    from federated_factory.unlearning import unlearn

    result, single_dir = single_process_run
    out = tmp_path_factory.mktemp("unlearned")
    certificate = unlearn(result.manifest, federation["refs"]["C"].repo_id, reason="test: hospital C leaves",
                          previous_output_dir=result.output_dir, output_dir=out / "out", cache_dir=single_dir / "cache",
                          token=federation["token"], verify_from_scratch=True, purge_history=True, progress=False)
    return certificate, out


def test_unlearning_removes_every_example_of_the_client(unlearned, federation):
    from datasets import load_from_disk

    certificate, out = unlearned
    removed = federation["refs"]["C"].repo_id
    dataset = load_from_disk(str(out / "out" / "synthetic"))
    assert removed not in set(dataset["source_repo"])
    assert certificate["examples_from_removed"] == 0
    assert certificate["removed"] == {"repo": removed, "revision": federation["refs"]["C"].revision,
                                      "digest": certificate["manifest_before"]["factories"][2]["digest"]}
    assert len(certificate["removed"]["digest"]) == 64
    assert certificate["manifest_hash_before"] != certificate["manifest_hash_after"]
    assert removed not in [f["repo"] for f in certificate["manifest_after"]["factories"]]


def test_unlearning_reuses_cache_and_matches_a_from_scratch_aggregation_bit_for_bit(unlearned):
    certificate, _ = unlearned
    assert certificate["chunks_regenerated"] == 0
    assert certificate["from_scratch"]["identical"] is True
    assert certificate["from_scratch"]["classifier_weights_sha256"] == certificate["classifier_weights_sha256"]
    assert certificate["published_despite_mismatch"] is False


def test_unlearning_certificate_says_what_each_check_established(unlearned):
    certificate, _ = unlearned
    checks = {c["check"]: c for c in certificate["checks"]}
    assert list(checks) == ["manifest", "provenance", "init_from", "from_scratch", "erasure"]
    assert checks["manifest"]["result"] == "passed"
    assert checks["provenance"]["result"] == f"0 of {certificate['examples_total']} rows"
    assert checks["init_from"]["result"].startswith("not used")
    assert checks["from_scratch"]["result"] == "identical"
    assert "deterministic function of the reduced manifest" in checks["from_scratch"]["what"]
    assert "deterministic function of the reduced manifest" in certificate["from_scratch_check"]


def test_class_held_only_by_removed_client_leaves_the_label_space(unlearned):
    certificate, out = unlearned
    assert certificate["classes_removed"] == ["3"]
    assert certificate["manifest_after"]["label_space"] == ["0", "1", "2"]
    config = json.loads((out / "out" / "classifier" / "config.json").read_text())
    assert config["label_names"] == ["0", "1", "2"]
    assert certificate["per_class_recall_after"]["3"] == 0.0


def test_purge_history_leaves_no_revision_that_references_the_removed_repo(hub, unlearned, federation):
    """After --purge-history no revision of the published repos lists the removed factory as a source: not
    in the card's provenance metadata, not in any dataset row. (The new card's unlearning record still names
    the removed repo@sha, by design: it is the audit trail of the removal.)"""
    import pandas as pd
    from huggingface_hub import HfApi, hf_hub_download

    certificate, _ = unlearned
    removed = federation["refs"]["C"].repo_id
    token = federation["token"]
    api = HfApi(token=token)
    for repo, repo_type in ((certificate["published"]["classifier"]["repo"], "model"),
                            (certificate["published"]["dataset"]["repo"], "dataset")):
        commits = api.list_repo_commits(repo, repo_type=repo_type)
        # the squashed, emptied history, the new revision and (classifier) the commit of the erasure certificate
        assert len(commits) == (3 if repo_type == "model" else 2)
        assert api.list_repo_files(repo, repo_type=repo_type, revision=commits[-1].commit_id) == [".gitattributes"]
        for commit in commits:
            files = api.list_repo_files(repo, repo_type=repo_type, revision=commit.commit_id)
            if "README.md" in files:
                text = Path(hf_hub_download(repo, "README.md", repo_type=repo_type, revision=commit.commit_id,
                                            token=token)).read_text()
                metadata = yaml.safe_load(text.split("---")[1])
                assert not any(f.startswith(f"{removed}@") for f in metadata["federated_factory"]["factories"])
            for name in files:
                if name.endswith(".parquet"):
                    rows = pd.read_parquet(hf_hub_download(repo, name, repo_type=repo_type, revision=commit.commit_id,
                                                           token=token))
                    assert removed not in set(rows["source_repo"])


def test_purge_history_erases_the_superseded_files_from_the_endpoint_s_disk(hub, unlearned, superseded, federation,
                                                                          tmp_path):
    """The certificate lists the sha256 of the old classifier weights and the old parquet (with C's rows); no file of
    the endpoint's data directory holds their bytes or their sha256 (except the new certificate and card, which
    list it by design); the checks ran through the API; the new revisions still download."""
    import hashlib

    import pandas as pd
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import RevisionNotFoundError

    certificate, out = unlearned
    erasure = certificate["erasure"]
    token = federation["token"]
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in superseded.items()}
    assert set(digests.values()) <= set(erasure["erased_sha256"])
    by_sha = {f["sha256"]: f for f in erasure["erased_files"]}
    assert by_sha[digests["weights"]]["path"] == "model.safetensors" and by_sha[digests["weights"]]["lfs"]
    assert by_sha[digests["parquet"]]["size"] == len(superseded["parquet"])
    assert erasure["verified"] is True and {c["check"] for c in erasure["checks"]} == {
        "refs", "superseded_revisions", "revisions", "lfs_listing"}
    assert all(c["result"] == "passed" for c in erasure["checks"])
    assert any("unlink" in limit for limit in erasure["limits"]) and any("shared" in limit for limit in erasure["limits"])
    assert json.loads((out / "out" / "unlearning_certificate.json").read_text())["erasure"]["erased_sha256"] == \
        erasure["erased_sha256"]

    classifier, dataset = certificate["published"]["classifier"], certificate["published"]["dataset"]
    card = Path(hf_hub_download(classifier["repo"], "README.md", revision=classifier["revision"], token=token))
    published_certificate = Path(hf_hub_download(classifier["repo"], "unlearning_certificate.json",
                                                 revision=classifier["revision"], token=token))
    assert digests["weights"] in card.read_text() and "History erased (verified)" in card.read_text()
    assert json.loads(published_certificate.read_text())["erasure"]["erased_sha256"] == erasure["erased_sha256"]
    records = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (card, published_certificate)}
    found = _holders(hub.data_dir, superseded, skip_sha256=records)
    assert found == {"weights": [], "parquet": []}, found

    api = HfApi(token=token)
    assert all(r["revisions_superseded"] for r in erasure["repos"])
    for record in erasure["repos"]:  # a superseded revision no longer resolves
        with pytest.raises(RevisionNotFoundError):
            api.repo_info(record["repo"], repo_type=record["repo_type"], revision=record["revisions_superseded"][0])
    weights = hf_hub_download(classifier["repo"], "model.safetensors", revision=classifier["revision"], token=token,
                              cache_dir=tmp_path / "fresh")
    assert Path(weights).read_bytes() == (out / "out" / "classifier" / "model.safetensors").read_bytes()
    rows = pd.read_parquet(hf_hub_download(dataset["repo"], "data/train-00000-of-00001.parquet", repo_type="dataset",
                                           revision=dataset["revision"], token=token, cache_dir=tmp_path / "fresh"))
    assert len(rows) == certificate["examples_total"] and federation["refs"]["C"].repo_id not in set(rows["source_repo"])


def test_unlearning_an_unknown_or_last_factory_changes_nothing(federation, tmp_path):
    from federated_factory.unlearning import unlearn

    manifest = federation["manifest"]
    with pytest.raises(UnlearningError, match="not in the manifest"):
        unlearn(manifest, "fed-nobody/factory", output_dir=tmp_path / "a", token=federation["token"], progress=False)
    with pytest.raises(UnlearningError, match="not in the manifest"):  # right repo, wrong revision
        unlearn(manifest, f"{manifest.factories[0].repo}@{'0' * 40}", output_dir=tmp_path / "a",
                token=federation["token"], progress=False)
    only = Manifest(**{**manifest.__dict__, "factories": manifest.factories[:1]})
    with pytest.raises(UnlearningError, match="last factory"):
        unlearn(only, manifest.factories[0].repo, output_dir=tmp_path / "b", token=federation["token"], progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _unlearn_cli(manifest_path, removed, out, cache, token, *extra) -> int:
    from federated_factory.cli import main

    return main(["unlearn", "--manifest", str(manifest_path), "--remove", removed, "--reason", "test: mismatch",
                 "--output-dir", str(out), "--cache-dir", str(cache), "--token", token, "--no-progress", *extra])


def test_a_failed_from_scratch_check_stops_before_publishing_unless_explicitly_overridden(
        hub, federation, single_process_run, tmp_path, monkeypatch, capsys):
    """The rebuild and the from-scratch rebuild differ (here: the from-scratch run trains with another classifier
    seed, as a non-deterministic kernel would): nothing is published and the command fails, unless
    --publish-despite-mismatch, which the certificate and the card then record."""
    import federated_factory.aggregator as aggregator_module
    from huggingface_hub import ModelCard

    real_aggregate = aggregator_module.aggregate

    def diverging_aggregate(manifest, **kwargs):
        if "from-scratch-check" in str(kwargs.get("output_dir")):
            manifest = Manifest(**{**manifest.__dict__, "classifier": {**manifest.classifier, "seed": 12345}})
        return real_aggregate(manifest, **kwargs)

    monkeypatch.setattr(aggregator_module, "aggregate", diverging_aggregate)
    result, single_dir = single_process_run
    repos = {"classifier_repo": "fed-aggregator/classifier-mismatch", "dataset_repo": "fed-aggregator/synthetic-mismatch",
             "private": True}
    manifest_path = Manifest(**{**result.manifest.__dict__, "publish": repos}).save(tmp_path / "manifest.yaml")
    removed, token = federation["refs"]["C"].repo_id, federation["token"]
    api = hub.api("fed-aggregator")

    assert _unlearn_cli(manifest_path, removed, tmp_path / "refused", single_dir / "cache", token) == 2
    assert "from-scratch check failed" in capsys.readouterr().err
    assert not api.repo_exists(repos["classifier_repo"]) and not api.repo_exists(repos["dataset_repo"], repo_type="dataset")
    certificate = json.loads((tmp_path / "refused" / "unlearning_certificate.json").read_text())
    assert certificate["from_scratch"]["identical"] is False and certificate["from_scratch_check"].startswith("MISMATCH")
    assert certificate["published"] is None and certificate["published_despite_mismatch"] is False

    assert _unlearn_cli(manifest_path, removed, tmp_path / "forced", single_dir / "cache", token,
                        "--publish-despite-mismatch") == 0
    certificate = json.loads((tmp_path / "forced" / "unlearning_certificate.json").read_text())
    assert certificate["published_despite_mismatch"] is True
    assert certificate["published"]["classifier"]["repo"] == repos["classifier_repo"]
    card = ModelCard.load(repos["classifier_repo"], token=token)
    assert "published despite a failed from-scratch check" in card.content
