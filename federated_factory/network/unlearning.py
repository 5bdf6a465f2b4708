"""Unlearning in network mode: drop the removed hospital's expert AND rebuild every other expert without its chunks.

Every remaining expert trained on synthetic images of the removed factory (for the classes it lacks), so
dropping the removed hospital's expert is not enough. `unlearn_network` takes the reduced manifest of the
server mode (`reduced_manifest`: the factory gone, classes only it held leave the label space), retrains every
remaining hospital's expert from its own data and the remaining factories' cached chunks (the server plan
is split again over the remaining holders of each class, so a class the removed factory shared now draws
more images from the other holders: only those new chunks are generated), and combines them.

The certificate, per rebuilt expert: rows whose provenance is the removed factory (must be 0), the
provenance repos, chunks regenerated, and the sha256 of its weights, optionally compared with a
from-scratch rebuild (empty cache, same inputs); for the federation: the dropped expert, the manifest
hashes before and after, and, with ``purge_history``, the erasure of every superseded revision of the republished
repos (`hub.erase`: the sha256 of every erased file and what was checked afterwards).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from ..atomic import atomic_write_json
from ..errors import UnlearningError
from ..hub.erase import PurgedRepo, erase_history, verify_erasure
from ..hub.manifest import Manifest
from .expert import Hospital, read_provenance, train_expert


def unlearn_network(
    manifest: Manifest,
    remove: str,
    *,
    hospitals: Sequence[Hospital],
    federation_repo: str | None = None,
    reason: str | None = None,
    output_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
    accelerator=None,
    verify_from_scratch: bool = True,
    publish: bool = True,
    purge_history: bool = False,
    evaluate: bool = True,
    progress: bool = True,
) -> dict:
    """Remove ``remove`` (a factory repo or repo@sha of ``manifest``) from the network; returns the certificate.

    ``hospitals``: every member (its data, factory, expert repo, token); the one whose ``factory`` is the removed
    repo is dropped, every other one is retrained against the reduced manifest (its data restricted to the
    reduced label space) with the shared chunk cache ``cache_dir``. ``token`` reads the factories and
    publishes the federation model to ``federation_repo``; each hospital publishes its expert with its own
    token (``hospital.token``, else ``token``). ``purge_history`` erases every superseded revision of the
    republished repos (`hub.erase.erase_history` before retraining, `verify_erasure` after publishing) and records
    the erased files' sha256 in the certificate (``erasure``); a failed verification raises `UnlearningError`
    after the certificate is written.
    """
    from ..synthesis import pull_factories
    from ..unlearning import reduced_manifest, removal_target
    from .product import combine

    removed = removal_target(manifest, remove)
    unknown = [h.name for h in hospitals if h.factory and h.factory.partition("@")[0] not in
               {f.repo for f in manifest.factories}]
    if unknown:
        raise UnlearningError(f"hospital(s) {unknown} name a factory that is not in the manifest; nothing was changed")
    dropped = [h for h in hospitals if h.factory and h.factory.partition("@")[0] == removed.repo]
    remaining_hospitals = [h for h in hospitals if h not in dropped]
    if not remaining_hospitals:
        raise UnlearningError(f"removing {removed} leaves no hospital to rebuild an expert; nothing was changed")

    t_start = time.perf_counter()
    _, remaining_factories = pull_factories(manifest.without(removed.repo), token=token)
    remaining_classes = {c for f in remaining_factories for c in f.classes}
    reduced, record = reduced_manifest(manifest, remove, reason=reason, remaining_classes=remaining_classes)
    output_dir = Path(output_dir or (str(manifest.output_dir).rstrip("/") + "-network-unlearned"))
    reduced.output_dir = str(output_dir)
    reduced.save(output_dir / "manifest.yaml")

    plan = None
    if purge_history and publish:  # before republishing, so the new revisions' shas (which refer to each other) stay
        repos = [PurgedRepo(h.expert_repo, "model", h.token or token) for h in remaining_hospitals if h.expert_repo]
        repos += [PurgedRepo(federation_repo, "model", token)] if federation_repo else []
        plan = erase_history(repos,
                             message=f"Erase history superseded by unlearning {removed.repo}@{removed.revision}")

    experts, refs = [], []
    for hospital in remaining_hospitals:
        data = _restrict(hospital.data, reduced.label_space)
        result = train_expert(reduced, data, repo=hospital.expert_repo, factory=hospital.factory,
                              cache_dir=cache_dir, token=hospital.token or token,
                              output_dir=output_dir / "experts" / hospital.name, accelerator=accelerator,
                              publish=publish, progress=progress, top_up=hospital.top_up)
        provenance = read_provenance(result.output_dir)
        from_removed = sum(1 for repo in provenance["source_repo"] if repo == removed.repo)
        if from_removed:
            raise UnlearningError(f"{from_removed} rows of {hospital.name}'s rebuilt expert still come from {removed.repo}")
        experts.append({
            "hospital": hospital.name,
            "expert": result.ref or str(result.expert_dir),
            "rows_total": len(provenance["source_repo"]),
            "rows_from_removed": from_removed,
            "provenance_repos": sorted(set(provenance["source_repo"])),
            "chunks_regenerated": result.synthesis["chunks_generated"],
            "weights_sha256": result.weights_sha256,
        })
        refs.append(result.ref or str(result.expert_dir))

    combined = combine(reduced, refs, repo=federation_repo, token=token, output_dir=output_dir / "federation",
                       evaluate=evaluate, publish=publish and bool(federation_repo))
    certificate = {
        **record,
        "mode": "network",
        "manifest_before": manifest.to_dict(),
        "manifest_after": reduced.to_dict(),
        "expert_dropped": [{"hospital": h.name, "expert_repo": h.expert_repo} for h in dropped],
        "experts_rebuilt": experts,
        "examples_from_removed": sum(e["rows_from_removed"] for e in experts),
        "chunks_regenerated": sum(e["chunks_regenerated"] for e in experts),
        "federation_model": combined.published.get("federation_model") or str(combined.model_dir),
        "accuracy_after": ((combined.evaluation or {}).get("product") or {}).get("accuracy"),
        "per_class_recall_after": ((combined.evaluation or {}).get("product") or {}).get("per_class_recall"),
        "history_purged": plan is not None,
        "unlearning_seconds": time.perf_counter() - t_start,
    }
    if plan is not None:
        certificate["erasure"] = verify_erasure(plan)
    if verify_from_scratch:
        _verify_from_scratch(certificate, reduced, remaining_hospitals, output_dir, token, accelerator, progress)
    else:
        certificate["from_scratch_check"] = "not run (verify_from_scratch=False)"
    atomic_write_json(output_dir / "unlearning_certificate.json", certificate)
    if plan is not None and not certificate["erasure"]["verified"]:
        failed = [f"{c['check']}: {c['result']}" for c in certificate["erasure"]["checks"] if c["result"] != "passed"]
        raise UnlearningError("the purge of the superseded history could not be verified (" + "; ".join(failed)
                              + f"); certificate: {output_dir / 'unlearning_certificate.json'}")
    return certificate


def _restrict(data, label_space: list[str]):
    """``data`` without rows of classes outside ``label_space`` (a class only the removed factory held)."""
    import numpy as np

    from ..classifier import label_names_of

    names = label_names_of(data)
    keep = [i for i, k in enumerate(np.asarray(data["label"])) if names[k] in label_space]
    return data if len(keep) == len(data) else data.select(keep)


def _verify_from_scratch(certificate, reduced, hospitals, output_dir: Path, token, accelerator, progress) -> None:
    """Rebuild every remaining expert with an empty cache, unpublished; compare the weights' sha256."""
    scratch = output_dir / "from-scratch-check"
    t0 = time.perf_counter()
    checks = []
    for hospital, rebuilt in zip(hospitals, certificate["experts_rebuilt"]):
        fresh = train_expert(reduced, _restrict(hospital.data, reduced.label_space), repo=hospital.expert_repo,
                             factory=hospital.factory, cache_dir=scratch / "cache", token=hospital.token or token,
                             output_dir=scratch / hospital.name, accelerator=accelerator, publish=False,
                             progress=progress, top_up=hospital.top_up)
        identical = fresh.weights_sha256 == rebuilt["weights_sha256"]
        rebuilt["from_scratch_identical"] = identical
        checks.append(identical)
    certificate["from_scratch"] = {"identical": all(checks), "seconds": time.perf_counter() - t0}
    certificate["from_scratch_check"] = ("identical weights for every rebuilt expert (sha256 match)" if all(checks)
                                         else "MISMATCH")
    shutil.rmtree(scratch, ignore_errors=True)
