"""Classifier architectures and their registry: ``build_classifier(arch, ...)`` is the whole interface.

``arch`` strings are timm style, ``"timm/<name>"`` or ``"hf/<name>"`` (a bare name is a timm name):

* ``timm/ff_cnn`` (default): a small VGG-like CNN (3×3 conv–BN–ReLU, widths 32-32 | 64-64 | 128, two
  2×2 max-pools, global average pooling), full resolution at the stem. Fast on CPU.
* ``timm/resnet18``: timm's ResNet-18 (BasicBlock, 2-2-2-2, widths 64…512) with a small-image stem:
  one 3×3 stride-1 conv and no max-pool (the usual CIFAR ResNet). Registered as ``ff_resnet18``.
* ``timm/<name>``: any other timm model, built from its config (``pretrained=False``).
* ``hf/vit-tiny``: transformers ``ViTForImageClassification`` (ViT-Ti width: 192 wide, 12 layers, 3 heads) with
  a 2×2 patch below 28 px and 4×4 from 28 px. Slow on CPU.
* ``hf/resnet``: transformers ``ResNetForImageClassification`` (ResNet-18 layout). Its stem is the fixed
  7×7/2 conv + max-pool of the original ResNet, which leaves 4×4 maps from 16 px inputs: a weak choice here.
* ``hf/<model_type>``: ``AutoConfig.for_model(model_type)`` with the label/channel/size fields filled in.

``ff_cnn`` and ``ff_resnet18`` are registered in timm's registry when this module is imported (importing
``federated_factory.classifier`` does it). No stock timm architecture gives a stride-1 small-image stem;
benchmarks/README.md has the speed and accuracy measurements behind the default.

Models take images in [0, 1] (N×C×H×W, as :func:`federated_factory.tensors.dataset_to_tensors` returns them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.layers import ClassifierHead
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet

from federated_factory.errors import ClassifierError

DEFAULT_ARCH = "timm/ff_cnn"
TIMM_ALIASES = {"resnet18": "ff_resnet18"}  # names whose small-stem version replaces the stock stem
HF_PRESETS = ("vit-tiny", "resnet")
FF_CONFIG_KEY = "federated_factory"  # our metadata inside config.json (timm and transformers ignore it)


# ----------------------------------------------------------------------------------------------------------
# timm models with a small-image stem


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (1, 16, 16),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": (0.0,),
        "std": (1.0,),
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "ff_cnn": _cfg(first_conv="stages.0.0.conv", classifier="head.fc"),
        "ff_resnet18": _cfg(first_conv="conv1", classifier="fc"),
    }
)


class ConvBnAct(nn.Sequential):
    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)


class FFCNN(nn.Module):
    """Small VGG-style CNN for 16–32 px images: stages of 3×3 conv-BN-ReLU, 2×2 max-pool between stages."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        widths: Sequence[int] = (32, 64, 128),
        depths: Sequence[int] = (2, 2, 1),
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if len(widths) != len(depths) or not widths:
            raise ClassifierError(f"ff_cnn: widths {tuple(widths)} and depths {tuple(depths)} must be non-empty and match")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        stages, prev, self.feature_info = [], in_chans, []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
            for _ in range(depth):
                layers.append(ConvBnAct(prev, width))
                prev = width
            stages.append(nn.Sequential(*layers))
            self.feature_info.append(dict(num_chs=width, reduction=2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = prev
        self.head = ClassifierHead(prev, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class SmallStemResNet(ResNet):
    """timm's ResNet with the CIFAR stem: one 3×3 stride-1 conv, no max-pool (full resolution into layer1)."""

    def __init__(self, *args: Any, in_chans: int = 3, **kwargs: Any):
        super().__init__(*args, in_chans=in_chans, **kwargs)
        width = self.conv1.out_channels if isinstance(self.conv1, nn.Conv2d) else self.bn1.num_features
        self.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()
        self.feature_info = [
            dict(info, reduction=max(1, info["reduction"] // 4)) for info in self.feature_info
        ]


@register_model
def ff_cnn(pretrained: bool = False, **kwargs: Any) -> FFCNN:
    """FederatedFactory's fast default classifier (~140k parameters)."""
    return build_model_with_cfg(FFCNN, "ff_cnn", pretrained, **kwargs)


@register_model
def ff_resnet18(pretrained: bool = False, **kwargs: Any) -> SmallStemResNet:
    """ResNet-18 with a 3×3 stride-1 stem and no max-pool, for 16–32 px images (~11M parameters)."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return build_model_with_cfg(SmallStemResNet, "ff_resnet18", pretrained, **dict(model_args, **kwargs))


# ----------------------------------------------------------------------------------------------------------
# transformers models behind the same interface (logits out)


class HFImageClassifier(nn.Module):
    """Wraps a transformers ``*ForImageClassification`` so that ``forward(x)`` returns logits."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf_model = hf_model
        self.num_classes = hf_model.config.num_labels
        self.in_chans = hf_model.config.num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf_model(pixel_values=x).logits


def _hf_config(name: str, num_classes: int, in_chans: int, image_size: int):
    from transformers import AutoConfig, ResNetConfig, ViTConfig

    common = dict(num_labels=num_classes, num_channels=in_chans)
    if name == "vit-tiny":
        patch = 2 if image_size < 28 else 4
        return ViTConfig(
            image_size=image_size, patch_size=patch, hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
            intermediate_size=768, **common,
        )
    if name == "resnet":
        return ResNetConfig(
            embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic",
            downsample_in_first_stage=False, **common,
        )
    config = AutoConfig.for_model(name, **common)
    if hasattr(config, "image_size"):
        config.image_size = image_size
    return config


def _build_hf(name: str, num_classes: int, in_chans: int, image_size: int) -> HFImageClassifier:
    from transformers import AutoModelForImageClassification

    config = _hf_config(name, num_classes, in_chans, image_size)
    return HFImageClassifier(AutoModelForImageClassification.from_config(config))


# ----------------------------------------------------------------------------------------------------------
# registry


def parse_arch(arch: str) -> tuple[str, str]:
    """``"timm/ff_cnn"`` → ``("timm", "ff_cnn")``; a bare name is a timm name."""
    library, sep, name = arch.partition("/")
    if not sep:
        return "timm", arch
    if library not in ("timm", "hf") or not name:
        raise ClassifierError(f"arch {arch!r}: expected 'timm/<name>' or 'hf/<name>'")
    return library, name


def build_classifier(arch: str, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """A freshly initialised classifier (no downloaded weights) for ``in_chans``×``image_size``² inputs in [0, 1].

    Seed torch's RNG first for a reproducible initialisation (``train_classifier`` does).
    """
    library, name = parse_arch(arch)
    if library == "hf":
        model = _build_hf(name, num_classes, in_chans, image_size)
    else:
        name = TIMM_ALIASES.get(name, name)
        if not timm.is_model(name):
            raise ClassifierError(f"arch {arch!r}: timm has no model {name!r}")
        kwargs: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans)
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is not None and cfg.fixed_input_size:
            kwargs["img_size"] = image_size
        model = timm.create_model(name, pretrained=False, **kwargs)
    model.ff_image_size = int(image_size)  # the training size, recorded in the saved preprocessing config
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, image_size, image_size))
    except RuntimeError as err:
        raise ClassifierError(f"arch {arch!r} cannot classify {in_chans}x{image_size}x{image_size} images: {err}") from err
    return model.train()


