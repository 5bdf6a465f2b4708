"""Modular unlearning: remove a factory from the manifest, rebuild from the others, prove it.

No client takes part and there is no new federation round. The remaining factories' cached chunks are
reused (nothing of theirs is regenerated), every example of the removed factory is dropped with its
stream, the classifier is retrained, and a certificate records the checks (``checks``, each saying what
was checked and what it found):

- the removed repo@sha (and content digest), and the manifest before/after with their hashes;
- that no training example's provenance (``source_repo``, ``source_digest``) points to the removed factory;
- that a ``classifier.init_from`` starting point did not learn from the removed factory: its lineage (the
  factory lists of its card, following its own ``init_from`` chain) is read first, and an ``init_from``
  whose lineage includes the removed factory, or cannot be established, is refused before any compute;
- optionally, that the classifier equals, bit for bit, a from-scratch aggregation of the reduced manifest
  with an empty cache (on CPU; on GPU only up to the determinism of its kernels). This shows that the
  rebuild is a deterministic function of the reduced manifest, which does not list the removed factory.
  A mismatch stops before publishing and raises `UnlearningError` unless ``publish_on_mismatch`` (recorded
  in the certificate and the card);
- accuracy per class before and after, and wall time of the unlearning vs the full aggregation;
- with ``purge_history``, the erasure of every superseded revision of the published repos (`hub.erase`): the
  sha256, path, size and revisions of every erased file (``erasure.erased_files``) and what was checked through
  the API afterwards (``erasure.checks``), with the limits of the erasure (``erasure.limits``).

A class held only by the removed factory leaves the label space: the new classifier cannot predict it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import time
from pathlib import Path

from .errors import FederatedFactoryError, UnlearningError
from .hub.erase import PurgedRepo, erase_history, verify_erasure
from .hub.manifest import FactoryEntry, Manifest

FROM_SCRATCH_WHAT = (
    "the reduced manifest aggregated again with an empty chunk cache gives classifier weights with the same "
    "sha256 (over every tensor). This shows that the rebuilt classifier is a deterministic function of the "
    "reduced manifest, which does not list the removed factory, and that no reused cached chunk differs from "
    "what a fresh run generates; it does not inspect the previous classifier."
)


def weights_digest(classifier_dir: str | Path) -> str:
    """sha256 over every tensor (name, dtype, shape, bytes) of ``classifier_dir/model.safetensors``."""
    from safetensors.numpy import load_file

    tensors = load_file(str(Path(classifier_dir) / "model.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = tensors[name]
        digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def removal_target(manifest: Manifest, remove: str) -> FactoryEntry:
    """The manifest entry that ``remove`` (a repo id or repo@sha) names. Raises `UnlearningError` if it is not
    in the manifest or is its last factory."""
    repo, _, revision = remove.partition("@")
    matches = [f for f in manifest.factories if f.repo == repo and (not revision or f.revision == revision)]
    if not matches:
        listed = ", ".join(str(f) for f in manifest.factories)
        raise UnlearningError(f"{remove} is not in the manifest (it lists: {listed}); nothing was changed")
    if len(manifest.factories) == 1:
        raise UnlearningError(f"{remove} is the manifest's last factory: removing it leaves nothing to rebuild from; nothing was changed")
    return matches[0]


def reduced_manifest(manifest: Manifest, remove: str, *, reason: str | None, remaining_classes: set[str]) -> tuple[Manifest, dict]:
    """The manifest without ``remove`` (see `removal_target`), its label space restricted to classes that a
    remaining factory holds, and the history record of the removal."""
    removed = removal_target(manifest, remove)
    reduced = manifest.without(removed.repo)
    reduced.label_space = [name for name in manifest.label_space if name in remaining_classes]
    record = {
        "removed": {"repo": removed.repo, "revision": removed.revision, "digest": removed.digest},
        "reason": reason,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "manifest_hash_before": manifest.content_hash(),
        "classes_removed": [name for name in manifest.label_space if name not in remaining_classes],
    }
    reduced.history = list(manifest.history) + [record]
    record["manifest_hash_after"] = reduced.content_hash()
    return reduced, record


def _provenance_of(source: str, token: str | None) -> tuple[dict, str | None]:
    """``({"factories": [...] | None, "digests": [...], "provenance": where}, init_from of source)`` for one
    classifier: a local folder (its README.md card, else the aggregation's results.json beside it) or a Hub
    repo ``org/name[@revision]`` (its card at that revision)."""
    from huggingface_hub import metadata_load

    def from_card(card_path: Path) -> tuple[list[str] | None, list[str]]:
        meta = (metadata_load(card_path) or {}).get("federated_factory") or {}
        factories = meta.get("factories")
        return (list(factories) if isinstance(factories, list) else None), list(meta.get("factory_digests") or [])

    path = Path(source)
    factories, digests, where, config = None, [], None, {}
    if path.exists():
        if (path / "README.md").is_file():
            factories, digests = from_card(path / "README.md")
            where = str(path / "README.md")
        if factories is None and (path.parent / "results.json").is_file():
            entries = (json.loads((path.parent / "results.json").read_text()).get("manifest") or {}).get("factories")
            if isinstance(entries, list):
                factories = [f"{f['repo']}@{f['revision']}" for f in entries]
                digests = [f["digest"] for f in entries if f.get("digest")]
                where = str(path.parent / "results.json")
        if (path / "config.json").is_file():
            config = json.loads((path / "config.json").read_text())
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

        repo, _, revision = source.partition("@")
        try:
            card = hf_hub_download(repo, "README.md", revision=revision or None, token=token)
            factories, digests = from_card(Path(card))
            where = f"{source} README.md"
        except (EntryNotFoundError, HfHubHTTPError, OSError, ValueError):
            pass
        try:
            config = json.loads(Path(hf_hub_download(repo, "config.json", revision=revision or None, token=token)).read_text())
        except (EntryNotFoundError, HfHubHTTPError, OSError, ValueError):
            config = {}
    parent = ((config.get("federated_factory") or {}).get("config") or {}).get("init_from")
    return {"factories": factories, "digests": digests, "provenance": where}, parent


def init_from_lineage(source: str, *, token: str | None = None) -> list[dict]:
    """The classifiers a ``classifier.init_from`` starting point descends from, ``source`` first, following each
    one's own ``init_from``. Each entry: ``source``, ``factories`` (``repo@revision`` strings from its card, or
    ``None`` when its provenance cannot be established), ``digests`` (factory content digests, when recorded)
    and ``provenance`` (where the list was read)."""
    lineage, seen, current = [], set(), source
    while current and current not in seen:
        seen.add(current)
        info, parent = _provenance_of(current, token)
        lineage.append({"source": current, **info})
        current = parent
    return lineage


def check_init_from(source: str, removed: list[dict], *, token: str | None = None,
                    error: type[FederatedFactoryError] = UnlearningError) -> list[dict]:
    """Refuse (raise ``error``) an ``init_from`` whose lineage includes a removed factory (by repo or content
    digest), or whose lineage cannot be established; return the lineage otherwise. ``removed``: dicts with
    ``repo`` and optionally ``digest`` (the manifest history's ``removed`` records)."""
    lineage = init_from_lineage(source, token=token)
    repos = {r["repo"] for r in removed}
    digests = {r.get("digest") for r in removed} - {None}
    for entry in lineage:
        if entry["factories"] is None:
            raise error(
                f"classifier.init_from {source!r}: the provenance of {entry['source']!r} cannot be established (no "
                "card listing its factories under federated_factory.factories, and no results.json beside it), so "
                "nothing shows that it did not learn from the removed factory; start from scratch (drop init_from) "
                "or from a classifier published with a card; nothing was changed"
            )
        hits = sorted({f for f in entry["factories"] if f.partition("@")[0] in repos} |
                      {d for d in entry["digests"] if d in digests})
        if hits:
            raise error(
                f"classifier.init_from {source!r}: {entry['source']!r} learned from the removed factory "
                f"({', '.join(hits)}), so a classifier started from it would still owe that factory; start from "
                "scratch (drop init_from) or from a classifier that did not learn from it; nothing was changed"
            )
    return lineage


def unlearn(
    manifest: Manifest,
    remove: str,
    *,
    reason: str | None = None,
    previous_output_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    manifest_out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
    accelerator=None,
    verify_from_scratch: bool = True,
    publish: bool = True,
    purge_history: bool = False,
    progress: bool = True,
    publish_on_mismatch: bool = False,
) -> dict:
    """Remove ``remove`` from ``manifest``, rebuild, verify, and publish a new revision. Returns the certificate.

    ``previous_output_dir`` is the output of the aggregation being replaced (its `results.json` gives the
    before-accuracy and the full aggregation's wall time). The reduced manifest is written to
    ``manifest_out`` (default: ``<output_dir>/manifest.yaml``).

    Raises `UnlearningError` before any compute when ``classifier.init_from`` learned from the removed
    factory (or its provenance is unknown), and after the rebuild, without publishing, when the
    from-scratch check finds different weights, unless ``publish_on_mismatch`` (recorded in the
    certificate and the card). The certificate is written to ``<output_dir>`` in every case.
    """
    from accelerate import Accelerator
    import torch

    from .aggregator import aggregate, publish_outputs
    from .synthesis import pull_factories

    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    t_start = time.perf_counter()
    target = removal_target(manifest, remove)
    lineage = None
    if manifest.classifier.get("init_from"):  # before any compute: the starting point must owe the removed nothing
        removed_before = [r["removed"] for r in manifest.history if isinstance(r, dict) and r.get("removed")]
        lineage = check_init_from(manifest.classifier["init_from"],
                                  removed_before + [{"repo": target.repo, "digest": target.digest}], token=token)
    # Which classes do the remaining factories hold? Only their metadata is read; the removed repo is not
    # contacted (it may be gone already).
    remaining = manifest.without(target.repo)
    with accelerator.main_process_first():
        _, remaining_factories = pull_factories(remaining, token=token)
    remaining_classes = {c for f in remaining_factories for c in f.classes}
    reduced, record = reduced_manifest(manifest, remove, reason=reason, remaining_classes=remaining_classes)

    output_dir = Path(output_dir or (str(manifest.output_dir).rstrip("/") + "-unlearned"))
    reduced.output_dir = str(output_dir)
    if accelerator.is_main_process:
        reduced.save(manifest_out or output_dir / "manifest.yaml")

    result = aggregate(reduced, token=token, accelerator=accelerator, output_dir=output_dir, cache_dir=cache_dir,
                       publish=False, progress=progress)
    unlearning_seconds = time.perf_counter() - t_start

    certificate = None
    if accelerator.is_main_process:
        from datasets import load_from_disk

        dataset = load_from_disk(str(output_dir / "synthetic"))
        removed_repo, removed_digest = record["removed"]["repo"], record["removed"]["digest"]
        from_removed = sum(1 for repo, digest in zip(dataset["source_repo"], dataset["source_digest"])
                           if repo == removed_repo or (removed_digest and digest == removed_digest))
        still_listed = [str(f) for f in result.manifest.factories
                        if f.repo == removed_repo or (removed_digest and f.digest == removed_digest)]
        certificate = {
            **record,
            "manifest_before": manifest.to_dict(),
            "manifest_after": reduced.to_dict(),
            "examples_total": len(dataset),
            "examples_from_removed": from_removed,
            "provenance_repos": sorted(set(dataset["source_repo"])),
            "chunks_regenerated": result.synthesis["chunks_generated"],
            "images_regenerated": result.synthesis["images_generated"],
            "classifier_weights_sha256": weights_digest(output_dir / "classifier"),
            "unlearning_seconds": unlearning_seconds,
            "init_from_lineage": lineage,
            "checks": [
                {"check": "manifest",
                 "what": "the reduced manifest (resolved) lists neither the removed repo nor a factory with its "
                         "content digest",
                 "result": "passed" if not still_listed else f"FAILED: {', '.join(still_listed)}"},
                {"check": "provenance",
                 "what": "no row of the rebuilt synthetic training set has source_repo equal to the removed repo or "
                         "source_digest equal to its content digest",
                 "result": f"{from_removed} of {len(dataset)} rows"},
                {"check": "init_from",
                 "what": "the classifier's starting point did not learn from the removed factory (its lineage of "
                         "cards, following each init_from)",
                 "result": ("not used: trained from random initialization" if lineage is None else
                            "passed: lineage " + " <- ".join(e["source"] for e in lineage)
                            + " does not list the removed factory")},
            ],
        }
        if from_removed or still_listed:
            raise UnlearningError(f"{from_removed} examples of the rebuilt dataset still come from {removed_repo}"
                                  + (f"; the reduced manifest still lists {', '.join(still_listed)}" if still_listed else ""))
        _compare_with_previous(certificate, previous_output_dir, result.evaluation)
    if verify_from_scratch:
        scratch = output_dir / "from-scratch-check"
        t0 = time.perf_counter()
        fresh = aggregate(reduced, token=token, accelerator=accelerator, output_dir=scratch / "out",
                          cache_dir=scratch / "cache", publish=False, progress=progress)
        if accelerator.is_main_process:
            scratch_digest = weights_digest(fresh.output_dir / "classifier")
            certificate["from_scratch"] = {
                "classifier_weights_sha256": scratch_digest,
                "identical": scratch_digest == certificate["classifier_weights_sha256"],
                "seconds": time.perf_counter() - t0,
                "device": str(accelerator.device),
                "processes": accelerator.num_processes,
            }
            identical = certificate["from_scratch"]["identical"]
            certificate["from_scratch_check"] = (
                "identical: a rebuild of the reduced manifest with an empty cache gave the same weights (sha256 "
                "match), so the rebuild is a deterministic function of the reduced manifest" if identical else
                "MISMATCH: a rebuild of the reduced manifest with an empty cache gave different weights"
            )
            certificate["checks"].append({"check": "from_scratch", "what": FROM_SCRATCH_WHAT,
                                          "result": "identical" if identical else "MISMATCH"})
            shutil.rmtree(scratch, ignore_errors=True)
    elif certificate is not None:
        certificate["from_scratch_check"] = "not run (verify_from_scratch=False)"
        certificate["checks"].append({"check": "from_scratch", "what": FROM_SCRATCH_WHAT, "result": "not run"})

    # Every process must take the same branch: the check ran on the main process.
    from accelerate.utils import broadcast_object_list

    mismatch = [bool(certificate) and certificate.get("from_scratch", {}).get("identical") is False]
    mismatch = bool(broadcast_object_list(mismatch)[0])
    if accelerator.is_main_process:
        certificate["published_despite_mismatch"] = bool(mismatch and publish and reduced.publish and publish_on_mismatch)
        certificate["published"] = None
        _write_certificate(output_dir, certificate)
    if mismatch and not publish_on_mismatch:
        accelerator.wait_for_everyone()
        raise UnlearningError(
            "the from-scratch check failed: rebuilding the reduced manifest with an empty cache gave different "
            f"classifier weights, so the rebuild is not reproducible here; nothing was published (certificate: "
            f"{output_dir / 'unlearning_certificate.json'}). Rerun on CPU, or pass publish_on_mismatch=True "
            "(--publish-despite-mismatch) to publish anyway; that is recorded in the certificate and the card."
        )

    if accelerator.is_main_process:
        if publish and reduced.publish:
            plan = erase_history(published_repos(reduced, token=token), message=_erase_message(record)) \
                if purge_history else None
            summary = {**result.to_dict(), "unlearning": certificate}
            certificate["published"] = publish_outputs(reduced, _load_dataset(output_dir), summary, output_dir, token=token)
            if plan is not None:  # the certificate and card of the new revision record what was erased
                _record_erasure(certificate, verify_erasure(plan))
                _write_certificate(output_dir, certificate)
                if not certificate["erasure"]["verified"]:
                    raise UnlearningError(_erasure_failure(certificate, output_dir))
                certificate["published"] = publish_outputs(reduced, _load_dataset(output_dir), summary, output_dir,
                                                           token=token)
                again = verify_erasure(plan)  # the certificate commit must not bring anything back
                if not again["verified"]:
                    _record_erasure(certificate, again)
                    _write_certificate(output_dir, certificate)
                    raise UnlearningError(_erasure_failure(certificate, output_dir))
            _write_certificate(output_dir, certificate)
    accelerator.wait_for_everyone()
    return certificate or {}


def _write_certificate(output_dir: Path, certificate: dict) -> None:
    from .atomic import atomic_write_text

    atomic_write_text(output_dir / "unlearning_certificate.json",
                      json.dumps(certificate, indent=2, sort_keys=True, default=str))


def _load_dataset(output_dir: Path):
    from datasets import load_from_disk

    return load_from_disk(str(output_dir / "synthetic"))


def _compare_with_previous(certificate: dict, previous_output_dir, evaluation: dict | None) -> None:
    after = (evaluation or {}).get("per_class_recall", {})
    certificate["per_class_recall_after"] = after
    certificate["accuracy_after"] = (evaluation or {}).get("accuracy")
    if previous_output_dir is None or not (Path(previous_output_dir) / "results.json").exists():
        certificate["per_class_recall_before"] = None
        return
    previous = json.loads((Path(previous_output_dir) / "results.json").read_text())
    before = (previous.get("evaluation") or {}).get("per_class_recall", {})
    certificate["per_class_recall_before"] = before
    certificate["accuracy_before"] = (previous.get("evaluation") or {}).get("accuracy")
    certificate["full_aggregation_seconds"] = previous.get("timings", {}).get("total_seconds")
    removed = set(certificate.get("classes_removed", []))
    kept = [name for name in before if name in after and name not in removed]
    if kept:
        certificate["remaining_classes_mean_recall_before"] = sum(before[n] for n in kept) / len(kept)
        certificate["remaining_classes_mean_recall_after"] = sum(after[n] for n in kept) / len(kept)


ERASURE_WHAT = (
    "every file of every superseded revision (every branch and tag) and every listed LFS file of the published "
    "repos was recorded with its sha256 before the purge; after it and the new publication, no branch but main, no "
    "tag, no superseded commit, no file of a reachable revision and no LFS listing of those repos offers a recorded "
    "file whose content the new revisions do not hold (erasure.erased_sha256); the endpoint deleted those blobs "
    "unless another repo holds identical content (see erasure.limits)"
)


def published_repos(manifest: Manifest, *, token: str | None = None) -> list[PurgedRepo]:
    """The repos an unlearning republishes (the manifest's dataset and classifier repos), for `erase_history`."""
    return [PurgedRepo(manifest.publish[key], repo_type, token)
            for key, repo_type in (("dataset_repo", "dataset"), ("classifier_repo", "model"))
            if manifest.publish.get(key)]


def _erase_message(record: dict) -> str:
    removed = record["removed"]
    return f"Erase history superseded by unlearning {removed['repo']}@{removed['revision']}"


def _record_erasure(certificate: dict, erasure: dict) -> None:
    """Put the erasure record and its summary check into ``certificate`` (replacing an earlier one)."""
    certificate["erasure"] = erasure
    certificate["history_purged"] = True
    failed = [c["check"] for c in erasure["checks"] if c["result"] != "passed"]
    result = (f"passed: {len(erasure['erased_sha256'])} distinct contents erased "
              f"({len(erasure['erased_files'])} files, sha256 in erasure.erased_files)"
              if not failed else f"FAILED: {', '.join(failed)}")
    certificate["checks"] = [c for c in certificate["checks"] if c["check"] != "erasure"]
    certificate["checks"].append({"check": "erasure", "what": ERASURE_WHAT, "result": result})


def _erasure_failure(certificate: dict, output_dir: Path) -> str:
    failed = [f"{c['check']}: {c['result']}" for c in certificate["erasure"]["checks"] if c["result"] != "passed"]
    return ("the purge of the superseded history could not be verified (" + "; ".join(failed) + "); certificate: "
            f"{output_dir / 'unlearning_certificate.json'}")
