#!/usr/bin/env python
"""What the aggregator runs: manifest → pulled factories → synthetic dataset → classifier → evaluation → Hub.

    accelerate launch recipes/aggregate.py --manifest manifest.yaml
    accelerate launch --cpu --num_processes 2 recipes/aggregate.py --manifest manifest.yaml

Processes split the synthesis (each generates its share of the cached chunks) and train the classifier
with DDP; the dataset is the same whatever the number of processes.
"""

import argparse
import sys

from federated_factory.cli import _print_aggregation, add_aggregate_arguments
from federated_factory.errors import FederatedFactoryError
from federated_factory.hub.env import use_endpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_aggregate_arguments(parser)
    args = parser.parse_args()
    use_endpoint(args.endpoint)  # before any HF library is imported

    import torch
    from accelerate import Accelerator

    from federated_factory.aggregator import aggregate
    from federated_factory.hub.manifest import load_manifest

    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # CPU-only: gloo DDP under torchrun
    try:
        manifest = load_manifest(args.manifest)
        result = aggregate(manifest, token=args.token, accelerator=accelerator, output_dir=args.output_dir,
                           cache_dir=args.cache_dir, publish=not args.no_publish, progress=not args.no_progress)
    except FederatedFactoryError as err:
        accelerator.print(f"error: {err}", file=sys.stderr)
        return 2
    if accelerator.is_main_process:
        _print_aggregation(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
