"""Split a train dataset among federated clients (flwr-datasets partitioner semantics).

flwr-datasets pins ``datasets<5``, so its partitioners are reimplemented here on row
indices. A :class:`Partition` holds, per client, sorted row indices into the *train*
dataset it was made from; it never sees a test split, so no test image can reach a client.
All randomness comes from one ``numpy.random.default_rng(seed)``: same dataset + same
arguments → same partition.

Schemes (``partition_dataset(dataset, scheme, ...)``):

``silos``
    One client per class holding every train row of that class. ``num_clients`` defaults
    to (and must equal) the number of classes. Clients are named ``client-<classname>``.
``pathological`` (alias ``k-classes``)
    flwr's ``PathologicalPartitioner`` with ``class_assignment_mode="first-deterministic"``:
    client ``i`` first gets class ``i % num_classes``; its other ``classes_per_client - 1``
    classes are drawn at random without replacement. When there are fewer clients than
    classes, the extra draws prefer classes no client holds yet, so no class is dropped
    (flwr would drop them with a warning); ``num_clients * classes_per_client <
    num_classes`` is therefore an error. The rows of each class are shuffled and split as
    equally as possible (``np.array_split``) among the clients holding that class.
``dirichlet``
    flwr's ``DirichletPartitioner`` (without self-balancing): for each class, proportions
    ``p ~ Dir(alpha · 1)`` over the clients; the shuffled rows of the class are cut at
    ``floor(cumsum(p) · n)``. The whole draw is repeated until every client has at least
    ``min_partition_size`` rows, at most :data:`DIRICHLET_MAX_RETRIES` times, then
    :class:`PartitionError`.
``iid``
    A random permutation of all rows cut into ``num_clients`` equal chunks (sizes differ
    by at most one).

For every scheme except ``silos``, ``num_clients`` defaults to the number of classes, and
every client must end up with at least ``min_partition_size`` rows.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

from federated_factory.data import class_counts, label_array, load_image_dataset
from federated_factory.errors import FederatedFactoryError, PartitionError

__all__ = [
    "SCHEMES",
    "DIRICHLET_MAX_RETRIES",
    "Partition",
    "partition_dataset",
    "summary_table",
    "plot_heatmap",
    "summary_main",
    "build_summary_parser",
    "run_summary",
]

SCHEMES = ("silos", "pathological", "dirichlet", "iid")
_ALIASES = {"k-classes": "pathological", "k_classes": "pathological", "non-iid-k": "pathological"}
DIRICHLET_MAX_RETRIES = 10


@dataclass
class Partition:
    """Row indices into one train dataset, one sorted int64 array per client (disjoint)."""

    scheme: str
    num_clients: int
    seed: int
    indices: list[np.ndarray]
    client_names: list[str]
    num_rows: int | None = None  # rows of the dataset it was made from (guards against misuse)
    class_names: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)  # alpha, classes_per_client, min_partition_size

    def _check_dataset(self, dataset: datasets.Dataset) -> None:
        if self.num_rows is not None and len(dataset) != self.num_rows:
            raise PartitionError(
                f"this {self.scheme} partition was made from a train dataset of {self.num_rows} rows, "
                f"but got a dataset of {len(dataset)} rows; pass the same train split"
            )

    def client_dataset(self, dataset: datasets.Dataset, i: int) -> datasets.Dataset:
        """Client ``i``'s rows of ``dataset`` (the train split the partition was made from)."""
        self._check_dataset(dataset)
        if not 0 <= i < self.num_clients:
            raise PartitionError(f"client index {i} out of range: this partition has {self.num_clients} clients")
        return dataset.select(self.indices[i])

    def counts(self, dataset: datasets.Dataset) -> np.ndarray:
        """Clients × classes matrix of row counts."""
        self._check_dataset(dataset)
        labels = label_array(dataset)
        num_classes = len(dataset.features["label"].names)
        return np.stack([class_counts(labels[idx], num_classes) for idx in self.indices])

    def sizes(self) -> list[int]:
        """Rows per client."""
        return [len(idx) for idx in self.indices]


