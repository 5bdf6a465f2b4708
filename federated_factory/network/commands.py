"""Command-line pieces of network mode: ``train-expert``, ``combine`` and ``unlearn --mode network``.

Each has an ``add_*_arguments`` function (defined in `federated_factory.cli`, which imports no HF library, and
re-exported here for `recipes/train_expert.py`) and a ``run_*`` function taking the parsed arguments. HF libraries are imported only after ``--endpoint`` is applied.

``unlearn --mode network`` rebuilds every remaining hospital's expert, so it needs each hospital's data: a
YAML file lists them (tokens are read from environment variables, never from the file)::

    hospitals:
      - name: A
        data: mnist-5k            # any source load_image_dataset reads; optional: split, image_size, channels
        partition: silos          # optional: simulate this hospital as one client of a partition
        client: 0
        num_clients: 3
        factory: hospital-a/factory
        expert_repo: hospital-a/expert
        token_env: HOSPITAL_A_TOKEN
        top_up: false             # optional: rebuild with the top-up its expert was trained with (train-expert --top-up)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from ..errors import FederatedFactoryError


# The argument definitions live in `federated_factory.cli`, which imports no HF library: importing this module
# imports the network package (torch, huggingface_hub), which must come after ``--endpoint`` is applied.
from ..cli import add_combine_arguments, add_network_unlearn_arguments, add_train_expert_arguments  # noqa: E402,F401


def _apply_endpoint(args) -> None:
    from ..hub.env import use_endpoint

    use_endpoint(getattr(args, "endpoint", None))


def load_hospital_data(source: str, *, split: str = "train", image_size: int | None = None, channels: int | None = None,
                       partition: str | None = None, client: int | None = None, num_clients: int | None = None,
                       partition_seed: int = 0, token: str | None = None):
    """One hospital's own images: ``source`` loaded with `load_image_dataset`, optionally one client's share of a
    simulated partition."""
    from ..data import load_image_dataset

    dataset = load_image_dataset(source, split=split, image_size=image_size, channels=channels, token=token)
    if partition:
        from ..partition import partition_dataset

        if client is None:
            raise FederatedFactoryError("a partition needs a client index (which client's share is this hospital)")
        split_up = partition_dataset(dataset, partition, num_clients=num_clients, seed=partition_seed)
        dataset = split_up.client_dataset(dataset, client)
    return dataset


def run_train_expert(args, accelerator=None) -> int:
    _apply_endpoint(args)
    from ..hub.manifest import load_manifest
    from .expert import train_expert

    manifest = load_manifest(args.manifest)
    spec = manifest.evaluation or {}
    data = load_hospital_data(args.data, split=args.split, image_size=args.image_size or spec.get("image_size"),
                              channels=args.channels or spec.get("channels"), partition=args.partition,
                              client=args.client, num_clients=args.num_clients, partition_seed=args.partition_seed,
                              token=args.token)
    result = train_expert(manifest, data, repo=args.repo, factory=args.factory,
                          max_real_per_class=args.max_real_per_class, cache_dir=args.cache_dir, token=args.token,
                          output_dir=args.output_dir, accelerator=accelerator, publish=not args.no_publish,
                          progress=not args.no_progress, top_up=args.top_up)
    if accelerator is None or accelerator.is_main_process:
        validation = result.validation.get("all")
        print(f"own classes: {', '.join(result.own_classes)}; synthetic: {', '.join(result.synthetic_classes) or 'none'}")
        if validation:
            print(f"own validation accuracy {validation['accuracy']:.4f} (n={validation['n']})")
        if result.ref:
            print(f"published expert: {result.ref}")
        print(f"outputs in {result.output_dir}")
    return 0


def run_combine(args) -> int:
    _apply_endpoint(args)
    from ..hub.manifest import load_manifest
    from .product import combine

    manifest = load_manifest(args.manifest)
    result = combine(manifest, args.experts, repo=args.repo, token=args.token, output_dir=args.output_dir,
                     floor=args.floor, evaluate=not args.no_evaluate, publish=not args.no_publish)
    if result.evaluation:
        for name, metrics in result.evaluation["experts"].items():
            print(f"expert {name}: accuracy {metrics['accuracy']:.4f}")
        p = result.evaluation["product"]
        print(f"product of experts: accuracy {p['accuracy']:.4f}  macro-F1 {p['macro_f1']:.4f}  (n={p['n']})")
    if result.ref:
        print(f"published federation model: {result.ref}")
    print(f"outputs in {result.output_dir}")
    return 0


def load_hospitals(path: str | Path, *, default_token: str | None = None):
    """The `Hospital` list of a hospitals YAML file (see the module docstring); each hospital's token comes from
    the environment variable its ``token_env`` names (else ``default_token``)."""
    from .expert import Hospital

    path = Path(path)
    if not path.is_file():
        raise FederatedFactoryError(f"hospitals file {path} does not exist")
    spec = yaml.safe_load(path.read_text()) or {}
    entries = spec.get("hospitals") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or not entries:
        raise FederatedFactoryError(f"{path}: expected a mapping with a non-empty 'hospitals' list")
    known = {"name", "data", "split", "image_size", "channels", "partition", "client", "num_clients",
             "partition_seed", "factory", "expert_repo", "token_env", "top_up"}
    hospitals = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry or "data" not in entry:
            raise FederatedFactoryError(f"{path}: hospitals[{i}] needs at least 'name' and 'data'")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise FederatedFactoryError(f"{path}: hospitals[{i}] ({entry['name']}) has unknown field(s) {unknown}")
        token = os.environ.get(entry["token_env"]) if entry.get("token_env") else None
        if entry.get("token_env") and token is None:
            raise FederatedFactoryError(f"{path}: hospitals[{i}] ({entry['name']}): environment variable "
                                        f"{entry['token_env']} is not set")
        data = load_hospital_data(str(entry["data"]), split=str(entry.get("split", "train")),
                                  image_size=entry.get("image_size"), channels=entry.get("channels"),
                                  partition=entry.get("partition"), client=entry.get("client"),
                                  num_clients=entry.get("num_clients"), partition_seed=int(entry.get("partition_seed", 0)),
                                  token=token or default_token)
        hospitals.append(Hospital(name=str(entry["name"]), data=data, factory=entry.get("factory"),
                                  expert_repo=entry.get("expert_repo"), token=token or default_token,
                                  top_up=bool(entry.get("top_up", False))))
    return hospitals


def run_unlearn_network(args) -> int:
    """``unlearn --mode network``: needs the server mode's unlearn options plus ``--hospitals``."""
    _apply_endpoint(args)
    from ..hub.manifest import load_manifest
    from .unlearning import unlearn_network

    if not getattr(args, "hospitals", None):
        raise FederatedFactoryError("unlearn --mode network needs --hospitals (a YAML file listing every hospital)")
    manifest = load_manifest(args.manifest)
    hospitals = load_hospitals(args.hospitals, default_token=args.token)
    certificate = unlearn_network(manifest, args.remove, hospitals=hospitals, federation_repo=args.federation_repo,
                                  reason=args.reason, output_dir=args.output_dir, cache_dir=args.cache_dir,
                                  token=args.token, verify_from_scratch=not args.no_verify,
                                  publish=not args.no_publish, purge_history=args.purge_history,
                                  progress=not args.no_progress)
    print(f"removed {certificate['removed']['repo']}@{certificate['removed']['revision']}; dropped expert(s): "
          f"{', '.join(d['hospital'] for d in certificate['expert_dropped']) or 'none'}")
    print(f"rebuilt experts: {', '.join(e['hospital'] for e in certificate['experts_rebuilt'])}; rows from the removed "
          f"factory: {certificate['examples_from_removed']}; chunks regenerated: {certificate['chunks_regenerated']}")
    print(f"from-scratch check: {certificate['from_scratch_check']}")
    return 0
