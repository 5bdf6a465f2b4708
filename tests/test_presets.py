"""Every factory preset builds a UNet whose forward pass works at 16 and 32 px, grey and RGB."""

import pytest
import torch

from federated_factory.factory_config import PRESETS, build_unet, preset
from federated_factory.errors import FactoryError


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("size, channels", [(16, 1), (32, 3)])
def test_preset_builds_a_working_unet(name, size, channels):
    config = preset(name, image_size=size, channels=channels)
    unet = build_unet(config, num_classes=2)
    x = torch.randn(2, channels, size, size)
    out = unet(x, torch.tensor([10, 500]), class_labels=torch.tensor([0, 1])).sample
    assert out.shape == x.shape


def test_cpu_preset_stays_within_the_published_size_budget():
    unet = build_unet(preset("cpu", image_size=32, channels=3), num_classes=1)
    assert sum(p.numel() for p in unet.parameters()) * 4 <= 10e6  # float32 safetensors of at most 10 MB


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(FactoryError, match="unknown preset 'huge'"):
        preset("huge")