def partition_dataset(
    dataset: datasets.Dataset,
    scheme: str,
    *,
    num_clients: int | None = None,
    seed: int = 0,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    min_partition_size: int = 1,
) -> Partition:
    """Partition the rows of a train ``dataset`` (``label`` must be a ``ClassLabel``).

    See the module docstring for the schemes. Raises :class:`PartitionError` for an unknown
    scheme, bad parameters, or when the scheme cannot give every client
    ``min_partition_size`` rows (more clients than rows, more holders of a class than its
    rows, a Dirichlet draw that keeps leaving a client short, ...).
    """
    if isinstance(dataset, datasets.DatasetDict):
        raise PartitionError(
            "partition_dataset takes the train split (a datasets.Dataset), not a DatasetDict; "
            "pass dataset['train']"
        )
    split = getattr(dataset, "split", None)
    if split is not None and str(split) != "train":
        raise PartitionError(
            f"partition_dataset splits the train split among clients; got the {str(split)!r} split "
            f"(evaluation data must never reach a client)"
        )
    label_feature = dataset.features.get("label")
    if not isinstance(label_feature, datasets.ClassLabel):
        raise PartitionError(f"the dataset's 'label' column is {label_feature!r}, not a datasets.ClassLabel")
    scheme_name = _ALIASES.get(str(scheme).lower(), str(scheme).lower())
    if scheme_name not in SCHEMES:
        raise PartitionError(f"unknown partition scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    class_names = list(label_feature.names)
    num_classes = len(class_names)
    labels = label_array(dataset)
    n = len(labels)
    if num_clients is None:
        num_clients = num_classes
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise PartitionError(f"num_clients must be a positive integer, got {num_clients!r}")
    num_clients = int(num_clients)
    if isinstance(min_partition_size, bool) or not isinstance(min_partition_size, (int, np.integer)) or min_partition_size < 0:
        raise PartitionError(f"min_partition_size must be a non-negative integer, got {min_partition_size!r}")
    if n == 0:
        raise PartitionError("cannot partition an empty dataset")
    if num_clients * max(min_partition_size, 1) > n:
        raise PartitionError(
            f"cannot give {num_clients} clients at least {max(min_partition_size, 1)} row(s) each from a train "
            f"split of {n} rows; use fewer clients"
        )
    rng = np.random.default_rng(seed)
    params: dict = {"min_partition_size": int(min_partition_size)}

    if scheme_name == "silos":
        if num_clients != num_classes:
            raise PartitionError(
                f"the silos scheme makes exactly one client per class ({num_classes} classes: "
                f"{', '.join(class_names)}); got num_clients={num_clients}. Leave num_clients unset "
                f"or use pathological/dirichlet/iid"
            )
        indices = [np.flatnonzero(labels == c) for c in range(num_classes)]
        empty = [class_names[c] for c, idx in enumerate(indices) if len(idx) == 0]
        if empty:
            raise PartitionError(
                f"silos partition needs train rows of every class, but class(es) {', '.join(map(repr, empty))} "
                f"have none"
            )
        names = _silo_names(class_names)
    elif scheme_name == "iid":
        indices = np.array_split(rng.permutation(n), num_clients)
        names = _numbered_names(num_clients)
    elif scheme_name == "pathological":
        params["classes_per_client"] = int(classes_per_client)
        indices = _pathological(labels, num_classes, class_names, num_clients, classes_per_client, rng)
        names = _numbered_names(num_clients)
    else:
        if not np.isfinite(alpha) or alpha <= 0:
            raise PartitionError(f"alpha must be a positive number, got {alpha!r}")
        params["alpha"] = float(alpha)
        indices = _dirichlet(labels, num_classes, num_clients, float(alpha), min_partition_size, rng)
        names = _numbered_names(num_clients)

    indices = [np.sort(np.asarray(idx, dtype=np.int64)) for idx in indices]
    sizes = [len(idx) for idx in indices]
    short = [i for i, size in enumerate(sizes) if size < min_partition_size]
    if short:
        i = short[0]
        raise PartitionError(
            f"{scheme_name} partition leaves client {names[i]} with {sizes[i]} rows, fewer than "
            f"min_partition_size={min_partition_size}; use fewer clients"
            + (", more classes per client" if scheme_name == "pathological" else "")
            + (" or a larger alpha" if scheme_name == "dirichlet" else "")
        )
    return Partition(
        scheme=scheme_name,
        num_clients=num_clients,
        seed=int(seed),
        indices=indices,
        client_names=names,
        num_rows=n,
        class_names=class_names,
        params=params,
    )


def _numbered_names(num_clients: int) -> list[str]:
    width = max(2, len(str(num_clients - 1)))
    return [f"client-{i:0{width}d}" for i in range(num_clients)]


def _silo_names(class_names: list[str]) -> list[str]:
    names, seen = [], set()
    for i, name in enumerate(class_names):
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-.") or str(i)
        candidate = f"client-{slug}"
        if candidate in seen:
            candidate = f"client-{slug}-{i}"
        seen.add(candidate)
        names.append(candidate)
    return names


def _pathological(labels, num_classes, class_names, num_clients, k, rng) -> list[np.ndarray]:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_classes:
        raise PartitionError(
            f"classes_per_client must be between 1 and the number of classes ({num_classes}), got {k!r}"
        )
    if num_clients * k < num_classes:
        raise PartitionError(
            f"pathological partition cannot cover {num_classes} classes with {num_clients} clients × "
            f"{k} classes each ({num_clients * k} slots); the rows of some classes would be used by no "
            f"client. Use more clients or a larger classes_per_client"
        )
    held = [[i % num_classes] for i in range(num_clients)]
    covered = np.zeros(num_classes, dtype=bool)
    covered[[h[0] for h in held]] = True
    for client in held:
        while len(client) < k:
            candidates = np.setdiff1d(np.arange(num_classes), client)
            uncovered = candidates[~covered[candidates]]
            pool = uncovered if uncovered.size else candidates
            choice = int(rng.choice(pool))
            client.append(choice)
            covered[choice] = True
    holders = [[i for i, h in enumerate(held) if c in h] for c in range(num_classes)]
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in range(num_classes):
        rows = rng.permutation(np.flatnonzero(labels == c))
        if len(holders[c]) > len(rows):
            raise PartitionError(
                f"class {class_names[c]!r} has {len(rows)} train rows but {len(holders[c])} clients hold it; "
                f"use fewer clients or fewer classes per client"
            )
        for client, chunk in zip(holders[c], np.array_split(rows, len(holders[c]))):
            parts[client].append(chunk)
    return [np.concatenate(p) if p else np.zeros(0, np.int64) for p in parts]


def _dirichlet(labels, num_classes, num_clients, alpha, min_partition_size, rng) -> list[np.ndarray]:
    by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    concentration = np.full(num_clients, alpha)
    sizes: list[int] = []
    for _attempt in range(DIRICHLET_MAX_RETRIES + 1):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for rows in by_class:
            if rows.size == 0:
                continue
            rows = rng.permutation(rows)
            proportions = rng.dirichlet(concentration)
            cuts = (np.cumsum(proportions) * len(rows)).astype(int)[:-1]
            for client, chunk in enumerate(np.split(rows, cuts)):
                parts[client].append(chunk)
        result = [np.concatenate(p) if p else np.zeros(0, np.int64) for p in parts]
        sizes = [len(r) for r in result]
        if min(sizes) >= min_partition_size:
            return result
    raise PartitionError(
        f"dirichlet partition (alpha={alpha}) left some client with fewer than min_partition_size="
        f"{min_partition_size} rows in {DIRICHLET_MAX_RETRIES + 1} draws (smallest client: {min(sizes)} "
        f"rows); use fewer clients, a larger alpha or a smaller min_partition_size"
    )


# --------------------------------------------------------------------------- summaries


def summary_table(partition: Partition, dataset: datasets.Dataset) -> str:
    """Plain-text table: a header line, then one line per client (counts per class, total)."""
    counts = partition.counts(dataset)
    class_names = list(dataset.features["label"].names)
    header = ["client", *class_names, "total"]
    rows = [[name, *(str(int(v)) for v in row), str(int(row.sum()))] for name, row in zip(partition.client_names, counts)]
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]

    def fmt(cells):
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    return "\n".join(fmt(r) for r in [header, *rows])


