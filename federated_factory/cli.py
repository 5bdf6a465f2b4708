"""`federated-factory` command line: demo | train-client | aggregate | train-expert | combine | unlearn | hub serve | hub gc | data summary | report.

Each sub-command's arguments are defined by an ``add_*_arguments`` function that the thin scripts in
`recipes/` reuse, so `federated-factory aggregate ...` and `accelerate launch recipes/aggregate.py ...`
accept the same options. HF libraries are imported only after `--endpoint` has been applied.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import FederatedFactoryError


def add_endpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", default=None,
                        help="Hub endpoint URL (default: $HF_ENDPOINT or https://huggingface.co)")
    parser.add_argument("--token", default=None,
                        help="Hub token (default: $HF_TOKEN or the cached login); never printed or logged")


def add_train_client_arguments(parser: argparse.ArgumentParser) -> None:
    add_endpoint_arguments(parser)
    parser.add_argument("--data", required=True, help="mnist-5k, an imagefolder, a parquet or save_to_disk dir, or a Hub dataset id")
    parser.add_argument("--split", default="train")
    parser.add_argument("--classes", default=None, help="comma-separated class names to train on (default: all present)")
    parser.add_argument("--partition", default=None, help="simulate a client: partition scheme (silos, pathological, dirichlet, iid)")
    parser.add_argument("--client", type=int, default=None, help="with --partition: which client's share to train on")
    parser.add_argument("--num-clients", type=int, default=None)
    parser.add_argument("--partition-seed", type=int, default=0)
    parser.add_argument("--repo", required=True, help="private Hub repo to publish to, e.g. hospital-a/factory")
    parser.add_argument("--preset", default="cpu", help="tiny | demo | cpu | gpu")
    parser.add_argument("--image-size", type=int, default=None, help="resize images to this size (default: native)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=None)
    parser.add_argument("--train-steps", type=int, default=None, help="override the preset's number of steps")
    parser.add_argument("--flip", choices=("none", "h", "hv"), default=None, help="flip augmentation (default: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=None, help="local copy of the pipeline, metadata and grid; checkpoints")
    parser.add_argument("--allow-copies", action="store_true", help="publish even if the privacy audit fails")
    parser.add_argument("--no-publish", action="store_true", help="train and audit only")


def add_aggregate_arguments(parser: argparse.ArgumentParser) -> None:
    add_endpoint_arguments(parser)
    parser.add_argument("--manifest", required=True, help="federation manifest (YAML)")
    parser.add_argument("--output-dir", default=None, help="default: the manifest's output_dir")
    parser.add_argument("--cache-dir", default=None, help="synthetic chunk cache (default: $FEDERATED_FACTORY_CACHE or ~/.cache/federated_factory)")
    parser.add_argument("--no-publish", action="store_true", help="do not push the classifier / dataset")
    parser.add_argument("--no-progress", action="store_true")


def add_unlearn_arguments(parser: argparse.ArgumentParser) -> None:
    add_aggregate_arguments(parser)
    parser.add_argument("--remove", required=True, help="the factory repo (or repo@sha) to remove")
    parser.add_argument("--reason", default=None)
    parser.add_argument("--previous-output-dir", default=None, help="output of the aggregation being replaced")
    parser.add_argument("--manifest-out", default=None, help="where to write the reduced manifest (default: <output-dir>/manifest.yaml)")
    parser.add_argument("--no-verify", action="store_true", help="skip the from-scratch bit-for-bit check")
    parser.add_argument("--purge-history", action="store_true",
                        help="erase every superseded revision of the published repos from the endpoint and verify it "
                             "(the erased files' sha256 go into the certificate)")
    parser.add_argument("--publish-despite-mismatch", action="store_true",
                        help="publish even if the from-scratch check finds different weights (recorded in the "
                             "certificate and the card); without it a mismatch stops before publishing, exit code 2")


def add_train_expert_arguments(parser: argparse.ArgumentParser) -> None:
    add_endpoint_arguments(parser)
    parser.add_argument("--manifest", required=True, help="federation manifest (YAML)")
    parser.add_argument("--data", required=True, help="this hospital's own images: mnist-5k, an imagefolder, a parquet "
                                                      "or save_to_disk dir, or a Hub dataset id")
    parser.add_argument("--split", default="train")
    parser.add_argument("--image-size", type=int, default=None,
                        help="resize to this size (default: the manifest's evaluation image_size, if any)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=None,
                        help="default: the manifest's evaluation channels, if any")
    parser.add_argument("--partition", default=None, help="simulate a hospital: partition scheme (silos, dirichlet, ...)")
    parser.add_argument("--client", type=int, default=None, help="with --partition: which client's share is this hospital")
    parser.add_argument("--num-clients", type=int, default=None)
    parser.add_argument("--partition-seed", type=int, default=0)
    parser.add_argument("--repo", default=None, help="this hospital's private repo for the expert, e.g. hospital-a/expert")
    parser.add_argument("--factory", default=None, help="this hospital's own factory repo in the manifest (recorded)")
    parser.add_argument("--max-real-per-class", type=int, default=None,
                        help="own real images per class (default: the manifest's samples_per_class; 0 = all)")
    parser.add_argument("--top-up", action="store_true",
                        help="a class this hospital holds fewer real images of than samples_per_class also gets "
                             "synthetic rows, up to samples_per_class (default: own classes get none)")
    parser.add_argument("--output-dir", default=None, help="default: <manifest output_dir>-expert")
    parser.add_argument("--cache-dir", default=None, help="synthetic chunk cache, shared with the aggregator "
                                                          "(default: $FEDERATED_FACTORY_CACHE or ~/.cache/federated_factory)")
    parser.add_argument("--no-publish", action="store_true", help="train only; do not push the expert")
    parser.add_argument("--no-progress", action="store_true")


def add_combine_arguments(parser: argparse.ArgumentParser) -> None:
    add_endpoint_arguments(parser)
    parser.add_argument("--manifest", required=True, help="the manifest every expert was trained against")
    parser.add_argument("--experts", nargs="+", required=True, help="expert repos (org/name@sha) or local expert folders")
    parser.add_argument("--repo", default=None, help="repo for the federation model, e.g. network/federation-model")
    parser.add_argument("--floor", type=float, default=1e-6, help="probability floor of each expert (default 1e-6)")
    parser.add_argument("--output-dir", default=None, help="default: <manifest output_dir>-network")
    parser.add_argument("--no-evaluate", action="store_true", help="skip the evaluation on the manifest's test data")
    parser.add_argument("--no-publish", action="store_true")


def add_network_unlearn_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``unlearn --mode network`` adds to the server mode's ``unlearn`` options."""
    parser.add_argument("--hospitals", default=None, help="with --mode network: YAML listing every hospital's data, "
                                                          "factory, expert repo and token variable")
    parser.add_argument("--federation-repo", default=None, help="with --mode network: repo of the federation model")


