"""The subset of ``.gitignore`` matching the Hub applies in ``preupload`` (``shouldIgnore``).

Supported: blank lines and ``#`` comments, ``!`` negation (last match wins), a trailing ``/`` (directories only),
a leading or inner ``/`` (anchored to the repo root), ``*``, ``?``, ``[...]`` and ``**``. Escapes (``\\#``) are not; rules longer than
256 characters or with more than 4 ``*`` are skipped (bounded matching time on hostile input).
"""

from __future__ import annotations

import re

MAX_GITIGNORE = 256 * 1024
MAX_RULES = 2000
MAX_RULE_LENGTH = 256
MAX_STARS = 4  # rules with more wildcards are skipped: their regular expressions could backtrack for long


def _translate(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                out.append(f"[{'^' + body[1:] if body.startswith('!') else body}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


class GitIgnore:
    """Compiled rules of one ``.gitignore`` at the repo root."""

    def __init__(self, text: str):
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for line in text[:MAX_GITIGNORE].splitlines()[:MAX_RULES]:
            line = line.rstrip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:]
            dir_only = line.endswith("/")
            line = line.strip("/") if dir_only else line
            anchored = "/" in line.rstrip("/")
            line = line.lstrip("/")
            if not line or len(line) > MAX_RULE_LENGTH or line.replace("**", "*").count("*") > MAX_STARS:
                continue  # too long or too many wildcards to match in bounded time: not applied
            body = _translate(line)
            prefix = "" if anchored else "(?:.*/)?"
            # A directory pattern matches everything below it; a file pattern the path itself or below it.
            suffix = "/.*" if dir_only else "(?:/.*)?"
            self.rules.append((negate, re.compile(f"^{prefix}{body}{suffix}$")))

    def ignores(self, path: str) -> bool:
        ignored = False
        for negate, rule in self.rules:
            if rule.match(path):
                ignored = not negate
        return ignored