def plot_heatmap(partition: Partition, dataset: datasets.Dataset, path) -> Path:
    """Save a clients × classes heatmap of row counts, each cell annotated, as a PNG at ``path``.

    Drawn on its own Agg canvas (:func:`federated_factory.plots.new_figure`: no pyplot, no global state).
    """
    from federated_factory.plots import new_figure, save_figure

    counts = partition.counts(dataset)
    class_names = list(dataset.features["label"].names)
    n_clients, n_classes = counts.shape
    fig = new_figure((max(4.0, 0.7 * n_classes + 2.5), max(3.0, 0.35 * n_clients + 1.8)))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="rows")
    ax.set_xticks(range(n_classes), labels=class_names, rotation=45 if max(map(len, class_names)) > 3 else 0,
                  ha="right" if max(map(len, class_names)) > 3 else "center")
    ax.set_yticks(range(n_clients), labels=partition.client_names)
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    ax.set_title(f"{partition.scheme} partition: {n_clients} clients, seed {partition.seed}")
    if counts.size <= 2500:
        threshold = counts.max() / 2 if counts.size else 0
        fontsize = 8 if counts.size <= 400 else 5
        for i in range(n_clients):
            for j in range(n_classes):
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=fontsize,
                        color="black" if counts[i, j] > threshold else "white")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- CLI


