#!/usr/bin/env python
"""The real-data federated baselines alone (FedAvg, FedProx, SCAFFOLD at several local learning rates), on
the demo's partitions and classifier, without training any factory. Results go to a JSON file.

    python benchmarks/fl_baselines.py --dataset mnist-5k --image-size 16 --channels 1 \\
        --out benchmarks/results/fl-baselines-mnist-5k-silos.json
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--partition", default="silos")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--classifier-epochs", type=int, default=15, help="ClassifierConfig.epochs (as in the demo)")
    parser.add_argument("--fedprox-mu", type=float, default=0.01)
    parser.add_argument("--scaffold-lr", type=float, nargs="+", default=[0.01, 0.05, 0.1])
    parser.add_argument("--hflip", action="store_true")
    parser.add_argument("--vflip", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch

    from federated_factory.baselines import run_fedavg, run_scaffold
    from federated_factory.classifier import ClassifierConfig
    from federated_factory.data import load_image_splits
    from federated_factory.partition import partition_dataset

    splits = load_image_splits(args.dataset, image_size=args.image_size, channels=args.channels)
    train, test = splits["train"], splits["test"]
    partition = partition_dataset(train, args.partition, seed=0)
    clients = [partition.client_dataset(train, i) for i in range(partition.num_clients)]
    config = ClassifierConfig(epochs=args.classifier_epochs, hflip=args.hflip, vflip=args.vflip, seed=0)
    common = dict(rounds=args.rounds, local_epochs=args.local_epochs, seed=0, progress=False)
    runs = [("fedavg", lambda: run_fedavg(clients, test, config, mu=0.0, **common)),
            (f"fedprox mu={args.fedprox_mu}", lambda: run_fedavg(clients, test, config, mu=args.fedprox_mu, **common))]
    runs += [(f"scaffold lr={lr}", lambda lr=lr: run_scaffold(clients, test, config, local_lr=lr, **common))
             for lr in args.scaffold_lr]
    rows = []
    for name, run in runs:
        t0 = time.perf_counter()
        r = run()
        rows.append({"method": name, "accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "auroc": r["auroc"],
                     "selected_round": r["selected_round"], "best_val_accuracy": r["best_val_accuracy"],
                     "total_bytes": r["communication"]["total_bytes"], "seconds": time.perf_counter() - t0,
                     "val_accuracy_by_round": [h["val_accuracy"] for h in r["history"]]})
        print(f"{name:22s} accuracy {r['accuracy']:.4f} (round {r['selected_round']}, client-validation "
              f"{r['best_val_accuracy']:.3f})  {rows[-1]['total_bytes'] / 1e6:.1f} MB", flush=True)
    Path(args.out).write_text(json.dumps({
        "command": "python benchmarks/fl_baselines.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "cuda": torch.cuda.is_available()},
        "dataset": args.dataset, "partition": args.partition, "num_clients": partition.num_clients,
        "rounds": args.rounds, "local_epochs": args.local_epochs, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
