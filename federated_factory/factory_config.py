"""How a factory is built and trained: `FactoryConfig`, the presets sized for each machine, the UNet and its noise schedule.

A `FactoryConfig` is serialized into every published `factory.json`, so the config is the record of how the
factory was made. `build_unet` and `build_scheduler` turn it into the diffusers components of a `FactoryPipeline`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from .errors import FactoryError


@dataclass
class FactoryConfig:
    """Everything that defines how a factory is trained. Serialized into `factory.json`."""

    image_size: int = 32
    channels: int = 3
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention: bool = False  # self-attention at the lowest resolution
    norm_num_groups: int = 8
    beta_schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    prediction_type: str = "v_prediction"  # or "epsilon" (v gives far cleaner samples at small budgets)
    train_steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.995
    flip: str = "none"  # "none", "h" (horizontal) or "hv" (horizontal and vertical), where the data allows it
    cfg_dropout: float = 0.0  # > 0 trains a null class for classifier-free guidance
    mixed_precision: str = "no"  # "no", "bf16" (autocast) or "auto" (bf16 where native: GPU, CPU with AMX/AVX512-BF16)
    audit_holdout_fraction: float = 0.1  # client images kept out of training for the privacy audit
    seed: int = 0
    checkpoint_every: int = 0  # steps; 0 = no intermediate checkpoints

    def to_dict(self) -> dict:
        data = asdict(self)
        data["block_out_channels"] = list(self.block_out_channels)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> FactoryConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise FactoryError(f"unknown factory config field(s): {sorted(unknown)}")
        data = dict(data)
        if "block_out_channels" in data:
            data["block_out_channels"] = tuple(data["block_out_channels"])
        return cls(**data)


#: Presets sized for the machine. `tiny`: seconds, for tests. `cpu`: a 32×32 client of a couple of
#: thousand images in at most 15 minutes on 2 cores. `gpu`: a bigger network and budget for one H100.
PRESETS: dict[str, FactoryConfig] = {
    "tiny": FactoryConfig(block_out_channels=(16, 32), train_steps=30, batch_size=16, warmup_steps=5, lr=2e-3),
    "demo": FactoryConfig(block_out_channels=(16, 32, 64), train_steps=200, batch_size=64, warmup_steps=50),
    "cpu": FactoryConfig(
        block_out_channels=(32, 64, 64), train_steps=1200, batch_size=64, warmup_steps=100, mixed_precision="auto"
    ),
    "gpu": FactoryConfig(
        block_out_channels=(64, 128, 256),
        layers_per_block=2,
        attention=True,
        norm_num_groups=32,
        train_steps=20000,
        batch_size=256,
        lr=4e-4,
        warmup_steps=500,
        ema_decay=0.9995,
        mixed_precision="auto",
    ),
}


def preset(name: str, **overrides) -> FactoryConfig:
    """The named preset with ``overrides`` applied (e.g. ``image_size=16, channels=1``)."""
    if name not in PRESETS:
        raise FactoryError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def build_unet(config: FactoryConfig, num_classes: int):
    """The factory's class-conditional `UNet2DModel` (one embedding per class, plus a null class for CFG)."""
    from diffusers import UNet2DModel

    levels = len(config.block_out_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if config.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=config.image_size,
        in_channels=config.channels,
        out_channels=config.channels,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=config.norm_num_groups,
        num_class_embeds=num_classes + int(config.cfg_dropout > 0),
    )


def build_scheduler(config: FactoryConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        clip_sample=True,
    )
