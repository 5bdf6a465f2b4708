"""Network mode end to end through the project's Hub endpoint: experts, product of experts, unlearning.

Three hospitals publish tiny factories: A holds digits 0 and 1, B holds 1 and 2, C holds 3. Each hospital
trains an expert on its own real images plus synthetic images of the classes it lacks; the federation model
is the product of the three experts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from federated_factory.hub.manifest import FactoryEntry, Manifest, SynthesisConfig

LABELS = ["0", "1", "2", "3"]
HOLDINGS = {"A": {0: 40, 1: 50}, "B": {1: 20, 2: 40}, "C": {3: 40}}


def _rows(train, counts):
    labels = np.asarray(train["label"])
    return train.select(np.sort(np.concatenate([np.flatnonzero(labels == d)[:n] for d, n in counts.items()])))


@pytest.fixture(scope="module")
def network(hub, tmp_path_factory):
    """Publish factories A, B, C; return the manifest, each hospital's data and token, and a shared cache."""
    from federated_factory.client import preset, run_client
    from federated_factory.data import load_image_dataset
    from federated_factory.network import Hospital

    train = load_image_dataset("mnist-5k", image_size=16, channels=1)
    config = preset("tiny", image_size=16, channels=1, train_steps=20)
    owners = {"A": "net-alpha", "B": "net-beta", "C": "net-gamma"}
    tokens = {name: hub.add_user(user) for name, user in owners.items()}
    federation_token = hub.add_user("net-federation")
    hospitals, refs = {}, {}
    for name, user in owners.items():  # each hospital's org lets the federation (and the other hospitals) read it
        hub.server.set_org(f"{user}-org", [user, "net-federation", *[u for u in owners.values() if u != user]])
    for name, counts in HOLDINGS.items():
        data = _rows(train, counts)
        repo = f"{owners[name]}-org/factory"
        refs[name], _ = run_client(data, repo, config, token=tokens[name], audit_samples_per_class=16, progress=False)
        hospitals[name] = Hospital(name=name, data=data, factory=repo, expert_repo=f"{owners[name]}-org/expert",
                                   token=tokens[name])
    manifest = Manifest(
        federation="test-network",
        label_space=list(LABELS),
        factories=[FactoryEntry(refs[n].repo_id, refs[n].revision) for n in "ABC"],
        synthesis=SynthesisConfig(samples_per_class=24, sampler="ddim", num_inference_steps=3, batch_size=8, seed=0),
        classifier={"epochs": 2, "batch_size": 32, "val_fraction": 0.2, "seed": 0},
        evaluation={"dataset": "mnist-5k", "split": "test", "image_size": 16, "channels": 1},
        output_dir=str(tmp_path_factory.mktemp("network")),
    )
    return {"manifest": manifest, "hospitals": hospitals, "refs": refs, "tokens": tokens,
            "token": federation_token, "cache": tmp_path_factory.mktemp("cache")}


@pytest.fixture(scope="module")
def server_cache(network):
    """The aggregator's chunks for the full server plan, in the cache the experts then share."""
    from federated_factory.synthesis import ChunkCache, plan_synthesis, pull_factories, synthesize

    manifest = network["manifest"]
    _, factories = pull_factories(manifest, token=network["token"])
    plan = plan_synthesis(manifest.label_space, factories, manifest.synthesis)
    cache = ChunkCache(network["cache"] / "chunks", manifest.synthesis)
    synthesize(plan, factories, cache, progress=False)
    return plan, cache


@pytest.fixture(scope="module")
def network_run(network, server_cache, tmp_path_factory):
    """Every hospital trains and publishes its expert; the experts are combined and published."""
    from federated_factory.network import train_network

    return train_network(network["manifest"], [network["hospitals"][n] for n in "ABC"],
                         federation_repo="net-federation/federation-model", cache_dir=network["cache"],
                         token=network["token"], output_dir=tmp_path_factory.mktemp("network-run"), progress=False)


