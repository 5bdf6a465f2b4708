"""Atomic local file writes: the one mechanism every module uses to write a file that others may read.

A writer gets a temporary file in the target's own directory (same filesystem, so the final
``os.replace`` is atomic); the target either keeps its old content or gets the whole new one, never a
half-written file. On any error the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "wb", *, fsync: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success move it over ``path``.

    ``fsync=True`` flushes the file and its directory to disk before returning (durability, not only
    atomicity). Parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_writer(path, "wb", fsync=fsync) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_writer(path, "w", fsync=fsync) as handle:
        handle.write(text)
    return Path(path)


def atomic_write_json(path: str | Path, data: Any, *, default: Callable[[Any], Any] | None = str,
                      indent: int | None = 2, fsync: bool = False) -> Path:
    """Write ``data`` as JSON (sorted keys) to ``path`` atomically."""
    with atomic_writer(path, "w", fsync=fsync) as handle:
        json.dump(data, handle, indent=indent, sort_keys=True, default=default)
    return Path(path)
