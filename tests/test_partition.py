"""Partitioners: disjoint, deterministic client splits of the train split only."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from federated_factory.data import label_array, load_image_splits
from federated_factory.errors import PartitionError
from federated_factory.partition import (
    DIRICHLET_MAX_RETRIES,
    Partition,
    partition_dataset,
    plot_heatmap,
    summary_main,
    summary_table,
)

SCHEME_KWARGS = {
    "silos": {},
    "pathological": {"num_clients": 7, "classes_per_client": 3},
    "dirichlet": {"num_clients": 6, "alpha": 0.5},
    "iid": {"num_clients": 9},
}


@pytest.fixture(scope="module")
def mnist():
    return load_image_splits("mnist-5k")


@pytest.fixture(scope="module")
def train(mnist):
    return mnist["train"]


def _labels_only(labels, names) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {"label": list(labels)}, features=datasets.Features({"label": datasets.ClassLabel(names=list(names))})
    )


def _assert_disjoint(partition: Partition, num_rows: int, *, covers_all: bool):
    joined = np.concatenate(partition.indices)
    assert len(np.unique(joined)) == len(joined), "clients share rows"
    assert joined.min() >= 0 and joined.max() < num_rows
    if covers_all:
        assert len(joined) == num_rows
    for idx in partition.indices:
        assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)


# --------------------------------------------------------------------------- every scheme


@pytest.mark.parametrize("scheme", list(SCHEME_KWARGS))
def test_every_scheme_is_disjoint_covers_the_train_split_and_is_deterministic_by_seed(train, scheme):
    kwargs = SCHEME_KWARGS[scheme]
    first = partition_dataset(train, scheme, seed=3, **kwargs)
    _assert_disjoint(first, len(train), covers_all=True)
    again = partition_dataset(train, scheme, seed=3, **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(first.indices, again.indices))
    assert first.client_names == again.client_names
    other = partition_dataset(train, scheme, seed=4, **kwargs)
    if scheme == "silos":  # no randomness in silos
        assert all(np.array_equal(a, b) for a, b in zip(first.indices, other.indices))
    else:
        assert any(not np.array_equal(a, b) for a, b in zip(first.indices, other.indices))
    counts = first.counts(train)
    assert counts.shape == (first.num_clients, 10)
    assert counts.sum(axis=0).tolist() == [400] * 10


@pytest.mark.parametrize("scheme", list(SCHEME_KWARGS))
def test_no_test_image_reaches_any_client(mnist, scheme):
    train, test = mnist["train"], mnist["test"]
    partition = partition_dataset(train, scheme, **SCHEME_KWARGS[scheme])
    test_images = {row["bytes"] for row in test.with_format("arrow")["image"].to_pylist()}
    for i in range(partition.num_clients):
        client = partition.client_dataset(train, i)
        client_images = {row["bytes"] for row in client.with_format("arrow")["image"].to_pylist()}
        assert not client_images & test_images
    with pytest.raises(PartitionError, match="4000 rows.*1000 rows"):
        partition.client_dataset(test, 0)


def test_client_dataset_holds_exactly_the_partition_rows(train):
    partition = partition_dataset(train, "dirichlet", num_clients=4, seed=1)
    client = partition.client_dataset(train, 2)
    assert len(client) == len(partition.indices[2])
    assert label_array(client).tolist() == label_array(train)[partition.indices[2]].tolist()
    assert list(client.features) == ["image", "label"]
    with pytest.raises(PartitionError, match="out of range"):
        partition.client_dataset(train, 4)


# --------------------------------------------------------------------------- silos


def test_silos_gives_each_class_to_its_own_client(train):
    partition = partition_dataset(train, "silos")
    assert partition.num_clients == 10
    assert partition.client_names == [f"client-{d}" for d in range(10)]
    assert np.array_equal(partition.counts(train), np.eye(10, dtype=int) * 400)


def test_silos_names_clients_after_sanitised_class_names():
    ds = _labels_only([0, 1, 2], ["red cell", "ig", "big/small"])
    assert partition_dataset(ds, "silos").client_names == ["client-red-cell", "client-ig", "client-big-small"]


@pytest.mark.parametrize("num_clients", [3, 11])
def test_silos_with_another_number_of_clients_is_an_error(train, num_clients):
    with pytest.raises(PartitionError, match=f"one client per class.*num_clients={num_clients}"):
        partition_dataset(train, "silos", num_clients=num_clients)


def test_silos_with_a_class_missing_from_train_is_an_error():
    with pytest.raises(PartitionError, match="'c'"):
        partition_dataset(_labels_only([0, 0, 1], ["a", "b", "c"]), "silos")


# --------------------------------------------------------------------------- pathological


def test_pathological_gives_k_classes_per_client_first_one_deterministic(train):
    partition = partition_dataset(train, "pathological", num_clients=12, classes_per_client=2, seed=5)
    counts = partition.counts(train)
    assert ((counts > 0).sum(axis=1) == 2).all()
    for i in range(12):
        assert counts[i, i % 10] > 0
    for c in range(10):  # each class's rows are split equally among the clients holding it
        held = counts[:, c][counts[:, c] > 0]
        assert held.max() - held.min() <= 1 and held.sum() == 400
    assert partition.client_names[0] == "client-00" and partition.params["classes_per_client"] == 2


def test_pathological_with_fewer_clients_than_classes_still_covers_every_class(train):
    partition = partition_dataset(train, "pathological", num_clients=5, classes_per_client=2, seed=0)
    counts = partition.counts(train)
    assert (counts.sum(axis=0) == 400).all()
    assert ((counts > 0).sum(axis=1) == 2).all()


def test_pathological_that_cannot_cover_the_classes_is_an_error(train):
    with pytest.raises(PartitionError, match=r"cannot cover 10 classes with 4 clients × 2"):
        partition_dataset(train, "pathological", num_clients=4, classes_per_client=2)


@pytest.mark.parametrize("k", [0, 11])
def test_pathological_with_impossible_classes_per_client_is_an_error(train, k):
    with pytest.raises(PartitionError, match="classes_per_client"):
        partition_dataset(train, "pathological", classes_per_client=k)


def test_pathological_with_more_holders_than_rows_of_a_class_is_an_error():
    ds = _labels_only([0] * 20 + [1], ["a", "b"])
    with pytest.raises(PartitionError, match="class 'b' has 1 train rows but"):
        partition_dataset(ds, "pathological", num_clients=6, classes_per_client=2)


# --------------------------------------------------------------------------- dirichlet


def test_dirichlet_gives_every_client_at_least_min_partition_size_rows(train):
    partition = partition_dataset(train, "dirichlet", num_clients=10, alpha=0.1, min_partition_size=50, seed=2)
    assert min(partition.sizes()) >= 50
    assert partition.params == {"alpha": 0.1, "min_partition_size": 50}
    counts = partition.counts(train)
    assert (counts == 0).any()  # alpha 0.1 is strongly non-iid


def test_dirichlet_that_keeps_leaving_a_client_short_is_an_error(train):
    with pytest.raises(PartitionError, match=f"dirichlet.*{DIRICHLET_MAX_RETRIES + 1} draws"):
        partition_dataset(train, "dirichlet", num_clients=40, alpha=0.01, min_partition_size=90)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan")])
def test_dirichlet_with_non_positive_alpha_is_an_error(train, alpha):
    with pytest.raises(PartitionError, match="alpha"):
        partition_dataset(train, "dirichlet", alpha=alpha)


# --------------------------------------------------------------------------- iid


def test_iid_gives_equal_shuffled_chunks(train):
    partition = partition_dataset(train, "iid", num_clients=7, seed=0)
    sizes = partition.sizes()
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 4000
    counts = partition.counts(train)
    assert counts.min() > 30  # every client sees every class (~57 expected)


def test_more_clients_than_rows_is_an_error():
    ds = _labels_only([0, 1, 0, 1], ["a", "b"])
    for scheme in ("iid", "dirichlet", "pathological"):
        with pytest.raises(PartitionError, match="5 clients.*4 rows"):
            partition_dataset(ds, scheme, num_clients=5)


def test_unknown_scheme_and_dataset_dict_are_errors(mnist):
    with pytest.raises(PartitionError, match="unknown partition scheme 'shards'"):
        partition_dataset(mnist["train"], "shards")
    with pytest.raises(PartitionError, match="train split"):
        partition_dataset(mnist, "iid")


def test_partitioning_the_test_split_is_refused(mnist):
    with pytest.raises(PartitionError, match="got the 'test' split"):
        partition_dataset(mnist["test"], "iid", num_clients=2)


# --------------------------------------------------------------------------- summaries and CLI


def test_summary_table_has_a_header_and_one_row_per_client(train):
    partition = partition_dataset(train, "pathological", num_clients=10, seed=0)
    lines = summary_table(partition, train).splitlines()
    assert lines[0].split() == ["client", *[str(d) for d in range(10)], "total"]
    assert len(lines) == 11
    for line, name, size in zip(lines[1:], partition.client_names, partition.sizes()):
        cells = line.split()
        assert cells[0] == name and int(cells[-1]) == size == sum(map(int, cells[1:-1]))


def test_plot_heatmap_writes_a_png(train, tmp_path):
    partition = partition_dataset(train, "dirichlet", num_clients=5, seed=0)
    out = plot_heatmap(partition, train, tmp_path / "plots" / "heat.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_command_prints_one_row_per_client(capsys, tmp_path):
    heat = tmp_path / "h.png"
    code = summary_main(["--dataset", "mnist-5k", "--partition", "silos", "--heatmap", str(heat)])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert len(out) == 1 + 10
    assert [line.split()[0] for line in out[1:]] == [f"client-{d}" for d in range(10)]
    assert all(line.split()[-1] == "400" for line in out[1:])
    assert heat.read_bytes()[:4] == b"\x89PNG"


def test_summary_command_reports_errors_without_traceback(capsys, tmp_path):
    code = summary_main(["--dataset", "mnist-5k", "--partition", "silos", "--num-clients", "3"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "num_clients=3" in err and "Traceback" not in err
    code = summary_main(["--dataset", str(tmp_path / "missing"), "--partition", "iid"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "missing" in err
