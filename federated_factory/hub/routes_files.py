"""Routes that read files of a revision: tree listing, paths-info, and ``/resolve`` downloads."""

from __future__ import annotations

import json
import logging
import os
from urllib.parse import parse_qs, quote, urlencode

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from ._auth import Identity
from ._base import TRUE, RouteBase, json_response, not_found_or_unauthorized
from ._storage import FileEntry, StorageError, validate_path

logger = logging.getLogger("federated_factory.hub")

TREE_PAGE = 1000
TREE_PAGE_EXPAND = 50
MAX_PATHS_INFO = 10_000  # distinct paths in one paths-info request (huggingface_hub sends at most 50 at a time)


class _BlobResponse(FileResponse):
    chunk_size = 1024 * 1024


class FileRoutes(RouteBase):
    """Reading a revision's files."""

    async def tree(self, request: Request, ident: Identity | None, types, ns, name, rev, path=None) -> Response:
        key, _ = self._repo(ident, types, ns, name)
        commit = self.storage.resolve(key, rev)
        path = (path or "").strip("/")
        if path:
            validate_path(path)
        recursive = request.query_params.get("recursive") in TRUE
        expand = request.query_params.get("expand") in TRUE
        index = await run_in_threadpool(self.storage.tree_index, key, commit)
        if not index.is_folder(path):
            raise StorageError(
                404,
                f"Entry not found: {path!r} is not a folder at {commit.id}",
                "EntryNotFound",
                {"X-Repo-Commit": commit.id},
            )
        paths = index.below(path) if recursive else index.children[path]
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
        return json_response(entries, headers=headers)

    async def paths_info(self, request: Request, ident: Identity | None, types, ns, name, rev) -> Response:
        key, _ = self._repo(ident, types, ns, name)
        body = await self._read_body(request)
        is_json = "json" in request.headers.get("content-type", "")
        commit = self.storage.resolve(key, rev)

        def answer() -> list[dict]:
            if is_json:
                try:
                    data = json.loads(body)
                    paths, expand = data.get("paths", []), bool(data.get("expand", False))
                except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                    raise StorageError(400, "paths-info expects a form or JSON body with 'paths'.") from None
                except RecursionError:
                    raise StorageError(400, "The request body is nested too deeply.") from None
            else:
                try:
                    form = parse_qs(
                        body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                        max_num_fields=MAX_PATHS_INFO + 2,
                    )
                except (UnicodeDecodeError, ValueError):
                    raise StorageError(
                        400, f"paths-info expects an urlencoded form with 'paths' (at most {MAX_PATHS_INFO})."
                    ) from None
                paths = form.get("paths", []) + form.get("paths[]", [])
                expand = (form.get("expand") or ["false"])[-1] in TRUE
            if not isinstance(paths, list):
                raise StorageError(400, "'paths' must be a list of paths.")
            unique = list(dict.fromkeys(p.strip("/") if isinstance(p, str) else p for p in paths))
            if len(unique) > MAX_PATHS_INFO:
                raise StorageError(400, f"paths-info accepts at most {MAX_PATHS_INFO} distinct paths per request.")
            index = self.storage.tree_index(key, commit)
            out = []
            for path in unique:
                path = validate_path(path)
                if path in commit.tree or index.is_folder(path):
                    out.append(self._entry_json(key, index, path, expand))
            return out

        out = await run_in_threadpool(answer)
        return json_response(out, headers={"X-Repo-Commit": commit.id})

    async def resolve(self, request: Request, ident: Identity | None, prefix, ns, name, rev, path) -> Response:
        if prefix is None and ns in ("datasets", "spaces"):  # /datasets/<name>/resolve/...: an id without namespace
            raise not_found_or_unauthorized(ident, name, ns[:-1])
        key = self._key("dataset" if prefix == "datasets" else self._type_from_plural(prefix), ns, name,
                        lookup=True, ident=ident)
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
