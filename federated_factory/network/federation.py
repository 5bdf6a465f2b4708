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
from .expert import ExpertResult, Hospital, train_expert
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
) -> NetworkResult:
    """Train every hospital's expert (each publishes with its own token to its ``expert_repo``) and combine
    them into the federation model (published to ``federation_repo`` with ``token``). Writes
    ``<output_dir>/network.json`` (the summary). Run it in one process."""
    output_dir = Path(output_dir or (str(manifest.output_dir).rstrip("/") + "-network"))
    experts = {}
    for hospital in hospitals:
        experts[hospital.name] = train_expert(
            manifest, hospital.data, repo=hospital.expert_repo, factory=hospital.factory, cache_dir=cache_dir,
            token=hospital.token or token, output_dir=output_dir / "experts" / hospital.name,
            accelerator=accelerator, publish=publish, progress=progress)
    refs = [e.ref or str(e.expert_dir.resolve()) for e in experts.values()]
    combined = combine(manifest, refs, repo=federation_repo, token=token, output_dir=output_dir / "federation",
                       floor=floor, evaluate=evaluate, publish=publish and bool(federation_repo))
    result = NetworkResult(experts=experts, combined=combined)
    atomic_write_json(output_dir / "network.json", result.summary())
    return result
