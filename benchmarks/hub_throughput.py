"""Throughput and memory of the Hub-compatible endpoint with the real huggingface_hub client.

Starts ``python -m federated_factory.hub.server`` in a subprocess (so its RSS can be sampled with psutil), uploads a
random file with ``HfApi.upload_file`` (LFS, basic transfer), downloads it with ``hf_hub_download`` into a fresh cache,
and compares both with a plain local file copy of the same file. The server's peak RSS during the upload must stay
less than 100 MB above its idle RSS (uploads are streamed to disk).

    python benchmarks/hub_throughput.py [--size-mb 200] [--out benchmarks/results/hub_throughput.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from federated_factory.hub.env import free_port, use_endpoint  # noqa: E402

MB = 1024 * 1024
RSS_LIMIT_MB = 100


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.01):
        import psutil

        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.samples += 1
            time.sleep(self.interval)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 * MB), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "hub_throughput.json"))
    args = parser.parse_args(argv)

    port = free_port()
    url = use_endpoint(f"http://127.0.0.1:{port}")
    work = Path(tempfile.mkdtemp(prefix="hub-bench-"))
    os.environ["HF_HOME"] = str(work / "hf_home")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.pop("HF_TOKEN", None)
    token = "bench-" + os.urandom(8).hex()
    (work / "users.yaml").write_text("users:\n  bench: {token_env: BENCH_HUB_TOKEN, role: write}\n")
    server_cmd = [
        sys.executable,
        "-m",
        "federated_factory.hub.server",
        "--data-dir",
        str(work / "data"),
        "--port",
        str(port),
        "--config",
        str(work / "users.yaml"),
        "--log-level",
        "warning",
    ]
    server = subprocess.Popen(
        server_cmd,
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "BENCH_HUB_TOKEN": token,
            "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        },
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the Hub endpoint did not start") from None
                time.sleep(0.1)

        import psutil
        from huggingface_hub import HfApi, hf_hub_download

        api = HfApi(token=token)
        api.create_repo("bench/big", private=True)
        api.upload_file(path_or_fileobj=b"warm-up", path_in_repo="warmup.txt", repo_id="bench/big")
        hf_hub_download("bench/big", "warmup.txt", token=token, cache_dir=work / "warm_cache")
        time.sleep(0.5)
        idle_rss = psutil.Process(server.pid).memory_info().rss

        src = work / "big.bin"
        with open(src, "wb") as f:
            for _ in range(args.size_mb):
                f.write(os.urandom(MB))
        size = src.stat().st_size
        t0 = time.perf_counter()
        expected = _sha256(src)  # also warms the page cache, as for the copy below
        sha256_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        shutil.copyfile(src, work / "copy.bin")
        copy_s = time.perf_counter() - t0
        (work / "copy.bin").unlink()

        sampler = RssSampler(server.pid)
        sampler.start()
        t0 = time.perf_counter()
        api.upload_file(path_or_fileobj=str(src), path_in_repo="big.bin", repo_id="bench/big")
        upload_s = time.perf_counter() - t0
        upload_peak = sampler.stop()

        sampler = RssSampler(server.pid)
        sampler.start()
        t0 = time.perf_counter()
        path = hf_hub_download("bench/big", "big.bin", token=token, cache_dir=work / "fresh_cache")
        download_s = time.perf_counter() - t0
        download_peak = sampler.stop()
        if _sha256(Path(path)) != expected:
            raise RuntimeError("downloaded bytes differ from the uploaded ones")

        import huggingface_hub
        import starlette
        import uvicorn

        copy_mbps = size / MB / copy_s
        upload_mbps = size / MB / upload_s
        download_mbps = size / MB / download_s
        delta_mb = (upload_peak - idle_rss) / MB
        result = {
            "command": " ".join(["python", "benchmarks/hub_throughput.py", *map(shlex.quote, argv or sys.argv[1:])]),
            "machine": {
                "cpu_count": os.cpu_count(),
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "python": platform.python_version(),
                "memory_total_mb": round(psutil.virtual_memory().total / MB),
            },
            "versions": {
                "huggingface_hub": huggingface_hub.__version__,
                "starlette": starlette.__version__,
                "uvicorn": uvicorn.__version__,
            },
            "endpoint": url,
            "file_size_bytes": size,
            "local_copy_s": round(copy_s, 3),
            "local_copy_mb_per_s": round(copy_mbps, 1),
            "upload_s": round(upload_s, 3),
            "upload_mb_per_s": round(upload_mbps, 1),
            "upload_note": "HfApi.upload_file wall time: client sha256 (see sha256_of_file_s), preupload, LFS "
            "batch, streamed PUT (server hashes and fsyncs), verify, commit",
            "load_average_1min": round(os.getloadavg()[0], 2),
            "sha256_of_file_s": round(sha256_s, 3),
            "download_s": round(download_s, 3),
            "download_mb_per_s": round(download_mbps, 1),
            "upload_to_copy_throughput_ratio": round(upload_mbps / copy_mbps, 3),
            "download_to_copy_throughput_ratio": round(download_mbps / copy_mbps, 3),
            "server_rss_idle_mb": round(idle_rss / MB, 1),
            "server_rss_peak_upload_mb": round(upload_peak / MB, 1),
            "server_rss_peak_download_mb": round(download_peak / MB, 1),
            "server_rss_upload_delta_mb": round(delta_mb, 1),
            "server_rss_limit_delta_mb": RSS_LIMIT_MB,
            "rss_within_limit": delta_mb < RSS_LIMIT_MB,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0 if result["rss_within_limit"] else 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
