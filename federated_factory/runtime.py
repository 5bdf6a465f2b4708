"""Process-global state, set only inside context managers that restore it on exit.

torch, numpy, matplotlib and the HF libraries keep some settings per process (thread count, RNG state,
deterministic-algorithm switch, denormal flushing, progress bars, environment variables). Code in this
project changes them only through the helpers below, so a caller's settings are the same after a call as
before it. :func:`resolve_precision` and :func:`autocast_for` pick and apply the training precision.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

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
    "resolve_precision",
    "seeded",
]
