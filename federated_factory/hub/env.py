"""Point the Hugging Face libraries at a Hub endpoint.

`huggingface_hub` reads ``HF_ENDPOINT`` once, when it is first imported (``constants.ENDPOINT`` and
``constants.HUGGINGFACE_CO_URL_TEMPLATE``), and huggingface_hub 2.x uploads through Xet unless
``HF_HUB_DISABLE_XET=1``. The project's own endpoint does not implement Xet, so for any endpoint other
than huggingface.co we disable it. Call :func:`use_endpoint` before importing diffusers, datasets,
transformers, timm or huggingface_hub. This environment is the only global state the project sets,
and it is forced on us by the HF libraries.
"""

from __future__ import annotations

import os
import socket
import sys

HF_DEFAULT_ENDPOINT = "https://huggingface.co"


def use_endpoint(url: str | None) -> str:
    """Route every HF library of this process to ``url`` (``None`` keeps huggingface.co).

    Returns the endpoint in force. Raises ``RuntimeError`` if ``huggingface_hub`` was already imported
    with a different endpoint, because it would silently keep talking to the old one.
    """
    url = (url or os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")
    os.environ["HF_ENDPOINT"] = url
    if url != HF_DEFAULT_ENDPOINT:
        os.environ["HF_HUB_DISABLE_XET"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and constants.ENDPOINT != url:
        raise RuntimeError(
            f"huggingface_hub was imported with HF_ENDPOINT={constants.ENDPOINT!r} before "
            f"use_endpoint({url!r}); set the endpoint before importing HF libraries."
        )
    return url


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (for an in-process endpoint)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