@pytest.fixture(scope="module")
def experts(network_run):
    return network_run.experts


@pytest.fixture(scope="module")
def combined(network_run):
    return network_run.combined


# ---- experts ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_experts_trained_in_worker_processes_are_the_experts_trained_in_one(network, experts, tmp_path):
    """``workers=2``: this process fills a fresh cache with every chunk the experts draw, then the experts train
    in two spawned processes (one thread each): the same weights as the experts trained in the test's process."""
    from federated_factory.network import train_network

    parallel = train_network(network["manifest"], [network["hospitals"][n] for n in "ABC"],
                             cache_dir=tmp_path / "cache", token=network["token"], output_dir=tmp_path / "out",
                             publish=False, evaluate=False, progress=False, workers=2)
    assert list(parallel.experts) == list(experts)
    for name, expert in experts.items():
        assert parallel.experts[name].weights_sha256 == expert.weights_sha256, name
        assert parallel.experts[name].synthesis["chunks_generated"] == 0  # this process generated them first
    assert any((tmp_path / "cache" / "chunks").rglob("*"))


@pytest.mark.slow
def test_expert_trains_on_its_own_rows_and_synthetic_rows_of_other_factories_only(network, experts, server_cache):
    from federated_factory.network import OWN_DATA_SOURCE
    from federated_factory.network.expert import data_fingerprint, read_provenance

    plan, _ = server_cache
    refs = network["refs"]
    for name, result in experts.items():
        hospital = network["hospitals"][name]
        provenance = read_provenance(result.output_dir)
        sources = np.asarray(provenance["source_repo"])
        labels = np.asarray(provenance["label"])
        own = sources == OWN_DATA_SOURCE
        own_classes = sorted(LABELS[k] for k in set(labels[own].tolist()))
        assert own_classes == result.own_classes == [str(d) for d in sorted(HOLDINGS[name])]
        # own rows: the hospital's own images (fingerprint of exactly those rows), at most samples_per_class a class
        own_rows = hospital.data.select(sorted(np.asarray(provenance["index"])[own].tolist()))
        assert set(np.asarray(provenance["source_revision"])[own]) == {data_fingerprint(own_rows, 1)}
        for d, available in HOLDINGS[name].items():
            assert (labels[own] == d).sum() == min(available, 24)
        # every other row is synthetic, from another hospital's factory, of a class this hospital lacks
        others = {refs[n].repo_id for n in refs if n != name}
        assert set(sources[~own]) <= others and set(sources[~own])
        assert not set(labels[~own].tolist()) & set(HOLDINGS[name])
        # ... and they are exactly the server plan's shards for those classes (same streams, same counts)
        lacking = [c for c in LABELS if int(c) not in HOLDINGS[name]]
        expected = sorted((s.repo, s.revision, s.stream_seed, i) for s in plan.shards if s.class_name in lacking
                          for i in range(s.count))
        got = sorted(zip(sources[~own], np.asarray(provenance["source_revision"])[~own],
                         np.asarray(provenance["seed"])[~own], np.asarray(provenance["index"])[~own]))
        assert [tuple(g) for g in got] == [tuple(e) for e in expected]
        assert result.synthesis["chunks_generated"] == 0, "the aggregator's cached chunks are reused"
        assert set(provenance["split"]) == {"train", "validation"}


