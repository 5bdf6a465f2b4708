"""Convert image datasets to tensors once, so training loops never decode PIL images per step."""

from __future__ import annotations

import numpy as np
import torch

from .errors import DataError

#: PIL modes with one channel (grey levels, bilevel, 32-bit integer or float): read as 1 channel, others as RGB.
def samples_to_uint8(images: np.ndarray) -> np.ndarray:
    """A pipeline's ``output_type="np"`` samples (N×H×W×C floats in [0, 1]) as ``uint8`` N×C×H×W, rounded to
    the nearest grey level: the one conversion used for synthetic chunks, audit samples and sample grids."""
    return np.round(images * 255).astype(np.uint8).transpose(0, 3, 1, 2)


def images_to_uint8(images, channels: int) -> np.ndarray:
    """Stack PIL images (all the same size) into a ``uint8`` array of shape N×C×H×W."""
    mode = "L" if channels == 1 else "RGB"
    arrays = [np.asarray(img.convert(mode) if img.mode != mode else img, dtype=np.uint8) for img in images]
    if not arrays:
        raise DataError("images_to_uint8 got no images")
    stacked = np.stack(arrays)
    if stacked.ndim == 3:
        stacked = stacked[:, None]
    else:
        stacked = stacked.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(stacked)


def dataset_to_tensors(dataset, channels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``datasets.Dataset(image, label)`` → (float32 images in [0, 1], N×C×H×W; int64 labels).

    ``channels`` defaults to :func:`federated_factory.data.channels_of_image` of the first image.
    """
    images = dataset["image"]
    if channels is None:
        from .data import channels_of_image

        channels = channels_of_image(images[0])
    x = torch.from_numpy(images_to_uint8(images, channels)).float().div_(255.0)
    y = torch.as_tensor(np.asarray(dataset["label"], dtype=np.int64))
    return x, y
