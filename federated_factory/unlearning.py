"""Modular unlearning: remove a factory from the manifest, rebuild from the others, prove it.

No client takes part and there is no new federation round. The remaining factories' cached chunks are
reused (nothing of theirs is regenerated), every example of the removed factory is dropped with its
stream, the classifier is retrained, and a certificate records the checks:

- the removed repo@sha, and the manifest before/after with their hashes;
- that no training example's provenance points to the removed factory;
- optionally, that the classifier equals, bit for bit, a from-scratch aggregation of the reduced
  manifest with an empty cache (on CPU; on GPU only up to the determinism of its kernels);
- accuracy per class before and after, and wall time of the unlearning vs the full aggregation.

A class held only by the removed factory leaves the label space: the new classifier cannot predict it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import time
from pathlib import Path

from .errors import UnlearningError
from .hub.manifest import FactoryEntry, Manifest


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
        "removed": {"repo": removed.repo, "revision": removed.revision},
        "reason": reason,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "manifest_hash_before": manifest.content_hash(),
        "classes_removed": [name for name in manifest.label_space if name not in remaining_classes],
    }
    reduced.history = list(manifest.history) + [record]
    record["manifest_hash_after"] = reduced.content_hash()
    return reduced, record


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
) -> dict:
    """Remove ``remove`` from ``manifest``, rebuild, verify, and publish a new revision. Returns the certificate.

    ``previous_output_dir`` is the output of the aggregation being replaced (its `results.json` gives the
    before-accuracy and the full aggregation's wall time). The reduced manifest is written to
    ``manifest_out`` (default: ``<output_dir>/manifest.yaml``).
    """
    from accelerate import Accelerator
    import torch

    from .aggregator import aggregate, publish_outputs
    from .synthesis import pull_factories

    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    t_start = time.perf_counter()
    # Which classes do the remaining factories hold? Only their metadata is read; the removed repo is not
    # contacted (it may be gone already).
    remaining = manifest.without(removal_target(manifest, remove).repo)
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
        removed_repo = record["removed"]["repo"]
        from_removed = sum(1 for repo in dataset["source_repo"] if repo == removed_repo)
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
        }
        if from_removed:
            raise UnlearningError(f"{from_removed} examples of the rebuilt dataset still come from {removed_repo}")
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
            certificate["from_scratch_check"] = (
                "identical weights (sha256 match)" if certificate["from_scratch"]["identical"] else "MISMATCH"
            )
            shutil.rmtree(scratch, ignore_errors=True)
    elif certificate is not None:
        certificate["from_scratch_check"] = "not run (verify_from_scratch=False)"

    if accelerator.is_main_process:
        (output_dir / "unlearning_certificate.json").write_text(json.dumps(certificate, indent=2, sort_keys=True, default=str))
        if publish and reduced.publish:
            if purge_history:
                purge_repos(reduced, token=token)
            summary = {**result.to_dict(), "unlearning": certificate}
            certificate["published"] = publish_outputs(reduced, _load_dataset(output_dir), summary, output_dir, token=token)
            (output_dir / "unlearning_certificate.json").write_text(json.dumps(certificate, indent=2, sort_keys=True, default=str))
    accelerator.wait_for_everyone()
    return certificate or {}


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


def purge_repos(manifest: Manifest, *, token: str | None = None) -> None:
    """Delete and recreate the published classifier and dataset repos, so that no old revision (which
    contained the removed factory's samples or influence) survives. The caller then publishes afresh."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    private = bool(manifest.publish.get("private", True))
    for key, repo_type in (("dataset_repo", "dataset"), ("classifier_repo", "model")):
        repo = manifest.publish.get(key)
        if repo:
            api.delete_repo(repo, repo_type=repo_type, missing_ok=True)
            api.create_repo(repo, repo_type=repo_type, private=private, exist_ok=True)
