"""Behaviour of the privacy audit: judged on the worst class, flip-invariant for factories trained with flips,
metric and threshold stated, a memorizing factory refused at publish."""

from __future__ import annotations

import numpy as np
import pytest

from federated_factory.client_data import ClientData
from federated_factory.data import load_image_dataset
from federated_factory.errors import FactoryError
from federated_factory.privacy import audit_privacy, nearest_distances
from federated_factory.tensors import images_to_uint8


@pytest.fixture(scope="module")
def mnist():
    return load_image_dataset("mnist-5k", image_size=16, channels=1)


def pixels(mnist, digit, start, stop):
    rows = np.flatnonzero(np.asarray(mnist["label"]) == digit)[start:stop]
    return images_to_uint8(mnist.select(rows)["image"], 1)


class ReplayPipeline:
    """Stands in for a `FactoryPipeline` that reproduces given images (a perfect memorizer) one class at a time."""

    def __init__(self, images_by_class: dict[str, np.ndarray]):
        self.images_by_class = images_by_class
        self.samplers = []

    def with_sampler(self, sampler):
        self.samplers.append(sampler)
        return self

    def set_progress_bar_config(self, **kwargs):
        pass

    def __call__(self, name, num_images, num_inference_steps, generator, output_type):
        images = self.images_by_class[name]
        chosen = images[np.arange(num_images) % len(images)]
        return type("Output", (), {"images": chosen.transpose(0, 2, 3, 1).astype(np.float32) / 255.0})


# --------------------------------------------------------------------------- the distance


def test_a_flipped_copy_is_at_distance_zero_only_when_the_comparison_is_flip_invariant():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)
    mirrored, upside_down = train[..., ::-1].copy(), train[..., ::-1, :].copy()
    assert (nearest_distances(mirrored, train) > 0.1).all()
    np.testing.assert_array_equal(nearest_distances(mirrored, train, flip="h"), 0.0)
    assert (nearest_distances(upside_down, train, flip="h") > 0.1).all()
    np.testing.assert_array_equal(nearest_distances(upside_down, train, flip="hv"), 0.0)
    np.testing.assert_array_equal(nearest_distances(train, train, flip="none"), 0.0)
    with pytest.raises(FactoryError, match="'x'"):
        nearest_distances(train, train, flip="x")


def test_leave_one_out_never_compares_an_image_with_itself_in_any_orientation():
    symmetric = np.zeros((1, 1, 4, 4), np.uint8)
    symmetric[..., 1:3] = 200  # a vertical bar: its own mirror image
    other = np.full((1, 1, 4, 4), 100, np.uint8)
    images = np.concatenate([symmetric, other])
    d = nearest_distances(images, images, flip="hv", leave_one_out=True)
    expected = float(np.sqrt(((symmetric.astype(float) - other) ** 2).mean()) / 255)
    np.testing.assert_allclose(d, [expected, expected], rtol=1e-6)


# --------------------------------------------------------------------------- the verdict


def test_one_copied_class_fails_the_audit_although_the_pooled_rate_passes(mnist):
    """Ten classes, one of them reproduced exactly: pooled 10% copies would pass, the worst class (100%) fails."""
    names = [str(d) for d in range(10)]
    train = {name: pixels(mnist, int(name), 0, 20) for name in names}
    holdout = {name: pixels(mnist, int(name), 20, 28) for name in names}
    data = ClientData(
        class_names=names,
        train_images=np.concatenate([train[n] for n in names]),
        train_labels=np.repeat(np.arange(10), 20),
        holdout_images=np.concatenate([holdout[n] for n in names]),
        holdout_labels=np.repeat(np.arange(10), 8),
        counts={n: 20 for n in names},
    )
    # class "3" replays its training images; every other class shows fresh (held-out) images of itself
    pipe = ReplayPipeline({n: train[n] if n == "3" else pixels(mnist, int(n), 40, 56) for n in names})
    audit = audit_privacy(pipe, data, samples_per_class=16)
    assert pipe.samplers == ["dpm++"]
    assert audit["per_class"]["3"]["copy_rate"] == 1.0
    assert all(audit["per_class"][n]["copy_rate"] <= 0.1 for n in names if n != "3")
    assert audit["copy_rate"] <= audit["max_copy_rate"] == 0.1  # pooled: the old verdict would have passed
    assert audit["worst_class"] == "3" and audit["worst_copy_rate"] == 1.0
    assert audit["passed"] is False and audit["per_class"]["3"]["passed"] is False
    assert audit["per_class"]["0"]["passed"] is True


def test_a_factory_trained_with_flips_is_audited_flip_invariantly(mnist):
    """Mirrored copies of the training images pass an audit that ignores flips, and fail the flip-invariant one."""
    train, holdout = pixels(mnist, 3, 0, 30), pixels(mnist, 3, 30, 40)
    data = ClientData(class_names=["3"], train_images=train, train_labels=np.zeros(30, np.int64),
                      holdout_images=holdout, holdout_labels=np.zeros(10, np.int64), counts={"3": 30})
    pipe = ReplayPipeline({"3": train[..., ::-1].copy()})  # every sample is a left-right mirrored training image

    blind = audit_privacy(pipe, data, samples_per_class=30, flip="none")
    assert blind["flip_invariant"] is False and blind["passed"] is True  # the hole
    audit = audit_privacy(pipe, data, samples_per_class=30, flip="h")
    assert audit["flip_invariant"] is True and audit["flips_compared"] == ["none", "h"]
    assert audit["worst_copy_rate"] == 1.0 and audit["passed"] is False
    assert "mirrored" in audit["metric"]


def test_the_audit_states_its_metric_threshold_and_settings():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 1, 8, 8), dtype=np.uint8)
    data = ClientData(class_names=["a"], train_images=images[:10], train_labels=np.zeros(10, np.int64),
                      holdout_images=images[10:], holdout_labels=np.zeros(2, np.int64), counts={"a": 10})
    audit = audit_privacy(ReplayPipeline({"a": images[10:]}), data, samples_per_class=4, copy_quantile=0.1,
                          copy_factor=0.25, max_copy_rate=0.2, seed=7)
    assert (audit["copy_quantile"], audit["copy_factor"], audit["max_copy_rate"]) == (0.1, 0.25, 0.2)
    assert audit["samples_per_class"] == 4 and audit["seed"] == 7 and audit["allowed_copies"] is False
    assert "nearest-neighbour distance" in audit["metric"] and "per-pixel RMS" in audit["metric"]
    assert "0.25 x the 0.1 quantile" in audit["threshold_rule"] and "worst class" in audit["threshold_rule"]
    assert "20%" in audit["threshold_rule"]
    assert audit["copy_rule"] == "sample distance < 0.25 x q10 of reference distances"
    row = audit["per_class"]["a"]
    assert row["reference"] == "held-out" and row["reference_images"] == 2 and row["training_images"] == 10
    with pytest.raises(FactoryError, match="copy_quantile"):
        audit_privacy(ReplayPipeline({"a": images}), data, copy_quantile=0.0)


# A real memorizing factory (4 images, 300 steps) refused at publish, and published with --allow-copies only
# on purpose: tests/test_client.py::test_memorizing_factory_is_flagged_and_not_published.
