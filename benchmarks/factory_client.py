#!/usr/bin/env python
"""One hospital's factory on blood-cells-32: training images/s, sampling images/s per sampler and step
count, published size, peak RSS. Results to benchmarks/results/factory_client_<preset>.json.

    python benchmarks/factory_client.py --preset cpu --class eosinophil [--train-steps N]

`--train-steps` shortens the run: rates (images/s) do not depend on it, sample quality does.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data" / "blood-cells-32"


class PeakRSS:
    """Samples this process's resident set size every 50 ms."""

    def __init__(self):
        import psutil

        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--class", dest="class_name", default="eosinophil")
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--sample-batch", type=int, default=64)
    parser.add_argument("--data", default=str(DATA))
    args = parser.parse_args()
    if not Path(args.data).exists():
        print(f"error: {args.data} not found (blood-cells-32 lives in ../shared/data)", file=sys.stderr)
        return 2

    from federated_factory.hub.env import use_endpoint

    use_endpoint("http://127.0.0.1:9")  # nothing is published: the size is measured on the saved folder
    import numpy as np
    import torch

    from federated_factory.client_data import prepare_client_data
    from federated_factory.data import load_image_dataset
    from federated_factory.factory_config import preset
    from federated_factory.factory_training import train_factory
    from federated_factory.pipeline import SAMPLERS, make_scheduler

    train = load_image_dataset(args.data, split="train", image_size=32, channels=3)
    names = train.features["label"].names
    labels = np.asarray(train["label"])
    client = train.select(np.flatnonzero(labels == names.index(args.class_name)))
    overrides = {"image_size": 32, "channels": 3, "flip": "hv"}
    if args.train_steps:
        overrides["train_steps"] = args.train_steps
    config = preset(args.preset, **overrides)
    data = prepare_client_data(client, config)

    with PeakRSS() as rss:
        pipeline, stats = train_factory(data, config, progress=True)
        sampling = []
        pipeline.set_progress_bar_config(disable=True)
        if torch.cuda.is_available():
            pipeline.to("cuda")  # sample where a federation's aggregator would
        for sampler in SAMPLERS:
            for steps in (10, 20, 50):
                if sampler == "ddpm" and steps < 50:
                    continue  # ancestral DDPM is not meant for few steps
                pipeline.scheduler = make_scheduler(sampler, pipeline.scheduler.config)
                for precision in ("fp32", "bf16"):
                    generator = torch.Generator().manual_seed(0)
                    t0 = time.perf_counter()
                    with torch.autocast(pipeline.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                        pipeline(args.class_name, num_images=args.sample_batch, num_inference_steps=steps,
                                 generator=generator, output_type="np")
                    seconds = time.perf_counter() - t0
                    sampling.append({"sampler": sampler, "steps": steps, "precision": precision,
                                     "images": args.sample_batch, "images_per_second": args.sample_batch / seconds})
        with tempfile.TemporaryDirectory() as tmp:
            pipeline.save_pretrained(tmp, safe_serialization=True)
            size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())

    result = {
        "command": "python benchmarks/factory_client.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "client": {"class": args.class_name, "train_images": len(data.train_images), "holdout": len(data.holdout_images)},
        "config": config.to_dict(),
        "training": {"steps": stats.steps, "images_per_second": stats.images_per_second, "seconds": stats.wall_seconds,
                     "final_loss": stats.final_loss},
        "sampling": sampling,
        "published_size_mb": size / 1e6,
        "unet_parameters": sum(p.numel() for p in pipeline.unet.parameters()),
        "peak_rss_mb": rss.peak / 1e6,
    }
    out = REPO / "benchmarks" / "results" / f"factory_client_{args.preset}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