def build_summary_parser(prog: str = "federated-factory data summary") -> argparse.ArgumentParser:
    """A stand-alone parser for the ``data summary`` options (``python -m federated_factory.partition``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Partition the train split of a dataset among clients and print the client × class counts.",
    )
    from federated_factory.cli import add_data_summary_arguments

    add_data_summary_arguments(parser)
    return parser


def run_summary(args: argparse.Namespace) -> int:
    """Print the client × class table of the partition ``args`` describe (and save the heatmap if asked).
    Raises :class:`~federated_factory.errors.DataError` / :class:`PartitionError` for a bad source, scheme or output path."""
    train = load_image_dataset(args.dataset, "train", image_size=args.image_size, channels=args.channels,
                               revision=args.revision, token=args.token)
    partition = partition_dataset(train, args.partition, num_clients=args.num_clients, seed=args.seed,
                                  alpha=args.alpha, classes_per_client=args.classes_per_client,
                                  min_partition_size=args.min_partition_size)
    print(summary_table(partition, train))
    if args.heatmap:
        try:
            plot_heatmap(partition, train, args.heatmap)
        except OSError as exc:
            raise PartitionError(f"cannot write heatmap {args.heatmap!r}: {exc.strerror or exc}") from None
        print(f"heatmap written to {args.heatmap}", file=sys.stderr)
    return 0


def summary_main(argv: list[str] | None = None) -> int:
    """``python -m federated_factory.partition``: :func:`run_summary` on ``argv``; 0 on success, 2 on error
    (one ``error:`` line) or a usage error."""
    parser = build_summary_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed by argparse)
        return int(exc.code or 0)
    try:
        return run_summary(args)
    except FederatedFactoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(summary_main())
