#!/usr/bin/env python
"""Unlearn a client: remove its factory from the manifest, rebuild from the others, certify, publish.

    accelerate launch recipes/unlearn.py --manifest manifest.yaml --remove hospital-c/factory --reason "left"

No client takes part: the remaining factories' cached synthetic chunks are reused.
"""

import argparse
import sys

from federated_factory.cli import add_unlearn_arguments
from federated_factory.errors import FederatedFactoryError
from federated_factory.hub.env import use_endpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_unlearn_arguments(parser)
    args = parser.parse_args()
    use_endpoint(args.endpoint)  # before any HF library is imported

    import torch
    from accelerate import Accelerator

    from federated_factory.hub.manifest import load_manifest
    from federated_factory.unlearning import unlearn

    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # CPU-only: gloo DDP under torchrun
    try:
        certificate = unlearn(load_manifest(args.manifest), args.remove, reason=args.reason,
                              previous_output_dir=args.previous_output_dir, output_dir=args.output_dir,
                              manifest_out=args.manifest_out, cache_dir=args.cache_dir, token=args.token,
                              accelerator=accelerator, verify_from_scratch=not args.no_verify,
                              publish=not args.no_publish, purge_history=args.purge_history,
                              progress=not args.no_progress,
                              publish_on_mismatch=args.publish_despite_mismatch)
    except FederatedFactoryError as err:
        accelerator.print(f"error: {err}", file=sys.stderr)
        return 2
    if accelerator.is_main_process:
        print(f"examples from the removed factory: {certificate['examples_from_removed']}; "
              f"from-scratch check: {certificate['from_scratch_check']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
