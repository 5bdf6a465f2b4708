"""The aggregator's privacy gate: each factory's own audit is read and judged against the manifest before any compute.

Unit tests judge audit records (new schema and the older one without worst-class fields); the end-to-end tests publish
a deliberately memorizing factory (two images, many steps) through the real client with ``allow_copies=True`` and
aggregate it through the real endpoint: refused, then accepted under an override whose reason reaches the cards.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from federated_factory.errors import ManifestError
from federated_factory.hub.manifest import FactoryEntry, Manifest, PrivacyOverride, PrivacyPolicy, SynthesisConfig, parse_manifest
from federated_factory.privacy_gate import audit_problems, gate_factory, worst_class


def _audit(**over) -> dict:
    """An audit record as the client writes it (new schema), two classes, nothing copied."""
    audit = {
        "passed": True, "copy_rate": 0.0, "worst_class": "a", "worst_copy_rate": 0.0, "max_copy_rate": 0.1,
        "copy_quantile": 0.05, "copy_factor": 0.5, "samples_per_class": 32, "flip_invariant": True,
        "allowed_copies": False,
        "per_class": {"a": {"copy_rate": 0.0, "copies": 0, "samples": 32, "threshold": 0.1},
                      "b": {"copy_rate": 0.0, "copies": 0, "samples": 32, "threshold": 0.1}},
    }
    audit.update(over)
    return audit


def _metadata(audit, flip="none") -> dict:
    meta = {"classes": ["a", "b"], "config": {"flip": flip}}
    if audit is not None:
        meta["privacy_audit"] = audit
    return meta


def test_a_clean_audit_passes_the_default_gate():
    assert audit_problems(_metadata(_audit()), PrivacyPolicy()) == []
    assert gate_factory("org/x", "0" * 40, _metadata(_audit()), PrivacyPolicy())["verdict"] == "accepted"


def test_missing_or_failed_audit_is_refused():
    assert "no privacy audit" in audit_problems(_metadata(None), PrivacyPolicy())[0]
    failed = _audit(passed=False, allowed_copies=True, worst_copy_rate=0.5, worst_class="b")
    problems = " | ".join(audit_problems(_metadata(failed), PrivacyPolicy()))
    assert "did not pass" in problems and "--allow-copies" in problems and "'b'" in problems
    assert "exceeds the manifest's max_copy_rate" in problems


def test_old_audit_one_memorized_class_is_caught_on_the_worst_class_not_the_pooled_rate():
    """An audit from before the worst-class fields: pooled 9% passes a 10% limit, but class b copies 18%."""
    old = {"passed": True, "copy_rate": 0.09, "max_copy_rate": 0.1, "samples_per_class": 32,
           "copy_rule": "sample distance < 0.5 x q5 of reference distances",
           "per_class": {"a": {"copy_rate": 0.0, "samples": 32}, "b": {"copy_rate": 0.18, "samples": 32}}}
    assert worst_class(old) == ("b", 0.18)
    problems = audit_problems(_metadata(old), PrivacyPolicy())
    assert len(problems) == 1 and "18.0%" in problems[0] and "'b'" in problems[0]
    assert audit_problems(_metadata(old), PrivacyPolicy(max_copy_rate=0.2)) == []


def test_an_audit_weaker_than_the_manifest_demands_is_refused():
    policy = PrivacyPolicy(min_audit_samples_per_class=64, min_copy_factor=0.6)
    problems = " | ".join(audit_problems(_metadata(_audit(copy_quantile=0.01)), policy))
    assert "32 samples per class" in problems and "at least 64" in problems
    assert "quantile 0.01" in problems and "factor 0.5" in problems
    # the copy rule of an old audit is read from its text
    old = _audit(copy_rule="sample distance < 0.25 x q5 of reference distances")
    del old["copy_quantile"], old["copy_factor"]
    assert any("factor 0.25" in p for p in audit_problems(_metadata(old), PrivacyPolicy()))


def test_flip_trained_factory_needs_a_flip_invariant_audit():
    not_invariant = _audit(flip_invariant=False)
    assert audit_problems(_metadata(not_invariant, flip="none"), PrivacyPolicy()) == []
    problems = audit_problems(_metadata(not_invariant, flip="hv"), PrivacyPolicy())
    assert len(problems) == 1 and "flip-invariant" in problems[0]
    legacy = _audit()
    del legacy["flip_invariant"]  # audits written before the field existed
    assert audit_problems(_metadata(legacy, flip="h"), PrivacyPolicy())
    assert audit_problems(_metadata(legacy, flip="h"), PrivacyPolicy(require_flip_invariant=False)) == []


def test_an_unaudited_class_is_refused():
    audit = _audit()
    del audit["per_class"]["b"]
    assert any("no result for class(es) ['b']" in p for p in audit_problems(_metadata(audit), PrivacyPolicy()))


def test_override_accepts_a_failing_factory_and_keeps_its_problems_and_reason():
    policy = PrivacyPolicy(overrides=[PrivacyOverride("org/x", "reviewed by the board")])
    gate = gate_factory("org/x", "0" * 40, _metadata(_audit(passed=False, worst_copy_rate=0.4)), policy)
    assert gate["verdict"] == "overridden" and gate["override_reason"] == "reviewed by the board"
    assert gate["problems"]
    assert gate_factory("org/y", "0" * 40, _metadata(None), policy)["verdict"] == "refused"


def test_privacy_section_is_validated_with_the_rest_of_the_manifest():
    bad = {
        "label_space": ["a"],
        "factories": ["org/x@" + "a" * 40],
        "privacy": {"max_copy_rate": 1.5, "min_audit_samples_per_class": 0, "require_flip_invariant": "yes",
                    "strict": True, "overrides": [{"repo": "org/y", "reason": "x"}, {"repo": "org/x"}]},
        "colour": "blue",
    }
    with pytest.raises(ManifestError) as err:
        parse_manifest(bad)
    message = str(err.value)
    for expected in ("privacy.max_copy_rate", "privacy.min_audit_samples_per_class", "privacy.require_flip_invariant",
                     "privacy.strict", "org/y is not one of the manifest's factories", "non-empty 'reason'", "colour"):
        assert expected in message
    good = parse_manifest({"label_space": ["a"], "factories": ["org/x@" + "a" * 40],
                           "privacy": {"max_copy_rate": 0.05, "overrides": [{"repo": "org/x", "reason": "ok"}]}})
    assert good.privacy.max_copy_rate == 0.05 and good.privacy.min_audit_samples_per_class == 16
    assert parse_manifest(yaml.safe_load(yaml.safe_dump(good.to_dict()))).privacy == good.privacy
    assert good.without("org/x").privacy.overrides == []  # an override leaves with its factory


# ---- end to end: a memorizing factory through the real client and the real endpoint -------------------


@pytest.fixture(scope="module")
def gate_federation(hub):
    """A normal factory (digit 0) and a memorizing one (two images of digit 1, many steps, ``allow_copies=True``)."""
    from federated_factory.client import preset, run_client
    from federated_factory.data import load_image_dataset

    train = load_image_dataset("mnist-5k", image_size=16, channels=1)
    labels = np.asarray(train["label"])
    aggregator = hub.add_user("gate-aggregator")
    refs, audits = {}, {}
    jobs = {
        "honest": (np.flatnonzero(labels == 0)[:40], preset("tiny", image_size=16, channels=1, train_steps=20)),
        "memorizer": (np.flatnonzero(labels == 1)[:2],
                      preset("tiny", image_size=16, channels=1, train_steps=80, warmup_steps=10, ema_decay=0.9, lr=4e-3)),
    }
    for name, (rows, config) in jobs.items():
        user = f"gate-{name}"
        token = hub.add_user(user)
        hub.server.set_org(f"{user}-org", [user, "gate-aggregator"])
        published, metadata = run_client(train.select(np.sort(rows)), f"{user}-org/factory", config, token=token,
                                         audit_samples_per_class=16, allow_copies=True, progress=False)
        refs[name], audits[name] = published, metadata["privacy_audit"]
    return {"refs": refs, "audits": audits, "token": aggregator}


def _gate_manifest(refs, tmp_path, **extra) -> Manifest:
    return Manifest(
        federation="gate-test",
        label_space=["0", "1"],
        factories=[FactoryEntry(refs[n].repo_id, refs[n].revision) for n in ("honest", "memorizer")],
        synthesis=SynthesisConfig(samples_per_class=8, sampler="ddim", num_inference_steps=2, batch_size=8, seed=0),
        classifier={"epochs": 1, "batch_size": 16, "val_fraction": 0.25, "seed": 0},
        output_dir=str(tmp_path / "out"),
        **extra,
    )


def test_memorizing_factory_failed_its_own_audit(gate_federation):
    audit = gate_federation["audits"]["memorizer"]
    assert audit["passed"] is False  # published only because of allow_copies=True
    assert max(v["copy_rate"] for v in audit["per_class"].values()) > 0.1
    assert gate_federation["audits"]["honest"]["passed"] is True


def test_aggregator_refuses_a_memorizing_factory_before_any_compute(gate_federation, tmp_path):
    from federated_factory.aggregator import aggregate

    refs = gate_federation["refs"]
    manifest = _gate_manifest(refs, tmp_path)
    manifest.factories.append(FactoryEntry("gate-nobody/missing", "main"))  # reported in the same error
    with pytest.raises(ManifestError) as err:
        aggregate(manifest, token=gate_federation["token"], cache_dir=tmp_path / "cache", publish=False, progress=False)
    message = str(err.value)
    assert f"{refs['memorizer'].repo_id}@{refs['memorizer'].revision}: refused by the privacy gate" in message
    assert "did not pass" in message and "exceeds the manifest's max_copy_rate" in message
    assert "gate-nobody/missing" in message
    assert refs["honest"].repo_id not in message
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists(), "nothing may run or be written"


def test_an_override_with_a_reason_lets_it_through_and_the_reason_reaches_the_cards(hub, gate_federation, tmp_path):
    from huggingface_hub import ModelCard, hf_hub_download

    from federated_factory.aggregator import aggregate

    refs, token = gate_federation["refs"], gate_federation["token"]
    reason = "ethics board review 2026-11 accepted the risk for this test"
    manifest = _gate_manifest(refs, tmp_path, publish={"classifier_repo": "gate-aggregator/classifier",
                                                      "dataset_repo": "gate-aggregator/synthetic", "private": True},
                              privacy=PrivacyPolicy(overrides=[PrivacyOverride(refs["memorizer"].repo_id, reason)]))
    result = aggregate(manifest, token=token, cache_dir=tmp_path / "cache", progress=False)
    verdicts = {g["repo"]: g for g in result.privacy_gate["factories"]}
    assert verdicts[refs["honest"].repo_id]["verdict"] == "accepted"
    memorizer = verdicts[refs["memorizer"].repo_id]
    assert memorizer["verdict"] == "overridden" and memorizer["override_reason"] == reason and memorizer["problems"]
    saved = json.loads((result.output_dir / "results.json").read_text())
    assert saved["privacy_gate"]["factories"][1]["override_reason"] == reason
    assert saved["manifest"]["privacy"]["overrides"] == [{"repo": refs["memorizer"].repo_id, "reason": reason}]

    card = ModelCard.load(result.published["classifier"]["repo"], token=token)
    assert reason in card.content and "## Privacy gate" in card.content
    assert card.data.to_dict()["federated_factory"]["privacy_overrides"] == [
        {"repo": refs["memorizer"].repo_id, "reason": reason}]
    dataset = result.published["dataset"]
    dataset_card = hf_hub_download(dataset["repo"], "README.md", repo_type="dataset", revision=dataset["revision"],
                                   token=token)
    text = open(dataset_card).read()
    assert reason in text and refs["memorizer"].repo_id in text
