#!/usr/bin/env python
"""What a hospital runs: train a factory on its own images, audit it, publish it to a private Hub repo.

    accelerate launch recipes/train_client.py --data ./my_images --repo hospital-a/factory --preset cpu

Single process is the norm on CPU; with several GPUs, `accelerate launch --multi_gpu` trains with DDP.
"""

import argparse
import sys

from federated_factory.cli import add_train_client_arguments, run_train_client
from federated_factory.errors import FederatedFactoryError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_client_arguments(parser)
    args = parser.parse_args()
    try:
        return run_train_client(args)
    except FederatedFactoryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
