#!/usr/bin/env python
"""What a hospital runs in network mode: its own images + synthetic images of the classes it lacks → its expert.

    accelerate launch recipes/train_expert.py --manifest manifest.yaml --data my-images/ \
        --factory hospital-a/factory --repo hospital-a/expert

The synthetic images are the server plan's chunks for the classes this hospital lacks (same streams, same
cache as the aggregator); processes split their generation and train the expert with DDP. Then combine the
experts: `federated-factory combine --manifest manifest.yaml --experts org-a/expert@sha ... --repo org/federation`.
"""

import argparse
import sys

from federated_factory.errors import FederatedFactoryError
from federated_factory.hub.env import use_endpoint
from federated_factory.cli import add_train_expert_arguments


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_expert_arguments(parser)
    args = parser.parse_args()
    use_endpoint(args.endpoint)  # before any HF library is imported

    import torch
    from accelerate import Accelerator

    from federated_factory.network.commands import run_train_expert

    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # CPU-only: gloo DDP under torchrun
    try:
        return run_train_expert(args, accelerator=accelerator)
    except FederatedFactoryError as err:
        accelerator.print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
