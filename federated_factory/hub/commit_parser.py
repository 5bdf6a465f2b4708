"""The NDJSON commit payload of ``POST /api/{type}s/{repo}/commit/{revision}``, parsed without touching storage.

huggingface_hub sends one JSON object per line: first ``{"key": "header", "value": {"summary", "description",
"parentCommit"?}}``, then one line per operation: ``file`` (base64 content of a small file), ``lfsFile`` (a pointer
to an object uploaded through LFS), ``deletedFile`` or ``deletedFolder``. :func:`iter_commit` turns such lines into
plain tuples one at a time, so a caller can stage each inline file before reading the next line.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator

from ._storage import LFS_SIZE_THRESHOLD, StorageError, validate_path
from .ids import COMMIT_SHA_RE, SHA256_RE

MAX_NDJSON_LINE = 16 * 1024 * 1024  # one line: a base64 regular file is < 10 MB (bigger files go through LFS)
MAX_COMMIT_OPERATIONS = 100_000

Operation = tuple
"""``("file", path, bytes)``, ``("lfsFile", path, oid, size | None)``, ``("deletedFile", path)`` or
``("deletedFolder", path)``."""


def parse_header(value: dict) -> tuple[str, str, str | None]:
    """Check a commit header; returns (title, description, parent commit or None)."""
    summary = value.get("summary")
    description = value.get("description") or ""
    parent = value.get("parentCommit")
    if not isinstance(summary, str) or not summary.strip() or not isinstance(description, str):
        raise StorageError(400, "The commit header needs a non-empty 'summary' (and a string 'description').")
    if parent is not None and (not isinstance(parent, str) or not COMMIT_SHA_RE.match(parent)):
        raise StorageError(400, "parentCommit must be a 40-character hexadecimal commit id.")
    return summary.strip().splitlines()[0][:500], description, parent


def _operation(number: int, kind: object, value: dict) -> Operation:
    if kind == "file":
        path = validate_path(value.get("path"))
        if value.get("encoding", "base64") != "base64" or not isinstance(value.get("content"), str):
            raise StorageError(400, f"File {path!r}: expected base64 'content'.")
        try:
            data = base64.b64decode(value["content"], validate=True)
        except (binascii.Error, ValueError):
            raise StorageError(400, f"File {path!r}: content is not valid base64.") from None
        if len(data) >= LFS_SIZE_THRESHOLD:
            raise StorageError(400, f"File {path!r} is {len(data)} bytes: files of 10 MB or more must go through LFS.")
        return ("file", path, data)
    if kind == "lfsFile":
        path = validate_path(value.get("path"))
        oid, size = value.get("oid"), value.get("size")
        if value.get("algo", "sha256") != "sha256" or not isinstance(oid, str) or not SHA256_RE.match(oid):
            raise StorageError(400, f"LFS file {path!r}: 'oid' must be a lowercase hex sha256.")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise StorageError(400, f"LFS file {path!r}: 'size' must be a non-negative integer.")
        return ("lfsFile", path, oid, size)
    if kind in ("deletedFile", "deletedFolder"):
        raw = value.get("path")
        return (kind, validate_path(raw.rstrip("/") if isinstance(raw, str) else raw))
    if kind == "header":
        raise StorageError(400, f"NDJSON line {number}: a commit has exactly one header.")
    raise StorageError(400, f"NDJSON line {number}: unknown operation {str(kind)[:100]!r}.")


def iter_commit(lines: Iterable[bytes]) -> Iterator[tuple]:
    """Yield ``("header", value)`` then each operation of an NDJSON commit; raise StorageError (4xx) on bad input.

    ``lines`` are raw lines (``readline`` with a limit of ``MAX_NDJSON_LINE + 1`` keeps memory bounded).
    """
    seen_header = False
    operations = 0
    for number, line in enumerate(lines, start=1):
        if len(line) > MAX_NDJSON_LINE:
            raise StorageError(
                413,
                f"NDJSON line {number} is longer than {MAX_NDJSON_LINE} bytes; files of "
                f"{LFS_SIZE_THRESHOLD} bytes or more must be uploaded through LFS.",
            )
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StorageError(400, f"NDJSON line {number} is not valid JSON.") from None
        except RecursionError:
            raise StorageError(400, f"NDJSON line {number} is nested too deeply.") from None
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise StorageError(400, f"NDJSON line {number} must be an object with 'key' and 'value'.")
        kind, value = item.get("key"), item["value"]
        if not seen_header:
            if kind != "header":
                raise StorageError(400, "The first NDJSON line of a commit must be its header.")
            seen_header = True
            yield ("header", value)
            continue
        operations += 1
        if operations > MAX_COMMIT_OPERATIONS:
            raise StorageError(413, f"A commit may contain at most {MAX_COMMIT_OPERATIONS} operations.")
        yield _operation(number, kind, value)
    if not seen_header:
        raise StorageError(400, "Empty commit payload: expected an NDJSON header line.")


def parse_commit(lines: Iterable[bytes]) -> tuple[dict, list[Operation]]:
    """The whole payload at once: (header value, operations). For tests and small payloads."""
    items = iter(iter_commit(lines))
    _, header = next(items)
    return header, list(items)
