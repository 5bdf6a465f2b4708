"""Process-global state, set only inside context managers that restore it on exit.

torch, numpy, matplotlib and the HF libraries keep some settings per process (thread count, RNG state,
deterministic-algorithm switch, denormal flushing, progress bars, environment variables). Code in this
project changes them only through the helpers below, so a caller's settings are the same after a call as
before it. :func:`resolve_precision` and :func:`autocast_for` pick and apply the training precision.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch


@contextlib.contextmanager
def cpu_threads(num_threads: int) -> Iterator[None]:
    """Run with ``torch.set_num_threads(num_threads)`` (0: unchanged), restoring the previous count."""
    previous = torch.get_num_threads()
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def map_in_processes(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int, *,
                     on_result: Callable[[Any, Any], None] | None = None) -> list:
    """``[fn(job) for job in jobs]``, in ``workers`` spawned processes (``workers <= 1``: in this process).

    ``fn`` must be a module-level function and ``jobs`` picklable. Results come back in the order of ``jobs``;
    ``on_result(job, result)`` is called in this process as each job finishes (for progress bars). A job that
    raises re-raises here. Spawned processes inherit the environment (``HF_ENDPOINT`` included), not the thread
    count: a job that must run single-threaded sets it itself (:func:`cpu_threads`).
    """
    if workers <= 1:
        results = []
        for job in jobs:
            results.append(fn(job))
            if on_result is not None:
                on_result(job, results[-1])
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: list = [None] * len(jobs)
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)) or 1,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            if on_result is not None:
                on_result(jobs[i], results[i])
    return results


@contextlib.contextmanager
def side_process(fn: Callable[[Any], Any], job: Any, *, enabled: bool = True) -> Iterator[Callable[[], Any]]:
    """Run ``fn(job)`` in one spawned process while the body of the ``with`` runs; yields ``result()``, which
    waits for it and returns its value (or re-raises its exception).

    With ``enabled=False`` nothing is spawned: ``result()`` runs ``fn(job)`` in this process when first called.
    If the body raises, the side process is terminated. ``fn`` must be a module-level function.
    """
    if not enabled:
        cached: list = []

        def run_here():
            if not cached:
                cached.append(fn(job))
            return cached[0]

        yield run_here
        return
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        pending = pool.apply_async(fn, (job,))
        yield pending.get
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()


@contextlib.contextmanager
def deterministic(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed torch inside a forked RNG (the caller's global RNG state is restored on exit) and turn on
    ``torch.use_deterministic_algorithms`` (warn-only) for the duration."""
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """``torch.manual_seed(seed)`` inside a forked RNG: the caller's global RNG state is restored on exit."""
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Flush denormal floats to zero on CPU for the duration (``torch.set_flush_denormal``), then turn it
    off again. torch cannot report the current setting, so the exit state is "off", torch's default."""
    torch.set_flush_denormal(enabled)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@contextlib.contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for ``None``, remove) environment variables for the duration; restore the old values."""
    previous = {key: os.environ.get(key) for key in values}
    try:
        _set_environment(values)
        yield
    finally:
        _set_environment(previous)


def _set_environment(values: Mapping[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def library_progress_bars(enabled: bool) -> Iterator[None]:
    """Switch the per-file download/load/save bars of huggingface_hub, datasets and diffusers on or off for
    the duration, restoring each library's previous switch on exit."""
    import datasets
    import diffusers
    from huggingface_hub import utils as hub_utils

    hub_was = not hub_utils.are_progress_bars_disabled()
    datasets_was = datasets.is_progress_bar_enabled()
    diffusers_logging = diffusers.utils.logging
    diffusers_was = diffusers_logging.is_progress_bar_enabled()
    _set_bars(enabled, enabled, enabled)
    try:
        yield
    finally:
        _set_bars(hub_was, datasets_was, diffusers_was)


def _set_bars(hub: bool, data: bool, diffusion: bool) -> None:
    import datasets
    import diffusers
    from huggingface_hub import utils as hub_utils

    (hub_utils.enable_progress_bars if hub else hub_utils.disable_progress_bars)()
    (datasets.enable_progress_bars if data else datasets.disable_progress_bars)()
    logging = diffusers.utils.logging
    (logging.enable_progress_bar if diffusion else logging.disable_progress_bar)()


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` → ``"bf16"`` where ``device`` runs bfloat16 natively, else ``"fp32"``."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        native = any(getattr(cpu, fn, lambda: False)() for fn in probes)
        return "bf16" if native else "fp32"
    return "fp32"


def machine() -> dict[str, Any]:
    """What a measurement ran on: platform, cores, torch and its CPU kernels (``cpu_capability``: "AVX2",
    "AVX512", ...; a timing or a last float bit depends on them), whether the CPU runs bf16 natively, the GPU."""
    import platform

    cpu = torch.device("cpu")
    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": resolve_precision("auto", cpu) == "bf16", "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(), "python": platform.python_version(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def autocast_for(precision: str, device: torch.device) -> torch.autocast:
    """The forward-pass autocast context for a resolved ``precision``."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


__all__ = [
    "autocast_for",
    "cpu_threads",
    "deterministic",
    "environment",
    "flush_denormals",
    "library_progress_bars",
    "machine",
    "map_in_processes",
    "resolve_precision",
    "seeded",
    "side_process",
]
