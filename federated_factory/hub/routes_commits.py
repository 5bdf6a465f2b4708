"""Routes that change or list revisions: preupload, NDJSON commits, history, refs, branches, tags, super-squash."""

from __future__ import annotations

import contextlib
import os
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ._auth import Identity
from ._base import TRUE, RouteBase, json_response, limited_body
from ._storage import StagedBlob, StorageError, is_lfs_path, validate_path, validate_ref_name
from .commit_parser import MAX_NDJSON_LINE, iter_commit, parse_header
from .gitignore import MAX_GITIGNORE, GitIgnore

COMMITS_PAGE = 50
MAX_PREUPLOAD_FILES = 1000


class CommitRoutes(RouteBase):
    """Writing revisions and reading their history."""

    async def preupload(self, request: Request, ident: Identity | None, types, ns, name, rev) -> Response:
        key, _ = self._repo(ident, types, ns, name, write=True)
        data = await self._read_json(request)
        if request.query_params.get("create_pr") in TRUE:
            raise StorageError(400, "Pull requests are not supported by this endpoint.")
        files = data.get("files")
        if not isinstance(files, list) or len(files) > MAX_PREUPLOAD_FILES:
            raise StorageError(
                400, f"preupload expects {{'files': [{{'path', 'size', 'sample'}}, ...]}} (at most {MAX_PREUPLOAD_FILES})."
            )
        commit = self.storage.resolve(key, rev)

        def answer() -> list[dict]:
            ignore = self._gitignore(commit)
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
                        "shouldIgnore": ignore is not None and ignore.ignores(path),
                        "oid": existing.etag if existing is not None else None,
                    }
                )
            return out

        return json_response({"files": await run_in_threadpool(answer), "commitOid": commit.id})

    def _gitignore(self, commit) -> GitIgnore | None:
        entry = commit.tree.get(".gitignore")
        if entry is None or entry.size > MAX_GITIGNORE:
            return None
        try:
            with open(self.storage.blob_path(entry.sha256), encoding="utf-8", errors="replace") as f:
                return GitIgnore(f.read())
        except OSError:
            return None

    async def commit(self, request: Request, ident: Identity | None, types, ns, name, rev) -> Response:
        key, _ = self._repo(ident, types, ns, name, write=True)
        assert ident is not None
        if request.query_params.get("create_pr") in TRUE:
            raise StorageError(400, "Pull requests are not supported by this endpoint; commit to a branch.")
        content_type = request.headers.get("content-type", "")
        if "ndjson" not in content_type:
            raise StorageError(415, "Commits must be sent as application/x-ndjson (huggingface_hub's format).")
        tmp_path = await self._spool(request, self.max_commit_bytes)
        staged: list[StagedBlob] = []
        try:
            title, description, parent, operations = await run_in_threadpool(self._read_commit, tmp_path, staged)
            new = await run_in_threadpool(
                lambda: self.storage.commit(
                    key,
                    branch=rev,
                    operations=operations,
                    author=ident.user,
                    title=title,
                    message=description,
                    parent_commit=parent,
                )
            )
        finally:  # staged files of a refused commit are never stored; those of a stored one were moved already
            for path in [tmp_path] + [blob.tmp_path for blob in staged]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        return json_response(
            {
                "success": True,
                "commitOid": new.id,
                "commitUrl": f"{self._repo_url(request, key)}/commit/{new.id}",
                "hookOutput": "",
                "pullRequestUrl": None,
            }
        )

    def _read_commit(self, tmp_path: str, staged: list[StagedBlob]) -> tuple[str, str, str | None, list[tuple]]:
        """Parse a spooled commit; inline files go to staged temp files (listed in ``staged`` for cleanup)."""
        operations: list[tuple] = []
        with open(tmp_path, "rb") as f:
            items = iter_commit(iter(lambda: f.readline(MAX_NDJSON_LINE + 1), b""))
            _, header = next(items)
            title, description, parent = parse_header(header)
            for op in items:
                if op[0] == "file":
                    blob = self.storage.stage_bytes(op[2])
                    staged.append(blob)
                    operations.append(("file", op[1], blob))
                else:
                    operations.append(op)
        return title, description, parent, operations

    async def _spool(self, request: Request, limit: int) -> str:
        """Stream the request body to a temp file (at most ``limit`` bytes) and return its path."""
        fd, tmp_path = self.storage.new_temp_file(".body")
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in limited_body(request, limit):
                    f.write(chunk)
        except BaseException:
            os.unlink(tmp_path)
            raise
        return tmp_path

    async def list_commits(self, request: Request, ident: Identity | None, types, ns, name, rev) -> Response:
        key, _ = self._repo(ident, types, ns, name)
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
        return json_response(items, headers=headers)

    async def refs(self, request: Request, ident: Identity | None, types, ns, name) -> Response:
        key, _ = self._repo(ident, types, ns, name)
        refs = self.storage.refs(key)
        return json_response(
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

    async def branch(self, request: Request, ident: Identity | None, types, ns, name, rev) -> Response:
        key, _ = self._repo(ident, types, ns, name, write=True)
        data = await self._read_json(request) if request.method == "POST" else {}
        branch = validate_ref_name(rev)
        if request.method == "DELETE":
            await run_in_threadpool(self.storage.delete_ref, key, "branches", branch)
            return json_response({})
        start = data.get("startingPoint") or "main"
        if not isinstance(start, str):
            raise StorageError(400, "startingPoint must be a revision string.")
        commit = self.storage.resolve(key, start)
        await run_in_threadpool(self.storage.create_ref, key, "branches", branch, commit)
        return json_response({})

    async def tag(self, request: Request, ident: Identity | None, types, ns, name, rev) -> Response:
        # POST .../tag/{revision} {"tag": name} creates a tag; DELETE .../tag/{name} deletes one (huggingface_hub).
        key, _ = self._repo(ident, types, ns, name, write=True)
        data = await self._read_json(request) if request.method == "POST" else {}
        if request.method == "DELETE":
            await run_in_threadpool(self.storage.delete_ref, key, "tags", validate_ref_name(rev, "tag"))
            return json_response({})
        tag = validate_ref_name(data.get("tag"), "tag")
        commit = self.storage.resolve(key, rev)
        await run_in_threadpool(self.storage.create_ref, key, "tags", tag, commit)
        return json_response({})

    async def super_squash(self, request: Request, ident: Identity | None, types, ns, name, rev) -> Response:
        """``super_squash_history``: one commit replaces the branch's history; what it alone held is collected."""
        key, _ = self._repo(ident, types, ns, name, write=True)
        assert ident is not None
        data = await self._read_json(request)
        message = data.get("message") or ""
        if not isinstance(message, str):
            raise StorageError(400, "'message' must be a string.")
        new, _ = await run_in_threadpool(
            lambda: self.storage.super_squash(key, branch=rev, author=ident.user, message=message)
        )
        return json_response({"commitId": new.id})

    async def xet(self, request: Request, ident: Identity | None, types, ns, name) -> Response:
        raise StorageError(
            501,
            "Xet storage is not implemented by this endpoint: set HF_HUB_DISABLE_XET=1 in the client "
            "(federated_factory.hub.env.use_endpoint does) so huggingface_hub uploads through LFS.",
        )
