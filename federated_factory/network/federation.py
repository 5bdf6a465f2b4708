"""Simulate a whole network on one machine: every hospital trains its expert, then the experts are combined.

In a real network each hospital runs `train_expert` (or ``recipes/train_expert.py``) on its own machine and
someone runs `combine` on the published refs; `train_network` does both in one process, for the demo and
the benchmarks. Hospitals share one chunk cache, as a network whose members share the aggregator's cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write_json
from ..hub.manifest import Manifest
from ..runtime import cpu_threads, map_in_processes
from .expert import ExpertResult, Hospital, expert_label, hospital_plan, train_expert
from .product import DEFAULT_FLOOR, CombineResult, combine


@dataclass
class NetworkResult:
    experts: dict[str, ExpertResult]  # by hospital name
    combined: CombineResult

    def summary(self) -> dict:
        """Per-expert and product metrics side by side (JSON-serialisable): for reports and benchmarks."""
        evaluation = self.combined.evaluation or {}
        per_expert = evaluation.get("experts", {})
        rows = []
        for name, expert in self.experts.items():
            key = expert.ref or str(expert.expert_dir.resolve())
            metrics = per_expert.get(key, {})
            rows.append({
                "hospital": name,
                "expert": key,
                "own_classes": expert.own_classes,
                "synthetic_classes": expert.synthetic_classes,
                "own_validation_accuracy": (expert.validation.get("all") or {}).get("accuracy"),
                "test_accuracy": metrics.get("accuracy"),
                "test_macro_f1": metrics.get("macro_f1"),
                "chunks_generated": expert.synthesis["chunks_generated"],
                "seconds": expert.timings.get("total_seconds"),
            })
        product = evaluation.get("product") or {}
        return {
            "experts": rows,
            "product": {k: product.get(k) for k in ("accuracy", "macro_f1", "auroc", "per_class_recall", "n")},
            "federation_model": self.combined.ref or str(self.combined.model_dir),
            "manifest_hash": self.combined.manifest_hash,
        }


def train_network(
    manifest: Manifest,
    hospitals: Sequence[Hospital],
    *,
    federation_repo: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
    output_dir: str | Path | None = None,
    floor: float = DEFAULT_FLOOR,
    accelerator=None,
    publish: bool = True,
    evaluate: bool = True,
    progress: bool = True,
    workers: int = 1,
) -> NetworkResult:
    """Train every hospital's expert (each publishes with its own token to its ``expert_repo``) and combine
    them into the federation model (published to ``federation_repo`` with ``token``). Writes
    ``<output_dir>/network.json`` (the summary). Run it in one process.

    ``workers > 1`` (CPU only): this process first generates every chunk some expert will read (the same
    chunks the experts would draw themselves), then the experts train in ``workers`` spawned processes, one
    thread each. Each expert's training is single-threaded either way (the classifier's ``num_threads``), so
    the experts are the same as with ``workers=1``."""
    output_dir = Path(output_dir or (str(manifest.output_dir).rstrip("/") + "-network"))
    jobs = [{"manifest": manifest, "hospital": hospital, "cache_dir": cache_dir, "token": hospital.token or token,
             "output_dir": output_dir / "experts" / hospital.name, "publish": publish,
             "progress": progress and workers <= 1}
            for hospital in hospitals]
    if workers > 1:
        reader = token or next((h.token for h in hospitals if h.token), None)  # may read every factory
        fill_cache(manifest, hospitals, cache_dir=cache_dir, token=reader, accelerator=accelerator, progress=progress)
        trained = map_in_processes(_expert_job, jobs, workers)
    else:
        trained = [train_expert(**_expert_kwargs(job), accelerator=accelerator) for job in jobs]
    experts = {hospital.name: expert for hospital, expert in zip(hospitals, trained)}
    refs = [e.ref or str(e.expert_dir.resolve()) for e in experts.values()]
    combined = combine(manifest, refs, repo=federation_repo, token=token, output_dir=output_dir / "federation",
                       floor=floor, evaluate=evaluate, publish=publish and bool(federation_repo))
    result = NetworkResult(experts=experts, combined=combined)
    atomic_write_json(output_dir / "network.json", result.summary())
    return result


def fill_cache(manifest: Manifest, hospitals: Sequence[Hospital], *, cache_dir: str | Path | None = None,
               token: str | None = None, accelerator=None, progress: bool = True) -> int:
    """Generate, in this process, every chunk that some hospital's expert draws (each hospital's
    `expert_plan`; chunks already cached are skipped). Returns the number of chunks generated. The pull
    checks and the missing-factory errors are those of `train_expert`, raised before any compute."""
    from ..aggregator import default_cache_dir
    from ..synthesis import ChunkCache, pull_factories, synthesize

    resolved_entries, factories = pull_factories(manifest, token=token)
    resolved = Manifest(**{**manifest.__dict__, "factories": resolved_entries})
    plans = []
    for hospital in hospitals:
        who = expert_label(hospital.expert_repo, hospital.factory)
        plans.append(hospital_plan(resolved, factories, hospital.data, who, top_up=hospital.top_up)[1])
    cache = ChunkCache(Path(cache_dir or default_cache_dir()) / "chunks", resolved.synthesis)
    return sum(synthesize(plan, factories, cache, accelerator=accelerator, progress=progress).chunks_generated
               for plan in plans)


def _expert_kwargs(job: dict) -> dict:
    hospital = job["hospital"]
    return dict(manifest=job["manifest"], data=hospital.data, repo=hospital.expert_repo, factory=hospital.factory,
                cache_dir=job["cache_dir"], token=job["token"], output_dir=job["output_dir"],
                publish=job["publish"], progress=job["progress"], top_up=hospital.top_up)


def _expert_job(job: dict) -> ExpertResult:
    """One hospital's expert in a worker process (spawned: it inherits ``HF_ENDPOINT``), single-threaded."""
    from ..runtime import library_progress_bars

    with library_progress_bars(False), cpu_threads(1):
        return train_expert(**_expert_kwargs(job))
