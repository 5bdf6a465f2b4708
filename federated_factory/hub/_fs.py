"""Filesystem primitives of the endpoint's storage: permission modes, directory flushes, "disk full" errors."""

from __future__ import annotations

import errno
import os

DIR_MODE = 0o700
FILE_MODE = 0o600
BLOB_MODE = 0o400
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)})


def _fsync_dir(path: str) -> None:
    """Make a rename durable (POSIX); best effort elsewhere."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
