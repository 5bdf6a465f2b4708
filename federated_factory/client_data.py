"""A hospital's images as the factory trains on them: checked, converted to uint8 arrays once, split into training
images and the privacy audit's hold-out (stratified, seeded), and fingerprinted without being revealed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from .errors import FactoryError
from .factory_config import FactoryConfig
from .tensors import images_to_uint8


@dataclass
class ClientData:
    """One client's images as uint8 N×C×H×W plus local labels, split into training and audit hold-out."""

    class_names: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    holdout_images: np.ndarray
    holdout_labels: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)  # training images per class name

    @property
    def fingerprint(self) -> str:
        return dataset_fingerprint(self.train_images)


def dataset_fingerprint(images: np.ndarray) -> str:
    """sha256 over the sorted per-image sha256 digests: identifies a training set without revealing it."""
    digests = sorted(hashlib.sha256(np.ascontiguousarray(img).tobytes()).digest() for img in images)
    return hashlib.sha256(b"".join(digests)).hexdigest()


def prepare_client_data(dataset, config: FactoryConfig, classes: list[str] | None = None) -> ClientData:
    """Check a client's `datasets.Dataset(image, label)` and split off the audit hold-out (stratified, seeded).

    ``classes`` restricts training to these global class names (all classes present by default).
    Raises `FactoryError` for an empty dataset, an unknown class, or images of the wrong size/mode.
    """
    from datasets import ClassLabel

    if len(dataset) == 0:
        raise FactoryError("the client dataset is empty: there is nothing to train a factory on")
    label_feature = dataset.features.get("label")
    if not isinstance(label_feature, ClassLabel):
        raise FactoryError(f"the client dataset's 'label' column must be a ClassLabel, got {label_feature!r}")
    names = label_feature.names
    labels = np.asarray(dataset["label"], dtype=np.int64)
    present = [names[i] for i in sorted(set(labels.tolist()))]
    if classes is None:
        classes = present
    if len(set(classes)) != len(classes):
        raise FactoryError(f"duplicate class names in {list(classes)}: each class must be listed once")
    for name in classes:
        if name not in names:
            raise FactoryError(f"unknown class {name!r}: the dataset's classes are {names}")
        if name not in present:
            raise FactoryError(f"class {name!r} has no images in this client's dataset (it holds {present})")

    images = dataset["image"]
    expected_mode = "L" if config.channels == 1 else "RGB"
    for row, img in enumerate(images):
        if img.size != (config.image_size, config.image_size) or img.mode != expected_mode:
            raise FactoryError(
                f"image at row {row} is {img.mode} {img.size[0]}x{img.size[1]}, but the factory expects "
                f"{expected_mode} {config.image_size}x{config.image_size}; load the data with "
                f"image_size={config.image_size}, channels={config.channels}"
            )
    pixels = images_to_uint8(images, config.channels)

    rng = np.random.default_rng(config.seed)
    train_idx, holdout_idx, local = [], [], np.empty(len(labels), dtype=np.int64)
    for local_id, name in enumerate(classes):
        rows = np.flatnonzero(labels == names.index(name))
        local[rows] = local_id
        rows = rows[rng.permutation(len(rows))]
        n_hold = int(round(len(rows) * config.audit_holdout_fraction)) if len(rows) >= 10 else 0
        holdout_idx.extend(rows[:n_hold])
        train_idx.extend(rows[n_hold:])
    train_idx, holdout_idx = np.sort(train_idx), np.sort(holdout_idx).astype(np.int64)
    return ClientData(
        class_names=list(classes),
        train_images=pixels[train_idx],
        train_labels=local[train_idx],
        holdout_images=pixels[holdout_idx],
        holdout_labels=local[holdout_idx],
        counts={name: int((local[train_idx] == i).sum()) for i, name in enumerate(classes)},
    )
