#!/usr/bin/env python
"""Re-aggregate a finished federation run's pinned factories with other synthesis or classifier settings.

`benchmarks/federation.py` leaves the run's Hub data and chunk cache in its work dir (`runs/<name>`). This
script serves that Hub data again on loopback (a fresh read token for the aggregator account, the
hospitals' organisations re-declared), loads the run's resolved manifest (every factory pinned to the sha
it was published at), changes only the settings given, and aggregates without publishing. Chunks already
in the cache are reused (the first N images of every stream are the same for any samples-per-class), so
only the extra images are generated. The result JSON holds the metrics on `--evaluation-split` (the
manifest's, normally test), per-class recall and timings.

To choose a setting on validation (issue 14's protocol), score the candidates with `--evaluation-split
validation`, then let `classifier_sweep.py --trained NAME=<run>/reaggregate-<tag>/classifier ... --final-test`
pick one on validation and read test once for it:

    python benchmarks/reaggregate.py --run ../runs/blood-cells-32-silos-cpu-both --samples-per-class 1000 \
        --evaluation-split validation --out benchmarks/results/blood-cells-32-silos-cpu-both/s1000-validation.json

    python benchmarks/reaggregate.py --run runs/blood-cells-32-silos-cpu --samples-per-class 1000 \\
        --out benchmarks/results/blood-cells-32-silos-cpu/resample-1000-per-class.json
"""

import argparse
import dataclasses
import json
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a federation.py work dir (holds hub/, cache/, aggregate/)")
    parser.add_argument("--samples-per-class", type=int, default=None)
    parser.add_argument("--num-inference-steps", type=int, default=None)
    parser.add_argument("--classifier-epochs", type=int, default=None)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="synthesis precision")
    parser.add_argument("--evaluation-split", default=None,
                        help="score on this split of the manifest's evaluation dataset instead of its own (test)")
    parser.add_argument("--out", required=True, help="result JSON")
    args = parser.parse_args()
    run = Path(args.run)
    results = json.loads((run / "results.json").read_text())

    from federated_factory.hub.env import free_port, use_endpoint

    port = free_port()
    use_endpoint(f"http://127.0.0.1:{port}")
    from federated_factory.aggregator import aggregate
    from federated_factory.hub.manifest import load_manifest
    from federated_factory.hub.server import HubServer
    from federated_factory.runtime import machine

    manifest = load_manifest(run / "aggregate" / "manifest.resolved.yaml")
    synthesis = manifest.synthesis
    if args.samples_per_class:
        synthesis = dataclasses.replace(synthesis, samples_per_class=args.samples_per_class)
    if args.num_inference_steps:
        synthesis = dataclasses.replace(synthesis, num_inference_steps=args.num_inference_steps)
    if args.precision:
        synthesis = dataclasses.replace(synthesis, precision=args.precision)
    classifier = dict(manifest.classifier)
    if args.classifier_epochs:
        classifier["epochs"] = args.classifier_epochs
    evaluation_spec = dict(manifest.evaluation)
    if args.evaluation_split:
        evaluation_spec["split"] = args.evaluation_split
    tag = f"s{synthesis.samples_per_class}-n{synthesis.num_inference_steps}-{synthesis.precision}-e{classifier.get('epochs')}"
    manifest = dataclasses.replace(manifest, synthesis=synthesis, classifier=classifier, publish={}, evaluation=evaluation_spec,
                                   output_dir=str(run / f"reaggregate-{tag}"))

    token = f"hf_{secrets.token_hex(16)}"
    server = HubServer(run / "hub", tokens={token: ("aggregator", "read")}, host="127.0.0.1", port=port)
    for client in results["clients"]:
        server.set_org(client["repo"].split("/")[0], ["aggregator"])
    server.start()
    try:
        t0 = time.perf_counter()
        aggregation = aggregate(manifest, token=token, cache_dir=run / "cache", publish=False)
        seconds = time.perf_counter() - t0
    finally:
        server.stop()
    evaluation = aggregation.evaluation
    central = (results.get("centralized") or {}).get("accuracy")  # None when the run had --baselines without it
    out = {
        "command": "python benchmarks/reaggregate.py " + " ".join(sys.argv[1:]),
        "run": str(run),
        "factories": [f"{f.repo}@{f.revision}" for f in manifest.factories],
        "synthesis": dataclasses.asdict(synthesis),
        "classifier": classifier,
        "evaluation_split": evaluation_spec.get("split", "test"),
        "num_evaluated": int(sum(map(sum, evaluation["confusion_matrix"]))),
        **{k: evaluation[k] for k in ("accuracy", "macro_f1", "auroc", "per_class_recall")},
        # the run's centralized number is on test: a ratio only makes sense for a test score
        "centralized_accuracy": central,
        "vs_centralized": None if central is None or args.evaluation_split not in (None, "test")
        else evaluation["accuracy"] / central,
        "synthesis_stats": aggregation.synthesis,
        # the bytes a federation exchanges do not depend on the synthesis settings: the same pinned factories are
        # uploaded once and pulled once, so a re-aggregated number costs what the run's server mode exchanged
        "communication": (results.get("federated_factory") or {}).get("communication"),
        "timings": {**aggregation.timings, "wall_seconds": seconds},
        # the run's settings with the ones changed here, its factories' training cost and the machine this ran on,
        # so that `evidence.py import` of a re-aggregated number records what an import of the run would
        "config": {**(results.get("config") or {}), "samples_per_class": synthesis.samples_per_class,
                   "num_inference_steps": synthesis.num_inference_steps,
                   "synthesis_precision": synthesis.precision, "classifier_epochs": classifier.get("epochs"),
                   "evaluation_split": evaluation_spec.get("split", "test")},
        "clients": [{k: c[k] for k in ("name", "train_seconds", "train_images_per_second") if k in c}
                    for c in results["clients"]],
        "machine": machine(),
        "run_machine": results.get("machine"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    versus = (f"{out['vs_centralized']:.3f} x centralized {central:.4f}" if out["vs_centralized"]
              else "no centralized test number to compare")
    print(f"{out['evaluation_split']} accuracy {out['accuracy']:.4f} ({versus}); "
          f"{aggregation.synthesis['images_generated']} images generated in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
