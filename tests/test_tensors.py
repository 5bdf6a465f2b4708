"""Behaviour of the image → array conversion shared by training, the audit and the classifiers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from federated_factory.errors import DataError
from federated_factory.data import channels_of_image
from federated_factory.tensors import images_to_uint8


@pytest.mark.parametrize("mode, channels", [("L", 1), ("1", 1), ("I", 1), ("F", 1), ("RGB", 3), ("RGBA", 3), ("P", 3)])
def test_channels_of_image_reads_every_single_channel_mode_as_one_channel(mode, channels):
    assert channels_of_image(Image.new(mode, (4, 4))) == channels


def test_images_to_uint8_stacks_n_c_h_w_and_converts_modes():
    grey = [Image.new("L", (3, 2), 7), Image.new("RGB", (3, 2), (9, 9, 9))]
    out = images_to_uint8(grey, 1)
    assert out.shape == (2, 1, 2, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert out[0].max() == 7 and out[1].max() == 9
    assert images_to_uint8([Image.new("RGB", (3, 2), (1, 2, 3))], 3)[0, :, 0, 0].tolist() == [1, 2, 3]
    with pytest.raises(DataError, match="no images"):
        images_to_uint8([], 3)
