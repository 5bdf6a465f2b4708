"""Identifier formats of the Hub protocol: one copy of each regular expression, for the endpoint and the manifest."""

from __future__ import annotations

import re

COMMIT_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
"""A full git commit id (40 lowercase hexadecimal characters), as the Hub returns in ``sha``/``commitOid``."""

SHORT_COMMIT_RE = re.compile(r"^[0-9a-f]{7,40}$")
"""A commit id or an abbreviation of one (at least 7 characters), accepted as a revision like on the Hub."""

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
"""A lowercase hexadecimal sha256 (LFS object ids and the endpoint's blob names)."""

HEX_RE = re.compile(r"^[0-9a-f]+$")
"""Lowercase hexadecimal digits only (e.g. an HMAC signature)."""


def is_commit_sha(value: object) -> bool:
    """True for a full 40-character lowercase hexadecimal commit id."""
    return isinstance(value, str) and COMMIT_SHA_RE.match(value) is not None