@pytest.mark.slow
def test_top_up_fills_a_thinly_held_class_with_the_first_rows_of_its_server_shards(network, server_cache, tmp_path):
    """B holds 20 images of "1" (< N = 24): with ``top_up`` it also gets 4 synthetic "1"s, the first rows of the
    two "1" shards (A's and B's factories, split by their declared counts 50:20), read from the aggregator's
    chunks; its lacking classes get their whole shards as before, and "2" (40 ≥ 24 images) gets none."""
    from federated_factory.network import OWN_DATA_SOURCE, train_expert
    from federated_factory.network.expert import read_provenance
    from federated_factory.synthesis import split_by_counts

    plan, _ = server_cache
    hospital = network["hospitals"]["B"]
    result = train_expert(network["manifest"], hospital.data, cache_dir=network["cache"], token=hospital.token,
                          output_dir=tmp_path / "expert", publish=False, progress=False, top_up=True)
    provenance = read_provenance(result.output_dir)
    sources, labels = np.asarray(provenance["source_repo"]), np.asarray(provenance["label"])
    synthetic = sources != OWN_DATA_SOURCE
    assert (labels[~synthetic] == 1).sum() == 20 and (labels[synthetic] == 1).sum() == 4
    assert (labels == 1).sum() == 24 and (labels[synthetic] == 2).sum() == 0
    ones = [s for s in plan.shards if s.class_name == "1"]
    expected = sorted((s.repo, s.stream_seed, i) for s, n in zip(ones, split_by_counts(4, [s.count for s in ones]))
                      for i in range(n))
    got = sorted((r, int(k), int(i)) for r, k, i, y in zip(sources, provenance["seed"], provenance["index"], labels)
                 if r != OWN_DATA_SOURCE and y == 1)
    assert got == expected and len({r for r, _, _ in got}) == 2
    for c in ("0", "3"):  # lacking: the whole server shards, as without the top-up
        assert (labels[synthetic] == int(c)).sum() == sum(s.count for s in plan.shards if s.class_name == c)
    assert result.synthetic_classes == ["0", "1", "3"] and result.top_up
    assert json.loads((result.expert_dir / "expert.json").read_text())["top_up"] is True
    assert result.synthesis["chunks_generated"] == 0, "the top-up reads the aggregator's cached chunks"


@pytest.mark.slow
def test_expert_is_published_with_its_provenance_and_validation_metrics(network, experts):
    from huggingface_hub import HfApi, ModelCard, hf_hub_download

    from federated_factory.network.product import resolved_manifest_hash

    result = experts["A"]
    token = network["tokens"]["A"]
    pub = result.published["expert"]
    files = set(HfApi(token=token).list_repo_files(pub["repo"], revision=pub["revision"]))
    assert {"config.json", "model.safetensors", "expert.json", "README.md"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    config = json.loads(Path(hf_hub_download(pub["repo"], "expert.json", revision=pub["revision"], token=token)).read_text())
    assert config["manifest_hash"] == resolved_manifest_hash(network["manifest"], token=token)
    assert config["label_space"] == LABELS
    assert config["synthetic_classes"] == ["2", "3"]
    card = ModelCard.load(pub["repo"], token=token)
    for ref in config["factories_used"]:
        assert ref in card.content
    assert config["validation"]["all"]["accuracy"] == pytest.approx(result.validation["all"]["accuracy"])
    assert result.validation["real"]["n"] > 0 and result.validation["synthetic"]["n"] > 0
    assert HfApi(token=token).model_info(pub["repo"]).private


# ---- product of experts -------------------------------------------------------------------------------


def _test_batch(n=64):
    from federated_factory.data import load_image_dataset
    from federated_factory.tensors import dataset_to_tensors

    test = load_image_dataset("mnist-5k", split="test", image_size=16, channels=1)
    return dataset_to_tensors(test.select(range(n)), 1)[0]


@pytest.mark.slow
def test_product_equals_the_sum_of_clamped_log_probabilities_computed_by_hand(combined):
    model = combined.model
    x = _test_batch()
    with torch.no_grad():
        by_hand = sum(torch.log_softmax(expert(x), dim=1).clamp(min=np.log(1e-6)) for expert in model.experts)
        out = model(x)
    assert len(model.experts) == 3
    torch.testing.assert_close(out, by_hand, rtol=0, atol=1e-5)
    torch.testing.assert_close(model.predict_proba(x), torch.softmax(by_hand, 1), rtol=0, atol=1e-6)


def test_an_expert_that_rules_a_class_out_is_clamped_at_the_floor():
    from federated_factory.network import ProductOfExperts

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = torch.nn.Parameter(torch.tensor([logits]))

        def forward(self, x):
            return self.logits.expand(len(x), -1)

    model = ProductOfExperts([Fixed([0.0, -100.0]), Fixed([0.0, 0.0])], ["a", "b"], floor=1e-6)
    out = model(torch.zeros(2, 1, 4, 4))
    expected = torch.tensor([np.log(1 / (1 + np.exp(-100.0))) + np.log(0.5), np.log(1e-6) + np.log(0.5)],
                            dtype=torch.float32)
    torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-5)
    assert model.predict_proba(torch.zeros(1, 1, 4, 4))[0, 1] == pytest.approx(1e-6, rel=1e-3)


