"""A Hugging Face Hub-compatible HTTP endpoint for air-gapped federations.

The real, unmodified ``huggingface_hub`` client (and diffusers, timm, datasets on top of it) talks to this server
through ``HF_ENDPOINT`` (see :func:`federated_factory.hub.env.use_endpoint`, which also sets
``HF_HUB_DISABLE_XET=1``: Xet storage is not implemented here, uploads use the classic LFS protocol).

Implemented surface (what huggingface_hub 2.x calls for models and datasets):

* ``GET /api/whoami-v2``; ``POST /api/repos/create``; ``DELETE /api/repos/delete``; ``POST /api/validate-yaml``
* ``GET /api/{models,datasets}[?author=&search=]`` (listing), ``GET /api/{type}s/{repo}[/revision/{rev}]`` (info)
* ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]`` (``recursive``, ``expand``, cursor pagination with ``Link``)
* ``POST /api/{type}s/{repo}/paths-info/{rev}``, ``POST .../preupload/{rev}``, ``POST .../commit/{rev}`` (NDJSON)
* ``GET .../commits/{rev}``, ``GET .../refs``, ``POST|DELETE .../branch/{b}`` and ``.../tag/{t}``, ``PUT .../settings``
* ``POST /[datasets/]{repo}.git/info/lfs/objects/batch`` (basic transfer) and ``.../verify``
* ``GET|HEAD /[datasets/]{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag``, ``X-Linked-*`` and ranges

Storage is described in :mod:`federated_factory.hub._storage`, users and tokens in :mod:`federated_factory.hub._auth`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from urllib.parse import parse_qs, quote, unquote, urlencode

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from federated_factory.errors import HubEndpointError

from ._auth import AccessControl, Identity, load_config, parse_token_arg
from ._storage import (
    LFS_SIZE_THRESHOLD,
    Commit,
    FileEntry,
    RepoKey,
    Storage,
    StorageError,
    TreeIndex,
    is_lfs_path,
    validate_name,
    validate_namespace,
    validate_path,
    validate_ref_name,
    validate_repo_type,
)

logger = logging.getLogger("federated_factory.hub")

MAX_JSON_BODY = 10 * 1024 * 1024  # create/delete/preupload/paths-info/lfs-batch/validate-yaml bodies
MAX_COMMIT_BODY = 100 * 1024 * 1024  # one NDJSON commit (streamed to disk)
MAX_NDJSON_LINE = 16 * 1024 * 1024  # one NDJSON line: a base64 regular file is < 10 MB (bigger files go through LFS)
MAX_COMMIT_OPERATIONS = 100_000
MAX_LFS_OBJECT = 50 * 1024**3
LFS_URL_TTL_S = 3600
TREE_PAGE = 1000
TREE_PAGE_EXPAND = 50
COMMITS_PAGE = 50
UPLOAD_FLUSH = 4 * 1024 * 1024
_OID_RE = re.compile(r"^[0-9a-f]{64}$")
_COMMIT_OID_RE = re.compile(r"^[0-9a-f]{40}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]+$")
_YAML_BLOCK = re.compile(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))")
_TRUE = {"1", "true", "True", "yes"}
EXPAND_ALWAYS = {"id", "_id"}


async def _drain(stream, limit: int = 32 * 1024 * 1024) -> None:
    """Discard (a bounded amount of) the rest of a refused body, so the client gets to read our error response."""
    discarded = 0
    async for chunk in stream:
        discarded += len(chunk)
        if discarded > limit:
            break


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=headers)


def _error(exc: StorageError) -> JSONResponse:
    headers = dict(exc.headers)
    if exc.code:
        headers["X-Error-Code"] = exc.code
    message = " ".join(exc.message.split())
    if message.isascii() and len(message) < 1000:
        headers["X-Error-Message"] = message
    return _json({"error": exc.message}, exc.status, headers)


def _not_found_or_unauthorized(ident: Identity | None, key: RepoKey) -> StorageError:
    # The Hub answers 401 to anonymous requests and 404 to authenticated ones, with the same error code, so that
    # nobody learns whether a private repo exists; huggingface_hub raises RepositoryNotFoundError for both.
    status = 401 if ident is None else 404
    return StorageError(
        status,
        f"Repository Not Found: {key.repo_id} ({key.repo_type}). If the repo is private, make sure you are "
        "authenticated with a token that can read it.",
        "RepoNotFound",
    )


def _parse_card(text: str) -> dict | None:
    import yaml

    match = _YAML_BLOCK.match(text)
    if match is None:
        return None
    data = yaml.safe_load(match.group(2))
    return data if isinstance(data, dict) else None


class HubApp:
    """The ASGI application (a Starlette app with a single catch-all route dispatched on the raw path)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        access: AccessControl,
        *,
        public_url: str | None = None,
        max_commit_bytes: int = MAX_COMMIT_BODY,
    ):
        self.storage = Storage(data_dir)
        self.access = access
        self.public_url = public_url.rstrip("/") if public_url else None
        self.max_commit_bytes = max_commit_bytes
        self._secret = secrets.token_bytes(32)  # signs LFS upload URLs; a restart invalidates outstanding ones
        methods = ["GET", "HEAD", "POST", "PUT", "DELETE"]
        self.app = Starlette(
            routes=[Route("/", self._dispatch, methods=methods), Route("/{rest:path}", self._dispatch, methods=methods)]
        )
        t = r"(?P<types>models|datasets|spaces)"
        repo = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"
        web = r"(?:(?P<prefix>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+?)"
        self._routes: list[tuple[frozenset[str], re.Pattern[str], Callable[..., Awaitable[Response]]]] = [
            (frozenset({"GET"}), re.compile(r"/api/whoami-v2"), self.whoami),
            (frozenset({"POST"}), re.compile(r"/api/repos/create"), self.create_repo),
            (frozenset({"DELETE"}), re.compile(r"/api/repos/delete"), self.delete_repo),
            (frozenset({"POST"}), re.compile(r"/api/validate-yaml"), self.validate_yaml),
            (frozenset({"GET"}), re.compile(rf"/api/{t}"), self.list_repos),
            (frozenset({"GET"}), re.compile(rf"/api/{t}/{repo}(?:/revision/(?P<rev>.+))?"), self.repo_info),
            (frozenset({"GET"}), re.compile(rf"/api/{t}/{repo}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?"), self.tree),
            (frozenset({"POST"}), re.compile(rf"/api/{t}/{repo}/paths-info/(?P<rev>.+)"), self.paths_info),
            (frozenset({"POST"}), re.compile(rf"/api/{t}/{repo}/preupload/(?P<rev>.+)"), self.preupload),
            (frozenset({"POST"}), re.compile(rf"/api/{t}/{repo}/commit/(?P<rev>.+)"), self.commit),
            (frozenset({"GET"}), re.compile(rf"/api/{t}/{repo}/commits/(?P<rev>.+)"), self.list_commits),
            (frozenset({"GET"}), re.compile(rf"/api/{t}/{repo}/refs"), self.refs),
            (frozenset({"POST", "DELETE"}), re.compile(rf"/api/{t}/{repo}/branch/(?P<rev>.+)"), self.branch),
            (frozenset({"POST", "DELETE"}), re.compile(rf"/api/{t}/{repo}/tag/(?P<rev>.+)"), self.tag),
            (frozenset({"PUT"}), re.compile(rf"/api/{t}/{repo}/settings"), self.settings),
            (frozenset({"GET", "POST"}), re.compile(rf"/api/{t}/{repo}/xet-(?:read|write)-token(?:/.*)?"), self.xet),
            (frozenset({"PUT"}), re.compile(rf"/api/lfs-upload/{t}/{repo}/(?P<oid>[0-9a-f]{{64}})"), self.lfs_put),
            (frozenset({"GET", "HEAD"}), re.compile(rf"/{web}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), self.resolve),
            (frozenset({"POST"}), re.compile(rf"/{web}\.git/info/lfs/objects/batch"), self.lfs_batch),
            (frozenset({"POST"}), re.compile(rf"/{web}\.git/info/lfs/objects/verify"), self.lfs_verify),
        ]

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)

    # -------------------------------------------------------------------------------------------------- plumbing
    async def _dispatch(self, request: Request) -> Response:
        raw = request.scope.get("raw_path") or request.scope["path"].encode()
        raw_path = raw.decode("latin-1").split("?", 1)[0]
        method = request.method
        ident: Identity | None = None
        started = time.perf_counter()
        try:
            ident = self._identify(request)
            for methods, pattern, handler in self._routes:
                match = pattern.fullmatch(raw_path)
                if match is None:
                    continue
                if method not in methods:
                    raise StorageError(405, f"Method {method} is not allowed on {raw_path}.")
                params = {
                    k: (unquote(v, errors="strict") if v is not None else None) for k, v in match.groupdict().items()
                }
                response = await handler(request, ident, **params)
                break
            else:
                raise StorageError(404, f"Not found: {raw_path} (this endpoint serves the model/dataset Hub API).")
        except StorageError as exc:
            response = _error(exc)
        except UnicodeDecodeError:
            response = _error(StorageError(400, "The request path is not valid UTF-8."))
        except (FileNotFoundError, NotADirectoryError):  # e.g. the repo was deleted while this request ran
            response = _error(StorageError(404, f"Not found: {raw_path} (it may just have been deleted)."))
        except Exception:  # never leak internals (or request headers) to the client
            logger.exception("Internal error on %s %s", method, raw_path)
            response = _error(StorageError(500, "Internal server error."))
        logger.info(
            "%s %s -> %d (%s, %.0f ms)",
            method,
            raw_path,
            response.status_code,
            ident.user if ident else "anonymous",
            (time.perf_counter() - started) * 1000,
        )
        return response

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
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise StorageError(413, f"Request body too large ({declared} bytes; the limit is {limit}).")
        chunks, total = [], 0
        stream = request.stream()
        async for chunk in stream:
            total += len(chunk)
            if total > limit:
                await _drain(stream)
                raise StorageError(413, f"Request body too large (the limit is {limit} bytes).")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _read_json(self, request: Request) -> dict:
        body = await self._read_body(request)
        try:
            data = json.loads(body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StorageError(400, "The request body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise StorageError(400, "The request body must be a JSON object.")
        return data

    def _key(self, repo_type: str, ns: str | None, name: str | None) -> RepoKey:
        if not ns or not name:
            raise StorageError(400, "Repo ids must have the form 'namespace/name'.")
        validate_namespace(ns)
        validate_name(name, "repo name")
        return RepoKey(validate_repo_type(repo_type), ns, name)

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
            raise _not_found_or_unauthorized(ident, key)
        if write and not self._can_write_namespace(ident, key.namespace):
            if ident is None:
                raise StorageError(401, f"Authentication with a write token is required to modify {key.repo_id}.")
            if not ident.can_write:
                raise StorageError(403, f"Your token for {ident.user} is read-only: it cannot modify {key.repo_id}.")
            raise StorageError(403, f"You don't have write access to {key.repo_id}.")
        return meta

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

    # ------------------------------------------------------------------------------------------------- account
    async def whoami(self, request: Request, ident: Identity | None) -> Response:
        if ident is None:
            raise StorageError(401, "Authorization header is required to call whoami.")
        return _json(
            {
                "type": "user",
                "id": hashlib.sha1(ident.user.encode()).hexdigest()[:24],
                "name": ident.user,
                "fullname": ident.user,
                "email": None,
                "emailVerified": False,
                "canPay": False,
                "isPro": False,
                "periodEnd": None,
                "avatarUrl": "",
                "orgs": [
                    {
                        "type": "org",
                        "id": hashlib.sha1(org.encode()).hexdigest()[:24],
                        "name": org,
                        "fullname": org,
                        "isEnterprise": False,
                        "roleInOrg": "write" if ident.can_write else "read",
                    }
                    for org in ident.orgs
                ],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": f"{ident.user} ({ident.role})", "role": ident.role},
                },
            }
        )

    async def validate_yaml(self, request: Request, ident: Identity | None) -> Response:
        import yaml

        data = await self._read_json(request)
        content = data.get("content")
        if not isinstance(content, str):
            raise StorageError(400, "validate-yaml expects {'content': <README text>}.")
        try:
            match = _YAML_BLOCK.match(content)
            if match is not None:
                parsed = yaml.safe_load(match.group(2))
                if parsed is not None and not isinstance(parsed, dict):
                    raise ValueError("the YAML metadata block must be a mapping")
        except (yaml.YAMLError, ValueError) as exc:
            message = f"Invalid YAML metadata: {exc}"
            return _json({"error": message, "errors": [{"message": message}]}, 400)
        return _json({"warnings": []})

    # ------------------------------------------------------------------------------------------- repo lifecycle
    async def create_repo(self, request: Request, ident: Identity | None) -> Response:
        data = await self._read_json(request)
        if ident is None:
            raise StorageError(401, "You must be authenticated (write token) to create a repo.")
        repo_type = data.get("type") or "model"
        if repo_type == "space":
            raise StorageError(400, "Spaces are not supported by this endpoint (model and dataset repos only).")
        namespace = data.get("organization") or ident.user
        key = self._key(repo_type, namespace, data.get("name"))
        if not self._can_write_namespace(ident, key.namespace):
            raise StorageError(
                403,
                f"You don't have the rights to create a repo under the namespace {key.namespace!r}"
                + (" (your token is read-only)." if not ident.can_write else "."),
            )
        visibility = data.get("visibility")
        if visibility not in (None, "public", "private"):
            raise StorageError(400, f"Invalid visibility {visibility!r}: use 'public' or 'private'.")
        private = visibility == "private" if visibility is not None else bool(data.get("private", False))
        url = self._repo_url(request, key)
        try:
            await run_in_threadpool(self.storage.create_repo, key, private=private, author=ident.user)
        except StorageError as exc:
            if exc.status == 409:
                return _json({"error": exc.message, "url": url}, 409)
            raise
        return _json({"url": url, "name": key.repo_id, "id": key.repo_id})

    async def delete_repo(self, request: Request, ident: Identity | None) -> Response:
        data = await self._read_json(request)
        if ident is None:
            raise StorageError(401, "You must be authenticated (write token) to delete a repo.")
        key = self._key(data.get("type") or "model", data.get("organization") or ident.user, data.get("name"))
        self._open(ident, key, write=True)
        await run_in_threadpool(self.storage.delete_repo, key)
        return _json({})

    async def settings(self, request: Request, ident: Identity | None, types, ns, name) -> Response:
        key = self._key(self._type_from_plural(types), ns, name)
        data = await self._read_json(request)
        self._open(ident, key, write=True)
        private = data.get("private")
        if data.get("visibility") is not None:
            if data["visibility"] not in ("public", "private"):
                raise StorageError(400, "visibility must be 'public' or 'private'.")
            private = data["visibility"] == "private"
        if private is not None and not isinstance(private, bool):
            raise StorageError(400, "'private' must be a boolean.")
        meta = await run_in_threadpool(self.storage.update_settings, key, private=private)
        return _json({"private": meta["private"]})

    async def list_repos(self, request: Request, ident: Identity | None, types) -> Response:
        repo_type = self._type_from_plural(types)
        author = request.query_params.get("author")
        search = (request.query_params.get("search") or "").lower()
        try:
            limit = int(request.query_params.get("limit") or 1000)
        except ValueError:
            raise StorageError(400, "limit must be an integer.") from None
        out = []
        for key in self.storage.list_repos(repo_type):
            meta = self.storage.repo_meta(key)
            if meta is None or not self._can_read(ident, key, meta):
                continue
            if (author and key.namespace != author) or (search and search not in key.repo_id.lower()):
                continue
            out.append({"_id": key.repo_id, "id": key.repo_id, "author": key.namespace, "private": meta["private"]})
            if len(out) >= limit:
                break
        return _json(out)

    # -------------------------------------------------------------------------------------------------- reading
    async def repo_info(self, request: Request, ident: Identity | None, types, ns, name, rev=None) -> Response:
        key = self._key(self._type_from_plural(types), ns, name)
        meta = self._open(ident, key)
        commit = self.storage.resolve(key, rev or "main")
        blobs = request.query_params.get("blobs") in _TRUE
        siblings = []
        for path in sorted(commit.tree):
            sibling: dict = {"rfilename": path}
            if blobs:
                entry = commit.tree[path]
                sibling.update(size=entry.size, blobId=entry.git_oid)
                if entry.lfs:
                    sibling["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": entry.pointer_size}
            siblings.append(sibling)
        card = await run_in_threadpool(self._card_data, commit)
        tags = [str(t) for t in (card or {}).get("tags") or [] if isinstance(t, (str, int, float))]
        data: dict = {
            "_id": hashlib.sha1(f"{key.repo_type}/{key.repo_id}".encode()).hexdigest()[:24],
            "id": key.repo_id,
            "author": key.namespace,
            "sha": commit.id,
            "lastModified": commit.date,
            "createdAt": meta.get("createdAt"),
            "private": bool(meta.get("private")),
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": tags,
            "siblings": siblings,
            "usedStorage": sum(entry.size for entry in commit.tree.values()),
        }
        if card is not None:
            data["cardData"] = card
        if key.repo_type == "model":
            data["modelId"] = key.repo_id
            for field in ("library_name", "pipeline_tag"):
                if isinstance((card or {}).get(field), str):
                    data[field] = card[field]
        expand = request.query_params.getlist("expand") + request.query_params.getlist("expand[]")
        if expand:
            data = {k: v for k, v in data.items() if k in EXPAND_ALWAYS or k in expand}
        return _json(data)

    def _card_data(self, commit: Commit) -> dict | None:
        entry = commit.tree.get("README.md")
        if entry is None or entry.size > 1024 * 1024:
            return None
        try:
            with open(self.storage.blob_path(entry.sha256), encoding="utf-8") as f:
                return _parse_card(f.read())
        except Exception:  # a broken card must not break repo_info
            return None

    async def tree(self, request: Request, ident: Identity | None, types, ns, name, rev, path=None) -> Response:
        key = self._key(self._type_from_plural(types), ns, name)
        self._open(ident, key)
        commit = self.storage.resolve(key, rev)
        path = (path or "").strip("/")
        if path:
            validate_path(path)
        recursive = request.query_params.get("recursive") in _TRUE
        expand = request.query_params.get("expand") in _TRUE
        index = await run_in_threadpool(self.storage.tree_index, key, commit)
        if not index.is_folder(path):
            raise StorageError(
                404,
                f"Entry not found: {path!r} is not a folder at {commit.id}",
                "EntryNotFound",
                {"X-Repo-Commit": commit.id},
            )
        if recursive:
            paths = index.below(path)
        else:
            paths = index.children[path]
        default_limit = TREE_PAGE_EXPAND if expand else TREE_PAGE
        try:
            limit = min(int(request.query_params.get("limit") or default_limit), default_limit)
            offset = int(request.query_params.get("cursor") or 0)
        except ValueError:
            raise StorageError(400, "limit and cursor must be integers.") from None
        if limit < 1 or offset < 0:
            raise StorageError(400, "limit must be positive and cursor non-negative.")
        page = paths[offset : offset + limit]
        entries = await run_in_threadpool(lambda: [self._entry_json(key, index, p, expand) for p in page])
        headers = {"X-Repo-Commit": commit.id}
        if offset + limit < len(paths):
            query = urlencode(
                {"recursive": str(recursive), "expand": str(expand), "limit": limit, "cursor": offset + limit}
            )
            next_url = (
                f"{self._base_url(request)}/api/{key.repo_type}s/{key.repo_id}/tree/{commit.id}"
                f"{'/' + quote(path, safe='') if path else ''}?{query}"
            )
            headers["Link"] = f'<{next_url}>; rel="next"'
        return _json(entries, headers=headers)

    async def paths_info(self, request: Request, ident: Identity | None, types, ns, name, rev) -> Response:
        key = self._key(self._type_from_plural(types), ns, name)
        self._open(ident, key)
        body = await self._read_body(request)
        if "json" in request.headers.get("content-type", ""):
            try:
                data = json.loads(body)
                paths, expand = data.get("paths", []), bool(data.get("expand", False))
            except (json.JSONDecodeError, AttributeError):
                raise StorageError(400, "paths-info expects a form or JSON body with 'paths'.") from None
        else:
            try:
                form = parse_qs(
                    body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=10_000
                )
            except (UnicodeDecodeError, ValueError):
                raise StorageError(400, "paths-info expects an urlencoded form with 'paths'.") from None
            paths = form.get("paths", []) + form.get("paths[]", [])
            expand = (form.get("expand") or ["false"])[-1] in _TRUE
        if not isinstance(paths, list):
            raise StorageError(400, "'paths' must be a list of paths.")
        commit = self.storage.resolve(key, rev)
        index = await run_in_threadpool(self.storage.tree_index, key, commit)
        out = []
        for path in paths:
            path = validate_path(path.strip("/") if isinstance(path, str) else path)
            if path in commit.tree or index.is_folder(path):
                out.append(self._entry_json(key, index, path, expand))
        return _json(out, headers={"X-Repo-Commit": commit.id})

    async def list_commits(self, request: Request, ident: Identity | None, types, ns, name, rev) -> Response:
        key = self._key(self._type_from_plural(types), ns, name)
        self._open(ident, key)
        commit = self.storage.resolve(key, rev)
        try:
            page = int(request.query_params.get("p") or 0)
            limit = min(int(request.query_params.get("limit") or COMMITS_PAGE), 1000)
        except ValueError:
            raise StorageError(400, "p and limit must be integers.") from None
        if page < 0 or limit < 1:
            raise StorageError(400, "p must be non-negative and limit positive.")

        def collect() -> tuple[list[dict], bool]:
            items, more = [], False
            for i, c in enumerate(self.storage.history(key, commit)):
                if i >= (page + 1) * limit:
                    more = True
                    break
                if i >= page * limit:
                    items.append(
                        {
                            "id": c.id,
                            "title": c.title,
                            "message": c.message,
                            "authors": [{"user": c.author, "avatar": ""}],
                            "date": c.date,
                        }
                    )
            return items, more

        items, more = await run_in_threadpool(collect)
        headers = {}
        if more:
            next_url = (
                f"{self._base_url(request)}/api/{key.repo_type}s/{key.repo_id}/commits/{commit.id}"
                f"?{urlencode({'p': page + 1, 'limit': limit})}"
            )
            headers["Link"] = f'<{next_url}>; rel="next"'
        return _json(items, headers=headers)

    async def refs(self, request: Request, ident: Identity | None, types, ns, name) -> Response:
        key = self._key(self._type_from_plural(types), ns, name)
        self._open(ident, key)
        refs = self.storage.refs(key)
        return _json(
            {
                "branches": [
                    {"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
                    for b, c in sorted(refs["branches"].items())
                ],
                "tags": [
                    {"name": t, "ref": f"refs/tags/{t}", "targetCommit": c} for t, c in sorted(refs["tags"].items())
                ],
                "converts": [],
                "pullRequests": [],
            }
        )

    async def resolve(self, request: Request, ident: Identity | None, prefix, ns, name, rev, path) -> Response:
        key = self._key("dataset" if prefix == "datasets" else self._type_from_plural(prefix), ns, name)
        validate_path(path)
        self._open(ident, key)
        commit = self.storage.resolve(key, rev)
        entry: FileEntry | None = commit.tree.get(path)
        if entry is None:
            raise StorageError(
                404, f"Entry not found: {path} at {commit.id}", "EntryNotFound", {"X-Repo-Commit": commit.id}
            )
        headers = {"X-Repo-Commit": commit.id, "ETag": f'"{entry.etag}"', "Cache-Control": "private, max-age=0"}
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        blob = self.storage.blob_path(entry.sha256)
        try:
            stat = await anyio.to_thread.run_sync(os.stat, blob)
        except FileNotFoundError:
            logger.error("Blob %s of %s:%s is missing from the store", entry.sha256, key, path)
            raise StorageError(410, f"The content of {path} is missing from this endpoint's store.") from None
        return _BlobResponse(
            blob,
            headers=headers,
            media_type="application/octet-stream",
            stat_result=stat,
            filename=path.rsplit("/", 1)[-1],
            content_disposition_type="inline",
        )

    # -------------------------------------------------------------------------------------------------- writing
    async def preupload(self, request: Request, ident: Identity | None, types, ns, name, rev) -> Response:
        key = self._key(self._type_from_plural(types), ns, name)
        data = await self._read_json(request)
        self._open(ident, key, write=True)
        if request.query_params.get("create_pr") in _TRUE:
            raise StorageError(400, "Pull requests are not supported by this endpoint.")
        files = data.get("files")
        if not isinstance(files, list) or len(files) > 1000:
            raise StorageError(400, "preupload expects {'files': [{'path', 'size', 'sample'}, ...]} (at most 1000).")
        commit = self.storage.resolve(key, rev)
        out = []
        for item in files:
            if not isinstance(item, dict) or not isinstance(item.get("size"), int) or item["size"] < 0:
                raise StorageError(400, "Each preupload file needs a 'path' and a non-negative integer 'size'.")
            path = validate_path(item.get("path"))
            existing = commit.tree.get(path)
            out.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if is_lfs_path(path, item["size"]) else "regular",
                    "shouldIgnore": False,
                    "oid": existing.etag if existing is not None else None,
                }
            )
        return _json({"files": out, "commitOid": commit.id})

    async def commit(self, request: Request, ident: Identity | None, types, ns, name, rev) -> Response:
        key = self._key(self._type_from_plural(types), ns, name)
        self._open(ident, key, write=True)
        assert ident is not None
        if request.query_params.get("create_pr") in _TRUE:
            raise StorageError(400, "Pull requests are not supported by this endpoint; commit to a branch.")
        content_type = request.headers.get("content-type", "")
        if "ndjson" not in content_type:
            raise StorageError(415, "Commits must be sent as application/x-ndjson (huggingface_hub's format).")
        tmp_path = await self._spool(request, self.max_commit_bytes)
        try:
            header, operations = await run_in_threadpool(self._parse_commit, tmp_path)
        finally:
            os.unlink(tmp_path)
        summary = header.get("summary")
        description = header.get("description") or ""
        parent = header.get("parentCommit")
        if not isinstance(summary, str) or not summary.strip() or not isinstance(description, str):
            raise StorageError(400, "The commit header needs a non-empty 'summary' (and a string 'description').")
        if parent is not None and (not isinstance(parent, str) or not _COMMIT_OID_RE.match(parent)):
            raise StorageError(400, "parentCommit must be a 40-character hexadecimal commit id.")
        new = await run_in_threadpool(
            lambda: self.storage.commit(
                key,
                branch=rev,
                operations=operations,
                author=ident.user,
                title=summary.strip().splitlines()[0][:500],
                message=description,
                parent_commit=parent,
            )
        )
        return _json(
            {
                "success": True,
                "commitOid": new.id,
                "commitUrl": f"{self._repo_url(request, key)}/commit/{new.id}",
                "hookOutput": "",
                "pullRequestUrl": None,
            }
        )

    async def _spool(self, request: Request, limit: int) -> str:
        """Stream the request body to a temp file (at most ``limit`` bytes) and return its path."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise StorageError(413, f"Request body too large ({declared} bytes; the limit is {limit}).")
        fd, tmp_path = self.storage.new_temp_file(".body")
        total = 0
        try:
            with os.fdopen(fd, "wb") as f:
                stream = request.stream()
                async for chunk in stream:
                    total += len(chunk)
                    if total > limit:
                        await _drain(stream)
                        raise StorageError(413, f"Request body too large (the limit is {limit} bytes).")
                    f.write(chunk)
        except BaseException:
            os.unlink(tmp_path)
            raise
        return tmp_path

    def _parse_commit(self, tmp_path: str) -> tuple[dict, list[tuple]]:
        header: dict | None = None
        operations: list[tuple] = []
        with open(tmp_path, "rb") as f:
            for number, line in enumerate(iter(lambda: f.readline(MAX_NDJSON_LINE + 1), b""), start=1):
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
                if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
                    raise StorageError(400, f"NDJSON line {number} must be an object with 'key' and 'value'.")
                kind, value = item.get("key"), item["value"]
                if header is None:
                    if kind != "header":
                        raise StorageError(400, "The first NDJSON line of a commit must be its header.")
                    header = value
                    continue
                if len(operations) >= MAX_COMMIT_OPERATIONS:
                    raise StorageError(413, f"A commit may contain at most {MAX_COMMIT_OPERATIONS} operations.")
                if kind == "file":
                    path = validate_path(value.get("path"))
                    if value.get("encoding", "base64") != "base64" or not isinstance(value.get("content"), str):
                        raise StorageError(400, f"File {path!r}: expected base64 'content'.")
                    try:
                        data = base64.b64decode(value["content"], validate=True)
                    except (binascii.Error, ValueError):
                        raise StorageError(400, f"File {path!r}: content is not valid base64.") from None
                    if len(data) >= LFS_SIZE_THRESHOLD:
                        raise StorageError(
                            400, f"File {path!r} is {len(data)} bytes: files of 10 MB or more must go through LFS."
                        )
                    operations.append(("file", path, *self.storage.store_bytes(data)))
                elif kind == "lfsFile":
                    path = validate_path(value.get("path"))
                    oid, size = value.get("oid"), value.get("size")
                    if value.get("algo", "sha256") != "sha256" or not isinstance(oid, str) or not _OID_RE.match(oid):
                        raise StorageError(400, f"LFS file {path!r}: 'oid' must be a lowercase hex sha256.")
                    if size is not None and (not isinstance(size, int) or size < 0):
                        raise StorageError(400, f"LFS file {path!r}: 'size' must be a non-negative integer.")
                    operations.append(("lfsFile", path, oid, size))
                elif kind in ("deletedFile", "deletedFolder"):
                    raw = value.get("path")
                    path = validate_path(raw.rstrip("/") if kind == "deletedFolder" and isinstance(raw, str) else raw)
                    operations.append((kind, path))
                elif kind == "header":
                    raise StorageError(400, f"NDJSON line {number}: a commit has exactly one header.")
                else:
                    raise StorageError(400, f"NDJSON line {number}: unknown operation {kind!r}.")
        if header is None:
            raise StorageError(400, "Empty commit payload: expected an NDJSON header line.")
        return header, operations

    async def branch(self, request: Request, ident: Identity | None, types, ns, name, rev) -> Response:
        key = self._key(self._type_from_plural(types), ns, name)
        data = await self._read_json(request) if request.method == "POST" else {}
        self._open(ident, key, write=True)
        branch = validate_ref_name(rev)
        if request.method == "DELETE":
            await run_in_threadpool(self.storage.delete_ref, key, "branches", branch)
            return _json({})
        start = data.get("startingPoint") or "main"
        if not isinstance(start, str):
            raise StorageError(400, "startingPoint must be a revision string.")
        commit = self.storage.resolve(key, start)
        await run_in_threadpool(self.storage.create_ref, key, "branches", branch, commit)
        return _json({})

    async def tag(self, request: Request, ident: Identity | None, types, ns, name, rev) -> Response:
        # POST .../tag/{revision} {"tag": name} creates a tag; DELETE .../tag/{name} deletes one (huggingface_hub).
        key = self._key(self._type_from_plural(types), ns, name)
        data = await self._read_json(request) if request.method == "POST" else {}
        self._open(ident, key, write=True)
        if request.method == "DELETE":
            await run_in_threadpool(self.storage.delete_ref, key, "tags", validate_ref_name(rev, "tag"))
            return _json({})
        tag = validate_ref_name(data.get("tag"), "tag")
        commit = self.storage.resolve(key, rev)
        await run_in_threadpool(self.storage.create_ref, key, "tags", tag, commit)
        return _json({})

    async def xet(self, request: Request, ident: Identity | None, types, ns, name) -> Response:
        raise StorageError(
            501,
            "Xet storage is not implemented by this endpoint: set HF_HUB_DISABLE_XET=1 in the client "
            "(federated_factory.hub.env.use_endpoint does) so huggingface_hub uploads through LFS.",
        )

    # ------------------------------------------------------------------------------------------------------ LFS
    def _sign(self, key: RepoKey, oid: str, size: int, expires: int, user: str) -> str:
        message = f"{key.repo_type}\n{key.repo_id}\n{oid}\n{size}\n{expires}\n{user}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    async def lfs_batch(self, request: Request, ident: Identity | None, prefix, ns, name) -> Response:
        key = self._key("dataset" if prefix == "datasets" else self._type_from_plural(prefix), ns, name)
        data = await self._read_json(request)
        if data.get("operation") != "upload":
            raise StorageError(400, "Only the LFS 'upload' operation is supported; download files through /resolve.")
        self._open(ident, key, write=True)
        assert ident is not None
        objects = data.get("objects")
        if not isinstance(objects, list) or len(objects) > 1000:
            raise StorageError(400, "LFS batch expects 'objects': [{'oid', 'size'}, ...] (at most 1000).")
        base = self._base_url(request)
        expires = int(time.time()) + LFS_URL_TTL_S
        expires_at = datetime.fromtimestamp(expires, timezone.utc).isoformat().replace("+00:00", "Z")
        out = []
        for obj in objects:
            oid = obj.get("oid") if isinstance(obj, dict) else None
            size = obj.get("size") if isinstance(obj, dict) else None
            if not isinstance(oid, str) or not _OID_RE.match(oid) or not isinstance(size, int) or size < 0:
                out.append(
                    {
                        "oid": str(oid),
                        "size": size if isinstance(size, int) else 0,
                        "error": {"code": 422, "message": "oid must be a lowercase hex sha256, size an integer"},
                    }
                )
                continue
            if size > MAX_LFS_OBJECT:
                out.append(
                    {
                        "oid": oid,
                        "size": size,
                        "error": {"code": 422, "message": f"objects are limited to {MAX_LFS_OBJECT} bytes"},
                    }
                )
                continue
            if await run_in_threadpool(self.storage.has_lfs_object, key, oid) == size:
                out.append({"oid": oid, "size": size})  # already in this repo: no upload needed
                continue
            query = urlencode(
                {
                    "size": size,
                    "expires": expires,
                    "user": ident.user,
                    "sig": self._sign(key, oid, size, expires, ident.user),
                }
            )
            out.append(
                {
                    "oid": oid,
                    "size": size,
                    "authenticated": True,
                    "actions": {
                        "upload": {
                            "href": f"{base}/api/lfs-upload/{key.repo_type}s/{key.repo_id}/{oid}?{query}",
                            "expires_at": expires_at,
                        },
                        "verify": {"href": f"{base}/{key.url_prefix}{key.repo_id}.git/info/lfs/objects/verify"},
                    },
                }
            )
        return _json(
            {"transfer": "basic", "objects": out, "hash_algo": "sha256"},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    async def lfs_put(self, request: Request, ident: Identity | None, types, ns, name, oid) -> Response:
        key = self._key(self._type_from_plural(types), ns, name)
        q = request.query_params
        try:
            size, expires, user, sig = int(q["size"]), int(q["expires"]), q["user"], q["sig"]
        except (KeyError, ValueError):
            raise StorageError(403, "Invalid LFS upload URL; ask the batch API for a new one.") from None
        if not hmac.compare_digest(sig, self._sign(key, oid, size, expires, user)):
            raise StorageError(403, "Invalid LFS upload URL signature; ask the batch API for a new one.")
        if expires < time.time():
            raise StorageError(403, "This LFS upload URL has expired; ask the batch API for a new one.")
        if self.storage.repo_meta(key) is None:
            raise StorageError(404, f"Repository {key.repo_id} not found.", "RepoNotFound")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) != size:
            raise StorageError(400, f"Content-Length {declared} does not match the announced size {size} of {oid}.")
        fd, tmp_path = self.storage.new_temp_file(".lfs")
        digest, total, pending = hashlib.sha256(), 0, []
        pending_size = 0

        def flush(f, chunks: list[bytes]) -> None:
            for chunk in chunks:
                digest.update(chunk)
                f.write(chunk)

        try:
            with os.fdopen(fd, "wb") as f:
                stream = request.stream()
                async for chunk in stream:
                    total += len(chunk)
                    if total > size:
                        await _drain(stream)
                        raise StorageError(400, f"Upload of {oid} is larger than its announced size {size}.")
                    pending.append(chunk)
                    pending_size += len(chunk)
                    if pending_size >= UPLOAD_FLUSH:
                        await anyio.to_thread.run_sync(flush, f, pending)
                        pending, pending_size = [], 0
                await anyio.to_thread.run_sync(flush, f, pending)
                await anyio.to_thread.run_sync(os.fsync, f.fileno())
            if total != size:
                raise StorageError(400, f"Upload of {oid} has {total} bytes, but {size} were announced.")
            if digest.hexdigest() != oid:
                raise StorageError(
                    400, f"sha256 mismatch: the uploaded bytes hash to {digest.hexdigest()}, not {oid}; nothing stored."
                )
            await run_in_threadpool(self.storage.store_blob_from_temp, tmp_path, oid)
            await run_in_threadpool(self.storage.add_lfs_object, key, oid, size)
        except BaseException:
            if os.path.exists(tmp_path):
                os.unlink(tmp_path)
            raise
        return Response(status_code=200)

    async def lfs_verify(self, request: Request, ident: Identity | None, prefix, ns, name) -> Response:
        key = self._key("dataset" if prefix == "datasets" else self._type_from_plural(prefix), ns, name)
        data = await self._read_json(request)
        self._open(ident, key, write=True)
        oid, size = data.get("oid"), data.get("size")
        if not isinstance(oid, str) or not isinstance(size, int):
            raise StorageError(400, "verify expects {'oid', 'size'}.")
        known = await run_in_threadpool(self.storage.has_lfs_object, key, oid)
        if known is None:
            raise StorageError(404, f"LFS object {oid} was not uploaded to {key.repo_id}.")
        if known != size:
            raise StorageError(422, f"LFS object {oid} has size {known}, not {size}.")
        return _json({"message": "Object verified"})


class _BlobResponse(FileResponse):
    chunk_size = 1024 * 1024


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise HubEndpointError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.") from None
    sock.set_inheritable(True)
    return sock


class HubServer:
    """The endpoint, run by uvicorn in a background thread of this process (or in the foreground by the CLI).

    ``tokens`` maps a token to ``(user, "read" | "write")``; ``orgs`` maps an organisation to its members.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        tokens: dict[str, tuple[str, str]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        orgs: dict[str, list[str]] | None = None,
        *,
        public_url: str | None = None,
        log_level: str = "warning",
        max_commit_bytes: int = MAX_COMMIT_BODY,
    ):
        self.data_dir = os.fspath(data_dir)
        self.host = host
        self.port = port
        self.log_level = log_level
        self.access = AccessControl(tokens, orgs)
        self.app = HubApp(self.data_dir, self.access, public_url=public_url, max_commit_bytes=max_commit_bytes)
        self._server = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "[::1]"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def add_token(self, token: str, user: str, role: str = "write") -> None:
        self.access.add_token(token, user, role)

    def set_org(self, org: str, members: list[str]) -> None:
        self.access.set_org(org, members)

    def _config(self):
        import uvicorn

        return uvicorn.Config(
            self.app,
            log_config=None,  # leave the host process' logging alone
            log_level=self.log_level,
            access_log=False,  # uvicorn's access log is off; our own log line never contains headers or queries
            lifespan="off",
            ws="none",
            server_header=False,
            timeout_graceful_shutdown=5,
        )

    def start(self) -> HubServer:
        import uvicorn

        if self._thread is not None and self._thread.is_alive():
            raise HubEndpointError(f"The Hub endpoint is already running at {self.url}.")
        self._open_storage()
        try:
            self._sock = _bind(self.host, self.port)
        except HubEndpointError:
            self.app.storage.close()
            raise
        self.port = self._sock.getsockname()[1]
        self._server = uvicorn.Server(self._config())
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name=f"hub-server-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise HubEndpointError(f"The Hub endpoint failed to start on {self.host}:{self.port}.")
            time.sleep(0.01)
        connect_host = "127.0.0.1" if self.host in ("0.0.0.0", "") else ("::1" if self.host == "::" else self.host)
        with socket.create_connection((connect_host, self.port), timeout=5):
            pass
        logger.info("Hub endpoint serving %s at %s", self.data_dir, self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._sock is not None:
            self._sock.close()
        self.app.storage.close()
        self._server, self._thread, self._sock = None, None, None

    def _open_storage(self) -> None:
        try:
            self.app.storage.open()
        except StorageError as exc:
            raise HubEndpointError(exc.message) from None

    def serve_forever(self) -> None:
        """Run in the foreground (Ctrl-C stops)."""
        import uvicorn

        self._open_storage()
        try:
            self._sock = _bind(self.host, self.port)
            self.port = self._sock.getsockname()[1]
            self._server = uvicorn.Server(self._config())
            self._server.run(sockets=[self._sock])
        finally:
            if self._sock is not None:
                self._sock.close()
            self._sock = None
            self.app.storage.close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_main(argv: list[str] | None = None) -> int:
    """``federated-factory hub serve``: run the endpoint in the foreground."""
    parser = argparse.ArgumentParser(
        prog="federated-factory hub serve",
        description="Serve a Hugging Face Hub-compatible endpoint (models and datasets) from a local directory. "
        "Clients set HF_ENDPOINT=http://HOST:PORT and HF_HUB_DISABLE_XET=1.",
    )
    parser.add_argument("--data-dir", required=True, help="directory holding repos and blobs (created if missing)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default: 8080)")
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="USER=TOKEN[:read|write]",
        help="grant a token (repeatable; role defaults to write). Prefer --config: command lines are visible in ps.",
    )
    parser.add_argument("--config", help="YAML file with users, tokens and orgs (see the README)")
    parser.add_argument("--public-url", help="URL clients use to reach this server, if not the Host they send")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    try:
        tokens: dict[str, tuple[str, str]] = {}
        orgs: dict[str, list[str]] = {}
        if args.config:
            tokens, orgs = load_config(args.config)
        for value in args.token:
            token, user, role = parse_token_arg(value)
            tokens[token] = (user, role)
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        server = HubServer(
            args.data_dir,
            tokens,
            host=args.host,
            port=args.port,
            orgs=orgs,
            public_url=args.public_url,
            log_level=args.log_level,
        )
    except HubEndpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not tokens:
        logger.warning("No tokens configured: public repos are readable, nothing can be written.")
    users = sorted({user for user, _ in tokens.values()})
    logger.info("Serving %s on http://%s:%d for users %s", args.data_dir, args.host, args.port, ", ".join(users))
    try:
        server.serve_forever()
    except HubEndpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(serve_main())
