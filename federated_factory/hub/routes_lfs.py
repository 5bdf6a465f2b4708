"""Git LFS routes: the batch API (signed upload URLs), uploads, verification, and the Hub's LFS file management
(``list_lfs_files``, ``permanently_delete_lfs_files``)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import time
from datetime import datetime, timezone
from urllib.parse import urlencode

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ._auth import Identity
from ._base import RouteBase, drain, json_response
from ._storage import StorageError
from .ids import HEX_RE, SHA256_RE

MAX_LFS_OBJECT = 50 * 1024**3
MAX_LFS_BATCH = 1000
LFS_URL_TTL_S = 3600
UPLOAD_FLUSH = 4 * 1024 * 1024
LFS_FILES_PAGE = 1000


class LfsRoutes(RouteBase):
    """Large files: uploads through signed URLs, and their listing / permanent deletion."""

    def _sign(self, key, oid: str, size: int, expires: int, user: str) -> str:
        message = f"{key.repo_type}\n{key.repo_id}\n{oid}\n{size}\n{expires}\n{user}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    async def lfs_batch(self, request: Request, ident: Identity | None, prefix, ns, name) -> Response:
        key, _ = self._repo(ident, prefix, ns, name, write=True)
        assert ident is not None
        data = await self._read_json(request)
        if data.get("operation") != "upload":
            raise StorageError(400, "Only the LFS 'upload' operation is supported; download files through /resolve.")
        objects = data.get("objects")
        if not isinstance(objects, list) or len(objects) > MAX_LFS_BATCH:
            raise StorageError(400, f"LFS batch expects 'objects': [{{'oid', 'size'}}, ...] (at most {MAX_LFS_BATCH}).")
        base = self._base_url(request)
        expires = int(time.time()) + LFS_URL_TTL_S
        expires_at = datetime.fromtimestamp(expires, timezone.utc).isoformat().replace("+00:00", "Z")
        out = []
        for obj in objects:
            oid = obj.get("oid") if isinstance(obj, dict) else None
            size = obj.get("size") if isinstance(obj, dict) else None
            if not isinstance(oid, str) or not SHA256_RE.match(oid) or not isinstance(size, int) or size < 0:
                out.append(
                    {
                        "oid": str(oid)[:100],
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
        return json_response(
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
        if len(sig) != 64 or not HEX_RE.match(sig) or not user.isascii():
            raise StorageError(403, "Invalid LFS upload URL signature; ask the batch API for a new one.")
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
                        await drain(stream)
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
            await run_in_threadpool(self.storage.store_lfs_upload, key, tmp_path, oid, size)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_path)
        return Response(status_code=200)

    async def lfs_verify(self, request: Request, ident: Identity | None, prefix, ns, name) -> Response:
        key, _ = self._repo(ident, prefix, ns, name, write=True)
        data = await self._read_json(request)
        oid, size = data.get("oid"), data.get("size")
        if not isinstance(oid, str) or not isinstance(size, int):
            raise StorageError(400, "verify expects {'oid', 'size'}.")
        known = await run_in_threadpool(self.storage.has_lfs_object, key, oid)
        if known is None:
            raise StorageError(404, f"LFS object {oid[:100]} was not uploaded to {key.repo_id}.")
        if known != size:
            raise StorageError(422, f"LFS object {oid} has size {known}, not {size}.")
        return json_response({"message": "Object verified"})

    async def list_lfs_files(self, request: Request, ident: Identity | None, types, ns, name) -> Response:
        """``list_lfs_files``: every LFS object uploaded to the repo (even if no revision uses it any more)."""
        key, _ = self._repo(ident, types, ns, name, write=True)
        try:
            offset = int(request.query_params.get("cursor") or 0)
            limit = min(int(request.query_params.get("limit") or LFS_FILES_PAGE), LFS_FILES_PAGE)
        except ValueError:
            raise StorageError(400, "limit and cursor must be integers.") from None
        if offset < 0 or limit < 1:
            raise StorageError(400, "limit must be positive and cursor non-negative.")
        objects = await run_in_threadpool(self.storage.list_lfs_objects, key)
        page = objects[offset : offset + limit]
        items = [
            {
                "fileOid": obj.oid,
                "oid": obj.oid,
                "filename": obj.filename or obj.oid,
                "pushedAt": obj.pushed_at,
                "ref": obj.ref,
                "size": obj.size,
            }
            for obj in page
        ]
        headers = {}
        if offset + limit < len(objects):
            query = urlencode({"cursor": offset + limit, "limit": limit})
            headers["Link"] = f'<{self._base_url(request)}/api/{key.repo_type}s/{key.repo_id}/lfs-files?{query}>; rel="next"'
        return json_response(items, headers=headers)

    async def delete_lfs_files(self, request: Request, ident: Identity | None, types, ns, name) -> Response:
        """``permanently_delete_lfs_files``: forget the objects, then collect their blobs if nothing references them."""
        key, _ = self._repo(ident, types, ns, name, write=True)
        data = await self._read_json(request)
        deletions = data.get("deletions")
        shas = deletions.get("sha") if isinstance(deletions, dict) else None
        if not isinstance(shas, list) or len(shas) > MAX_LFS_BATCH:
            raise StorageError(400, f"Expected {{'deletions': {{'sha': [...]}}}} with at most {MAX_LFS_BATCH} ids.")
        await run_in_threadpool(self.storage.permanently_delete_lfs_objects, key, shas)
        return json_response({})