@pytest.mark.slow
def test_published_federation_model_reloads_and_predicts_identically(network, combined):
    from huggingface_hub import ModelCard

    from federated_factory.network import ProductOfExperts

    pub = combined.published["federation_model"]
    again = ProductOfExperts.from_pretrained(pub["repo"], revision=pub["revision"], token=network["token"])
    x = _test_batch()
    with torch.no_grad():
        assert torch.equal(again(x), combined.model(x))
    assert again.label_names == LABELS and again.manifest_hash == combined.manifest_hash
    card = ModelCard.load(pub["repo"], token=network["token"])
    listed = card.data.to_dict()["federated_factory"]["experts"]
    assert listed == [f"{e['repo']}@{e['revision']}" for e in combined.experts]


@pytest.mark.slow
def test_product_and_each_expert_are_evaluated_with_the_aggregators_metrics(network_run, combined):
    evaluation = combined.evaluation
    assert set(evaluation["product"]) >= {"accuracy", "macro_f1", "auroc", "per_class_recall", "confusion_matrix"}
    assert set(evaluation["experts"]) == {f"{e['repo']}@{e['revision']}" for e in combined.experts}
    for metrics in evaluation["experts"].values():
        assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["n"] == evaluation["product"]["n"]
    summary = network_run.summary()
    assert [row["hospital"] for row in summary["experts"]] == ["A", "B", "C"]
    assert [row["test_accuracy"] for row in summary["experts"]] == [
        evaluation["experts"][f"{e['repo']}@{e['revision']}"]["accuracy"] for e in combined.experts]
    assert summary["product"]["accuracy"] == evaluation["product"]["accuracy"]


# ---- bad input: one error naming the repo, before any compute ----------------------------------------------


def _copy_expert(hub, network, result, repo, edit):
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=network["token"])
    api.create_repo(repo, private=True, exist_ok=True)
    ops = []
    for item in result.expert_dir.iterdir():
        data = item.read_bytes()
        if item.name == "expert.json":
            data = json.dumps(edit(json.loads(data))).encode()
        ops.append(CommitOperationAdd(item.name, data))
    return f"{repo}@{api.create_commit(repo, operations=ops, commit_message='copy').oid}"


@pytest.mark.slow
def test_combine_names_every_expert_with_another_label_space_or_manifest(hub, network, experts, tmp_path):
    from federated_factory.network import ExpertError, combine

    relabelled = _copy_expert(hub, network, experts["B"], "net-federation/relabelled",
                              lambda c: {**c, "label_space": ["0", "1", "2", "9"]})
    other = _copy_expert(hub, network, experts["C"], "net-federation/other-manifest",
                         lambda c: {**c, "manifest_hash": "f" * 64})
    with pytest.raises(ExpertError) as err:
        combine(network["manifest"], [experts["A"].ref, relabelled, other, "net-nobody/expert"],
                token=network["token"], output_dir=tmp_path / "out", publish=False)
    message = str(err.value)
    assert "net-federation/relabelled" in message and "label space" in message
    assert "net-federation/other-manifest" in message and "trained against manifest" in message
    assert "net-nobody/expert" in message and "not found" in message
    assert experts["A"].ref.split("@")[0] not in message
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_expert_that_must_synthesize_a_class_no_factory_holds_is_refused_naming_its_repo(network, tmp_path):
    from federated_factory.network import ExpertError, train_expert

    manifest = network["manifest"]
    without_c = Manifest(**{**manifest.__dict__, "factories": manifest.factories[:2]})
    hospital = network["hospitals"]["A"]
    with pytest.raises(ExpertError) as err:
        train_expert(without_c, hospital.data, repo=hospital.expert_repo, factory=hospital.factory,
                     cache_dir=tmp_path / "cache", token=hospital.token, output_dir=tmp_path / "out", progress=False)
    assert hospital.expert_repo in str(err.value) and "['3']" in str(err.value)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_expert_data_outside_the_label_space_is_refused(network, tmp_path):
    from federated_factory.network import ExpertError, train_expert

    manifest = network["manifest"]
    narrow = Manifest(**{**manifest.__dict__, "label_space": ["0", "2", "3"]})
    hospital = network["hospitals"]["A"]
    with pytest.raises(ExpertError, match=r"net-alpha-org/expert.*\['1'\] outside"):
        train_expert(narrow, hospital.data, repo=hospital.expert_repo, cache_dir=tmp_path / "cache",
                     token=hospital.token, output_dir=tmp_path / "out", progress=False)


