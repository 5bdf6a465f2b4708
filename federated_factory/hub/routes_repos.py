"""Routes about accounts and whole repos: whoami, validate-yaml, create/delete/move, settings, listing, repo info,
auth-check."""

from __future__ import annotations

import functools
import hashlib
import json
import threading

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ._auth import Identity
from ._base import TRUE, RouteBase, json_response, not_found_or_unauthorized, parse_json_object
from ._storage import Commit, StorageError
from .frontmatter import CardMetadataError, card_metadata, check_metadata, find_front_matter, parse_metadata

MAX_VALIDATE_YAML_BODY = 1024 * 1024  # a card to validate (the Hub's own limit is in this range)
MAX_VALIDATE_YAML_ANONYMOUS = 64 * 1024  # without a token (RepoCard.validate sends none)
MAX_CARD_FILE = 1024 * 1024  # README.md files larger than this get no cardData
CARD_CACHE_SIZE = 512
EXPAND_ALWAYS = {"id", "_id"}


_VALIDATIONS = threading.BoundedSemaphore(4)  # at most this many validations occupy worker threads at once


class RepoRoutes(RouteBase):
    """Accounts and repo lifecycle."""

    async def whoami(self, request: Request, ident: Identity | None) -> Response:
        if ident is None:
            raise StorageError(401, "Authorization header is required to call whoami.")
        return json_response(
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
        # huggingface_hub's RepoCard.validate (called by ModelCard.push_to_hub) sends no token, so anonymous
        # requests are served too, with a smaller size limit; parsing is linear, bounded and off the event loop.
        limit = MAX_VALIDATE_YAML_BODY if ident is not None else MAX_VALIDATE_YAML_ANONYMOUS
        data = parse_json_object(await self._read_body(request, limit))
        content, repo_type = data.get("content"), data.get("repoType") or "model"
        if not isinstance(content, str):
            raise StorageError(400, "validate-yaml expects {'content': <README text>}.")

        def validate() -> list[str]:
            block = find_front_matter(content)
            if block is None:
                return []
            try:
                parsed = parse_metadata(block)
            except CardMetadataError as exc:
                return [f"Invalid YAML metadata: {exc}"]
            return check_metadata(parsed or {}, repo_type if isinstance(repo_type, str) else "model")

        def bounded() -> list[str]:
            if not _VALIDATIONS.acquire(timeout=10):
                raise StorageError(503, "Too many card validations at once; try again.")
            try:
                return validate()
            finally:
                _VALIDATIONS.release()

        errors = await run_in_threadpool(bounded)
        if errors:
            return json_response({"error": "; ".join(errors), "errors": [{"message": m} for m in errors]}, 400)
        return json_response({"warnings": []})

    # ------------------------------------------------------------------------------------------- repo lifecycle
    async def create_repo(self, request: Request, ident: Identity | None) -> Response:
        if ident is None:
            raise StorageError(401, "You must be authenticated (write token) to create a repo.")
        data = await self._read_json(request)
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
                return json_response({"error": exc.message, "url": url}, 409)
            raise
        return json_response({"url": url, "name": key.repo_id, "id": key.repo_id})

    async def delete_repo(self, request: Request, ident: Identity | None) -> Response:
        if ident is None:
            raise StorageError(401, "You must be authenticated (write token) to delete a repo.")
        data = await self._read_json(request)
        key = self._key(data.get("type") or "model", data.get("organization") or ident.user, data.get("name"))
        self._open(ident, key, write=True)
        await run_in_threadpool(self.storage.delete_repo, key)
        return json_response({})

    async def move_repo(self, request: Request, ident: Identity | None) -> Response:
        if ident is None:
            raise StorageError(401, "You must be authenticated (write token) to move a repo.")
        data = await self._read_json(request)
        repo_type = data.get("type") or "model"
        ids = []
        for field in ("fromRepo", "toRepo"):
            value = data.get(field)
            if not isinstance(value, str) or value.count("/") != 1:
                raise StorageError(400, f"'{field}' must be a repo id 'namespace/name'.")
            ids.append(value.split("/"))
        src = self._key(repo_type, *ids[0])
        dst = self._key(repo_type, *ids[1])
        self._open(ident, src, write=True)
        if not self._can_write_namespace(ident, dst.namespace):
            raise StorageError(403, f"You don't have the rights to create a repo under the namespace {dst.namespace!r}.")
        await run_in_threadpool(self.storage.move_repo, src, dst)
        return json_response({})

    async def settings(self, request: Request, ident: Identity | None, types, ns, name) -> Response:
        key, _ = self._repo(ident, types, ns, name, write=True)
        data = await self._read_json(request)
        private = data.get("private")
        if data.get("visibility") is not None:
            if data["visibility"] not in ("public", "private"):
                raise StorageError(400, "visibility must be 'public' or 'private'.")
            private = data["visibility"] == "private"
        if private is not None and not isinstance(private, bool):
            raise StorageError(400, "'private' must be a boolean.")
        meta = await run_in_threadpool(self.storage.update_settings, key, private=private)
        return json_response({"private": meta["private"]})

    async def auth_check(self, request: Request, ident: Identity | None, types, ns, name, write=None) -> Response:
        self._repo(ident, types, ns, name, write=bool(write))
        return json_response({})

    async def repo_not_found(self, request: Request, ident: Identity | None, types=None, prefix=None, name=None,
                             **_) -> Response:
        """A repo id without namespace (``gpt2``): RepoNotFound, so ``repo_exists`` & co. return False."""
        plural = types or prefix
        repo_type = "dataset" if plural == "datasets" else "space" if plural == "spaces" else "model"
        raise not_found_or_unauthorized(ident, name or "", repo_type)

    async def list_repos(self, request: Request, ident: Identity | None, types) -> Response:
        repo_type = self._type_from_plural(types)
        author = request.query_params.get("author")
        search = (request.query_params.get("search") or "").lower()
        try:
            limit = int(request.query_params.get("limit") or 1000)
        except ValueError:
            raise StorageError(400, "limit must be an integer.") from None

        def collect() -> list[dict]:
            out = []
            for key in self.storage.list_repos(repo_type):
                meta = self.storage.repo_meta(key)
                if meta is None or not self._can_read(ident, key, meta):
                    continue
                if (author and key.namespace.lower() != author.lower()) or (
                    search and search not in key.repo_id.lower()
                ):
                    continue
                out.append({"_id": key.repo_id, "id": key.repo_id, "author": key.namespace, "private": meta["private"]})
                if len(out) >= limit:
                    break
            return out

        return json_response(await run_in_threadpool(collect))

    # -------------------------------------------------------------------------------------------------- info
    async def repo_info(self, request: Request, ident: Identity | None, types, ns, name, rev=None) -> Response:
        key, meta = self._repo(ident, types, ns, name)
        commit = self.storage.resolve(key, rev or "main")
        blobs = request.query_params.get("blobs") in TRUE
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
        return json_response(data)

    def _card_data(self, commit: Commit) -> dict | None:
        """The card metadata of a commit (parsed once per README content, then cached); None if absent or unusable."""
        entry = commit.tree.get("README.md")
        if entry is None or entry.size > MAX_CARD_FILE:
            return None
        cached = _card_json(self.storage.blob_path(entry.sha256))
        return json.loads(cached) if cached is not None else None


@functools.lru_cache(maxsize=CARD_CACHE_SIZE)
def _card_json(blob_path: str) -> str | None:
    """Card metadata of a (content-addressed, immutable) README blob, as JSON text; thread-safe cache."""
    try:
        with open(blob_path, encoding="utf-8", errors="replace") as f:
            data = card_metadata(f.read(MAX_CARD_FILE))
    except OSError:  # a missing blob must not break repo_info
        return None
    return json.dumps(data) if data is not None else None
