#!/usr/bin/env python
"""Factory training rate in fp32 vs bf16 autocast on this machine's CPU: does `mixed_precision="auto"` pick right?

One training step of a preset's UNet (forward under autocast or not, MSE loss, backward, AdamW), on random
images of the preset's size, one torch thread; fp32 and bf16 alternate so that load drifts hit both alike.

    python benchmarks/factory_precision.py --preset cpu --out benchmarks/results/factory_precision_cpu.json
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from federated_factory.atomic import atomic_write_json  # noqa: E402
from federated_factory.factory_config import build_unet, preset  # noqa: E402
from federated_factory.factory_training import training_precision  # noqa: E402


def step_seconds(unet, optimizer, batch, bf16: bool) -> float:
    x, t, y = batch
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = unet(x, t, class_labels=y).sample
    loss = F.mse_loss(out.float(), x)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per precision and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = preset(args.preset)
    torch.manual_seed(0)
    unet = build_unet(config, num_classes=1)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    n = config.batch_size
    batch = (torch.randn(n, config.channels, config.image_size, config.image_size),
             torch.randint(0, config.num_train_timesteps, (n,)), torch.zeros(n, dtype=torch.long))
    seconds = {"fp32": [], "bf16": []}
    for _ in range(args.rounds):
        for name in ("fp32", "bf16"):
            step_seconds(unet, optimizer, batch, name == "bf16")  # warm-up
            seconds[name] += [step_seconds(unet, optimizer, batch, name == "bf16") for _ in range(args.steps)]
    rates = {name: n * len(s) / sum(s) for name, s in seconds.items()}
    result = {
        "preset": args.preset,
        "batch_size": n,
        "image_size": config.image_size,
        "threads": 1,
        "images_per_second": rates,
        "bf16_slowdown": rates["fp32"] / rates["bf16"],
        "auto_resolves_to": training_precision("auto", torch.device("cpu")),
        "native_bf16": {"avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
                        "amx": bool(torch.cpu._is_amx_tile_supported())},
        "step_seconds": seconds,
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps({k: result[k] for k in ("images_per_second", "bf16_slowdown", "auto_resolves_to", "native_bf16")},
                     indent=1))
    atomic_write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
