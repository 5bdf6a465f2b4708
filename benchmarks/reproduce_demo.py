#!/usr/bin/env python
"""Does a second run of the demo reproduce the first? Compare two demo output folders, write the verdict.

    python benchmarks/federation.py --name mnist-5k-silos-demo          # run 1 (work dir runs/mnist-5k-silos-demo)
    federated-factory demo --output-dir runs/demo-again                  # run 2: `make demo`, same machine
    python benchmarks/reproduce_demo.py runs/mnist-5k-silos-demo runs/demo-again \\
        --out benchmarks/results/mnist-5k-silos-demo/reproduction.json

Compares the factories' weights, every synthetic row (all columns but the commit id), the classifier, every
expert and the unlearned classifier, and every method's test metrics (`federated_factory.reproduce`).
Exit status 0 when identical, 1 otherwise.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from federated_factory.atomic import atomic_write_json  # noqa: E402
from federated_factory.reproduce import compare_runs  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", help="output folder of the first run")
    parser.add_argument("second", help="output folder of the second run")
    parser.add_argument("--out", help="write the verdict (JSON) here")
    args = parser.parse_args()
    report = compare_runs(args.first, args.second)
    results = [json.loads((Path(run) / "results.json").read_text()) for run in (args.first, args.second)]
    report["wall_minutes"] = [round(r["timings"]["total_seconds"] / 60, 1) for r in results]
    report["accuracy"] = {method: [r[method]["accuracy"] for r in results]
                          for method in ("federated_factory", "network", "fedavg", "fedprox", "centralized")
                          if results[0].get(method)}
    report["machine"] = {"platform": platform.platform(), "first": results[0]["machine"],
                         "second": results[1]["machine"]}
    report["compared_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(json.dumps({k: report[k] for k in ("identical", "differences", "checked", "accuracy")}, indent=1))
    if args.out:
        atomic_write_json(Path(args.out), report)
    return 0 if report["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