# ---- unlearning in network mode -------------------------------------------------------------------------


def _holders(root, secret: bytes) -> list[str]:
    """Files under ``root`` whose path or content holds ``secret`` or its sha256 (hex)."""
    import hashlib

    digest = hashlib.sha256(secret).hexdigest()
    found = []
    for folder, _, files in os.walk(root):
        for file in files:
            path = os.path.join(folder, file)
            with open(path, "rb") as f:
                data = f.read()
            if secret in data or digest in path or digest.encode() in data:
                found.append(os.path.relpath(path, root))
    return found


@pytest.fixture(scope="module")
def superseded_expert(hub, network, experts):
    """Hospital A's expert weights before the unlearning (trained on C's synthetic images), seen on the endpoint's disk."""
    from huggingface_hub import hf_hub_download

    pub = experts["A"].published["expert"]
    weights = Path(hf_hub_download(pub["repo"], "model.safetensors", revision=pub["revision"],
                                   token=network["tokens"]["A"])).read_bytes()
    assert _holders(hub.data_dir, weights)
    return weights


@pytest.fixture(scope="module")
def network_unlearned(network, experts, combined, superseded_expert, tmp_path_factory):
    from federated_factory.network import unlearn_network

    out = tmp_path_factory.mktemp("network-unlearned")
    certificate = unlearn_network(
        network["manifest"], network["refs"]["C"].repo_id, hospitals=list(network["hospitals"].values()),
        federation_repo="net-federation/federation-model", reason="test: hospital C leaves", output_dir=out,
        cache_dir=network["cache"], token=network["token"], verify_from_scratch=True, purge_history=True,
        progress=False,
    )
    return certificate, out


@pytest.mark.slow
def test_network_unlearning_leaves_no_row_of_the_removed_factory_in_any_rebuilt_expert(network, network_unlearned):
    from federated_factory.network.expert import read_provenance

    certificate, out = network_unlearned
    removed = network["refs"]["C"].repo_id
    assert certificate["expert_dropped"] == [{"hospital": "C", "expert_repo": "net-gamma-org/expert"}]
    assert [e["hospital"] for e in certificate["experts_rebuilt"]] == ["A", "B"]
    for name in ("A", "B"):
        provenance = read_provenance(out / "experts" / name)
        assert removed not in set(provenance["source_repo"])
        assert 3 not in set(provenance["label"])
    assert certificate["examples_from_removed"] == 0
    assert certificate["classes_removed"] == ["3"]
    assert certificate["manifest_after"]["label_space"] == ["0", "1", "2"]


@pytest.mark.slow
def test_network_unlearning_reuses_the_cache_and_matches_a_from_scratch_rebuild(network_unlearned):
    certificate, _ = network_unlearned
    assert certificate["chunks_regenerated"] == 0
    assert certificate["from_scratch"]["identical"] is True
    assert all(e["from_scratch_identical"] for e in certificate["experts_rebuilt"])