def add_data_summary_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``federated-factory data summary`` (a partition's client × class table)."""
    parser.add_argument("--dataset", required=True,
                        help="mnist-5k, an imagefolder / parquet / save_to_disk directory, or a Hub dataset id")
    parser.add_argument("--partition", required=True, help="partition scheme: silos | pathological | dirichlet | iid")
    parser.add_argument("--num-clients", type=int, default=None,
                        help="number of clients (default: number of classes; silos allows only that)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (dirichlet)")
    parser.add_argument("--classes-per-client", type=int, default=2, help="classes per client (pathological)")
    parser.add_argument("--min-partition-size", type=int, default=1, help="fewest rows any client may get")
    parser.add_argument("--image-size", type=int, default=None, help="resize images to N×N (Lanczos)")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=None, help="1 = grayscale, 3 = RGB")
    parser.add_argument("--revision", default=None, help="Hub dataset revision")
    parser.add_argument("--token", default=None, help="Hub token (default: the usual HF token lookup)")
    parser.add_argument("--heatmap", default=None, metavar="PNG", help="also save a heatmap of the counts")


def _apply_endpoint(args) -> None:
    from .hub.env import use_endpoint

    use_endpoint(getattr(args, "endpoint", None))


def run_train_client(args) -> int:
    _apply_endpoint(args)
    from .client import preset, run_client
    from .data import channels_of_image, load_image_dataset

    overrides = {"seed": args.seed}
    for key in ("train_steps", "flip"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    dataset = load_image_dataset(args.data, split=args.split, image_size=args.image_size, channels=args.channels)
    first = dataset[0]["image"]
    overrides.setdefault("image_size", first.size[0])
    overrides.setdefault("channels", channels_of_image(first))
    config = preset(args.preset, **overrides)
    if args.partition:
        from .partition import partition_dataset

        if args.client is None:
            raise FederatedFactoryError("--partition needs --client (which client's share to train on)")
        partition = partition_dataset(dataset, args.partition, num_clients=args.num_clients, seed=args.partition_seed)
        dataset = partition.client_dataset(dataset, args.client)
    classes = args.classes.split(",") if args.classes else None
    published, metadata = run_client(dataset, args.repo, config, classes=classes, token=args.token,
                                     output_dir=args.output_dir, allow_copies=args.allow_copies,
                                     publish=not args.no_publish)
    audit = metadata["privacy_audit"]
    verdict = "passed" if audit["passed"] else "FAILED (published with --allow-copies)" if published else "FAILED"
    print(f"privacy audit {verdict}: worst class {audit['worst_class']!r} copy rate {audit['worst_copy_rate']:.2%} "
          f"(limit {audit['max_copy_rate']:.0%} per class; pooled {audit['copy_rate']:.2%})")
    if published:
        print(f"published {published}")
        print("add to the manifest's factories:")
        print(f"  - repo: {published.repo_id}\n    revision: {published.revision}")
    return 0


def run_aggregate(args) -> int:
    _apply_endpoint(args)
    from .aggregator import aggregate
    from .hub.manifest import load_manifest

    manifest = load_manifest(args.manifest)
    result = aggregate(manifest, token=args.token, output_dir=args.output_dir, cache_dir=args.cache_dir,
                       publish=not args.no_publish, progress=not args.no_progress)
    _print_aggregation(result)
    return 0


def _print_aggregation(result) -> None:
    if result.evaluation:
        e = result.evaluation
        print(f"accuracy {e['accuracy']:.4f}  macro-F1 {e['macro_f1']:.4f}  AUROC {e['auroc']:.4f}  (n={e['n']})")
    for kind, ref in (result.published or {}).items():
        print(f"published {kind}: {ref['repo']}@{ref['revision']}")
    print(f"outputs in {result.output_dir}")


def run_train_expert(args) -> int:
    """``train-expert`` (network mode): see `federated_factory.network.commands.run_train_expert`."""
    _apply_endpoint(args)
    from .network.commands import run_train_expert as run

    return run(args)


def run_combine(args) -> int:
    """``combine`` (network mode): see `federated_factory.network.commands.run_combine`."""
    _apply_endpoint(args)
    from .network.commands import run_combine as run

    return run(args)


def run_unlearn(args) -> int:
    """``unlearn``: ``--mode server`` (default) rebuilds the aggregator's classifier; ``--mode network`` drops the
    removed hospital's expert and rebuilds every other expert (`federated_factory.network.commands`)."""
    _apply_endpoint(args)
    if getattr(args, "mode", "server") == "network":
        from .network.commands import run_unlearn_network

        return run_unlearn_network(args)
    from .hub.manifest import load_manifest
    from .unlearning import unlearn

    manifest = load_manifest(args.manifest)
    certificate = unlearn(manifest, args.remove, reason=args.reason, previous_output_dir=args.previous_output_dir,
                          output_dir=args.output_dir, manifest_out=args.manifest_out, cache_dir=args.cache_dir,
                          token=args.token, verify_from_scratch=not args.no_verify, publish=not args.no_publish,
                          purge_history=args.purge_history, progress=not args.no_progress,
                          publish_on_mismatch=args.publish_despite_mismatch)
    print(f"removed {certificate['removed']['repo']}@{certificate['removed']['revision']}")
    print(f"examples from the removed factory: {certificate['examples_from_removed']}; "
          f"chunks regenerated: {certificate['chunks_regenerated']}; "
          f"classes removed: {', '.join(certificate['classes_removed']) or 'none'}")
    print(f"from-scratch check: {certificate['from_scratch_check']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="federated-factory", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    from .demo import demo_argument_parser

    demo = sub.add_parser("demo", help="simulate a whole federation on this machine and write a report",
                          parents=[demo_argument_parser(add_help=False)])
    demo.set_defaults(func=run_demo)

    p = sub.add_parser("train-client", help="train, audit and publish one client's factory")
    add_train_client_arguments(p)
    p.set_defaults(func=run_train_client)

    p = sub.add_parser("aggregate", help="manifest → synthetic dataset → classifier → evaluation → Hub")
    add_aggregate_arguments(p)
    p.set_defaults(func=run_aggregate)

    p = sub.add_parser("train-expert", help="network mode: one hospital's expert (own data + synthetic other classes)")
    add_train_expert_arguments(p)
    p.set_defaults(func=run_train_expert)

    p = sub.add_parser("combine", help="network mode: experts → product-of-experts federation model → evaluation")
    add_combine_arguments(p)
    p.set_defaults(func=run_combine)

    p = sub.add_parser("unlearn", help="remove a factory from a manifest, rebuild and certify")
    add_unlearn_arguments(p)
    p.add_argument("--mode", choices=("server", "network"), default="server",
                   help="server: rebuild the aggregator's classifier (default); network: drop the hospital's expert "
                        "and rebuild every other expert (needs --hospitals)")
    add_network_unlearn_arguments(p)
    p.set_defaults(func=run_unlearn)

    p = sub.add_parser("report", help="re-render report.md and plots from a demo's results directory")
    p.add_argument("results_dir", help="a `federated-factory demo` output folder (holding results.json)")
    p.set_defaults(func=run_report)

    hub = sub.add_parser("hub", help="the Hub-compatible endpoint")
    hub_sub = hub.add_subparsers(dest="hub_command", required=True)
    # `hub serve` has its own parser (hub/server.py's serve_main); it receives the rest of the line.
    serve = hub_sub.add_parser("serve", help="run the endpoint in the foreground (--help for its options)",
                               add_help=False)
    serve.set_defaults(func=run_hub_serve, takes_rest=True)
    gc = hub_sub.add_parser(
        "gc", help="delete unreferenced blobs, commits and expired LFS uploads of a stopped endpoint's data directory"
    )
    gc.add_argument("--data-dir", required=True, help="the endpoint's data directory")
    gc.add_argument("--grace-seconds", type=float, help="keep LFS uploads never committed this long (default: 1 day)")
    gc.set_defaults(func=_hub_gc)

    data = sub.add_parser("data", help="data sources and partitions")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    summary = data_sub.add_parser("summary", help="client × class table of a partition")
    add_data_summary_arguments(summary)
    summary.set_defaults(func=run_data_summary)
    return parser


def _hub_gc(args: argparse.Namespace) -> int:
    from .hub.server import gc_main

    grace = [] if args.grace_seconds is None else ["--grace-seconds", str(args.grace_seconds)]
    return gc_main(["--data-dir", args.data_dir, *grace])


def run_demo(args: argparse.Namespace) -> int:
    """``federated-factory demo``: the flags are :class:`federated_factory.demo.DemoConfig`'s fields."""
    from .demo import run_demo_cli

    return run_demo_cli(args)


def run_report(args: argparse.Namespace) -> int:
    from .report import render_report

    print(f"wrote {render_report(args.results_dir)}")
    return 0


def run_hub_serve(args: argparse.Namespace, rest: list[str]) -> int:
    from .hub.server import serve_main

    return serve_main(rest)


def run_data_summary(args: argparse.Namespace) -> int:
    from .partition import run_summary

    return run_summary(args)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the sub-command.

    Exit status: the command's (0 on success); 2 for a usage error (argparse) or for any
    :class:`~federated_factory.errors.FederatedFactoryError`, reported as one ``error: ...`` line on stderr
    without a traceback.
    """
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "takes_rest", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if getattr(args, "takes_rest", False):
            return int(args.func(args, rest) or 0)
        return int(args.func(args) or 0)
    except FederatedFactoryError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
