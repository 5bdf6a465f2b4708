"""Plumbing shared by the endpoint's route groups: responses, errors, request bodies, repo lookup and access."""

from __future__ import annotations

import json
import os
import re

from starlette.requests import Request
from starlette.responses import JSONResponse

from ._auth import AccessControl, Identity
from ._storage import (
    RepoKey,
    Storage,
    StorageError,
    TreeIndex,
    validate_name,
    validate_namespace,
    validate_repo_type,
)

MAX_JSON_BODY = 10 * 1024 * 1024  # create/delete/preupload/paths-info/lfs-batch bodies
MAX_DRAIN = 32 * 1024 * 1024
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]+$")
TRUE = {"1", "true", "True", "yes"}


async def limited_body(request: Request, limit: int):
    """The request body's chunks, refused with 413 as soon as it declares or sends more than ``limit`` bytes
    (the rest of an oversized body is drained, so the connection stays usable)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise StorageError(413, f"Request body too large ({declared} bytes; the limit is {limit}).")
    total = 0
    stream = request.stream()
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            await drain(stream)
            raise StorageError(413, f"Request body too large (the limit is {limit} bytes).")
        yield chunk


async def drain(stream, limit: int = MAX_DRAIN) -> None:
    """Discard (a bounded amount of) the rest of a refused body, so the client gets to read our error response."""
    discarded = 0
    async for chunk in stream:
        discarded += len(chunk)
        if discarded > limit:
            break


def json_response(data: object, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=headers)


def header_safe(text: str, limit: int = 1000) -> str | None:
    """``text`` as one header-safe line (printable ASCII only), or None if it cannot be one."""
    text = " ".join(text.split())
    if text.isascii() and text.isprintable() and len(text) < limit:
        return text
    return None


def error_response(exc: StorageError) -> JSONResponse:
    headers = {k: v for k, v in exc.headers.items() if header_safe(v) == v}
    if exc.code:
        headers["X-Error-Code"] = exc.code
    message = header_safe(exc.message)
    if message is not None:
        headers["X-Error-Message"] = message
    return json_response({"error": exc.message}, exc.status, headers)


def not_found_or_unauthorized(ident: Identity | None, repo_id: str, repo_type: str) -> StorageError:
    # The Hub answers 401 to anonymous requests and 404 to authenticated ones, with the same error code, so that
    # nobody learns whether a private repo exists; huggingface_hub raises RepositoryNotFoundError for both.
    status = 401 if ident is None else 404
    return StorageError(
        status,
        f"Repository Not Found for url: {repo_type}s/{repo_id}. Please make sure you specified the correct "
        "`repo_id` and `repo_type`. If you are trying to access a private or gated repo, make sure you are "
        "authenticated.",
        "RepoNotFound",
    )


def parse_json_object(body: bytes, what: str = "The request body") -> dict:
    try:
        data = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise StorageError(400, f"{what} is not valid JSON.") from None
    except RecursionError:
        raise StorageError(400, f"{what} is nested too deeply.") from None
    if not isinstance(data, dict):
        raise StorageError(400, f"{what} must be a JSON object.")
    return data


class RouteBase:
    """State and helpers every route group uses (mixed into :class:`~federated_factory.hub.app.HubApp`)."""

    storage: Storage
    access: AccessControl
    public_url: str | None
    max_commit_bytes: int
    _secret: bytes

    def _identify(self, request: Request) -> Identity | None:
        header = request.headers.get("authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        ident = self.access.identify(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if ident is None:
            raise StorageError(401, "Invalid credentials in Authorization header")
        return ident

    def _base_url(self, request: Request) -> str:
        if self.public_url:
            return self.public_url
        host = request.headers.get("host", "")
        if not _HOST_RE.match(host):
            server = request.scope.get("server") or ("127.0.0.1", 80)
            host = f"{server[0]}:{server[1]}"
        return f"{request.url.scheme}://{host}"

    @staticmethod
    async def _read_body(request: Request, limit: int = MAX_JSON_BODY) -> bytes:
        return b"".join([chunk async for chunk in limited_body(request, limit)])

    async def _read_json(self, request: Request, limit: int = MAX_JSON_BODY) -> dict:
        return parse_json_object(await self._read_body(request, limit))

    def _key(self, repo_type: str, ns: str | None, name: str | None, *, lookup: bool = False,
             ident: Identity | None = None) -> RepoKey:
        """The repo named by a request (its stored spelling if it exists: names ignore case).

        ``lookup=True`` (an existing repo is addressed): an id without namespace answers RepoNotFound, as on the Hub.
        """
        repo_type = validate_repo_type(repo_type)
        if not ns or not name:
            if lookup:  # e.g. "gpt2": the Hub answers RepoNotFound, so repo_exists() returns False
                raise not_found_or_unauthorized(ident, ns or name or "", repo_type)
            raise StorageError(400, "Repo ids must have the form 'namespace/name'.")
        validate_namespace(ns)
        validate_name(name, "repo name")
        return self.storage.canonical(RepoKey(repo_type, ns, name))

    @staticmethod
    def _type_from_plural(types: str | None) -> str:
        if types == "spaces":
            raise StorageError(400, "Spaces are not supported by this endpoint (model and dataset repos only).")
        return "dataset" if types == "datasets" else "model"

    def _can_read(self, ident: Identity | None, key: RepoKey, meta: dict) -> bool:
        if not meta.get("private"):
            return True
        return ident is not None and (ident.user == key.namespace or key.namespace in ident.orgs)

    @staticmethod
    def _can_write_namespace(ident: Identity | None, namespace: str) -> bool:
        return ident is not None and ident.can_write and (ident.user == namespace or namespace in ident.orgs)

    def _open(self, ident: Identity | None, key: RepoKey, *, write: bool = False) -> dict:
        meta = self.storage.repo_meta(key)
        if meta is None or not self._can_read(ident, key, meta):
            raise not_found_or_unauthorized(ident, key.repo_id, key.repo_type)
        if write and not self._can_write_namespace(ident, key.namespace):
            if ident is None:
                raise StorageError(401, f"Authentication with a write token is required to modify {key.repo_id}.")
            if not ident.can_write:
                raise StorageError(403, f"Your token for {ident.user} is read-only: it cannot modify {key.repo_id}.")
            raise StorageError(403, f"You don't have write access to {key.repo_id}.")
        return meta

    def _repo(self, ident: Identity | None, types: str | None, ns: str, name: str, *, write: bool = False
              ) -> tuple[RepoKey, dict]:
        """Look up the repo of an ``/api/{types}/{ns}/{name}/...`` route and check access (before any body is read)."""
        key = self._key(self._type_from_plural(types), ns, name, lookup=True, ident=ident)
        return key, self._open(ident, key, write=write)

    def _repo_url(self, request: Request, key: RepoKey) -> str:
        return f"{self._base_url(request)}/{key.url_prefix}{key.repo_id}"

    def _entry_json(self, key: RepoKey, index: TreeIndex, path: str, expand: bool) -> dict:
        entry = index.commit.tree.get(path)
        if entry is not None:
            data: dict = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
            if entry.lfs:
                data["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
            last = entry.last_commit
        else:
            data = {"type": "directory", "oid": index.folder_oids[path], "size": 0, "path": path}
            last = index.folder_last_commit(path, lambda cid: self.storage.get_commit(key, cid).date) if expand else ""
        if expand:
            commit = self.storage.get_commit(key, last)
            data["lastCommit"] = {"id": commit.id, "title": commit.title, "date": commit.date}
        return data


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