@pytest.mark.slow
def test_network_unlearning_republishes_without_superseded_revisions(hub, network, network_unlearned):
    from huggingface_hub import HfApi

    from federated_factory.network import ProductOfExperts

    certificate, _ = network_unlearned
    api = HfApi(token=network["token"])
    for repo in ("net-alpha-org/expert", "net-beta-org/expert", "net-federation/federation-model"):
        assert len(api.list_repo_commits(repo)) == 2  # the squashed, emptied history and the new revision
    model = ProductOfExperts.from_pretrained(certificate["federation_model"]["repo"],
                                             revision=certificate["federation_model"]["revision"],
                                             token=network["token"])
    assert model.label_names == ["0", "1", "2"] and len(model.experts) == 2
    assert certificate["accuracy_after"] is not None


@pytest.mark.slow
def test_network_purge_erases_the_superseded_expert_weights_from_the_endpoint_s_disk(hub, network, network_unlearned,
                                                                                    superseded_expert):
    import hashlib

    certificate, out = network_unlearned
    erasure = certificate["erasure"]
    digest = hashlib.sha256(superseded_expert).hexdigest()
    assert digest in erasure["erased_sha256"]
    assert {(f["repo"], f["path"]) for f in erasure["erased_files"] if f["sha256"] == digest} == {
        ("net-alpha-org/expert", "model.safetensors")}
    assert erasure["verified"] is True and all(c["result"] == "passed" for c in erasure["checks"])
    assert json.loads((out / "unlearning_certificate.json").read_text())["erasure"]["erased_sha256"] == \
        erasure["erased_sha256"]
    assert _holders(hub.data_dir, superseded_expert) == []


# ---- command line pieces ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_expert_command_gives_the_library_s_expert(network, experts, tmp_path):
    """`federated-factory train-expert` / `recipes/train_expert.py` options → the same weights as `train_expert`."""
    import argparse

    from federated_factory.network.commands import add_train_expert_arguments, run_train_expert

    hospital = network["hospitals"]["A"]
    hospital.data.save_to_disk(str(tmp_path / "hospital-a"))
    manifest_path = network["manifest"].save(tmp_path / "manifest.yaml")
    parser = argparse.ArgumentParser()
    add_train_expert_arguments(parser)
    args = parser.parse_args(["--manifest", str(manifest_path), "--data", str(tmp_path / "hospital-a"),
                              "--factory", hospital.factory, "--token", hospital.token, "--no-publish",
                              "--cache-dir", str(network["cache"]), "--output-dir", str(tmp_path / "out"),
                              "--no-progress"])
    assert run_train_expert(args) == 0
    config = json.loads((tmp_path / "out" / "expert" / "expert.json").read_text())
    assert config["weights_sha256"] == experts["A"].weights_sha256
    assert config["own_classes"] == ["0", "1"]


@pytest.mark.slow
def test_hospitals_file_reads_tokens_from_the_environment_only(network, tmp_path, monkeypatch):
    import yaml

    from federated_factory.errors import FederatedFactoryError
    from federated_factory.network.commands import load_hospitals

    hospital = network["hospitals"]["B"]
    hospital.data.save_to_disk(str(tmp_path / "hospital-b"))
    spec = {"hospitals": [{"name": "B", "data": str(tmp_path / "hospital-b"), "factory": hospital.factory,
                           "expert_repo": hospital.expert_repo, "token_env": "NET_TEST_TOKEN_B"}]}
    path = tmp_path / "hospitals.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(FederatedFactoryError, match="NET_TEST_TOKEN_B is not set"):
        load_hospitals(path)
    monkeypatch.setenv("NET_TEST_TOKEN_B", hospital.token)
    [loaded] = load_hospitals(path)
    assert loaded.token == hospital.token and hospital.token not in repr(loaded)
    assert len(loaded.data) == len(hospital.data) and loaded.factory == hospital.factory
