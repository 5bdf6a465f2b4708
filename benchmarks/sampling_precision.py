#!/usr/bin/env python
"""Sampling rate and image difference, fp32 vs bf16 autocast, for one published factory folder.

    OMP_NUM_THREADS=1 python benchmarks/sampling_precision.py --pipeline runs/<run>/clients/<hospital>/pipeline \\
        --out benchmarks/results/sampling_precision_cpu.json
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="a saved FactoryPipeline folder")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="dpm++")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import numpy as np
    import torch

    from federated_factory.pipeline import FactoryPipeline, make_scheduler

    pipe = FactoryPipeline.from_pretrained(args.pipeline, use_safetensors=True)
    pipe.scheduler = make_scheduler(args.sampler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    name = pipe.config.class_names[0]

    def sample(precision: str):
        generator = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            images = pipe(name, num_images=args.images, num_inference_steps=args.steps, generator=generator,
                          output_type="np").images
        return np.round(images * 255).astype(np.int16), time.perf_counter() - t0

    sample("fp32")  # warm-up
    rates, outputs = {}, {}
    for precision in ("fp32", "bf16") * args.repeats:
        outputs[precision], seconds = sample(precision)
        rates.setdefault(precision, []).append(args.images / seconds)
    diff = np.abs(outputs["fp32"] - outputs["bf16"])
    result = {
        "command": "python benchmarks/sampling_precision.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "class": name, "sampler": args.sampler, "steps": args.steps, "images": args.images,
        "images_per_second": {k: max(v) for k, v in rates.items()},
        "all_rates": rates,
        "speedup_bf16": max(rates["bf16"]) / max(rates["fp32"]),
        "uint8_difference": {"mean": float(diff.mean()), "max": int(diff.max()),
                             "fraction_of_pixels_changed": float((diff > 0).mean())},
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
