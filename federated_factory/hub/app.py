"""The ASGI application of the Hub-compatible endpoint: one route table, dispatched on the raw path.

The routes live in one module per concern: :mod:`.routes_repos` (accounts, repo lifecycle, info),
:mod:`.routes_files` (tree, paths-info, resolve), :mod:`.routes_commits` (preupload, commits, refs, super-squash)
and :mod:`.routes_lfs` (LFS batch/upload/verify and LFS file management). This module adds what every request goes
through: authentication, errors (never a traceback or a header-breaking message), ``X-Request-Id``, and logging.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ._auth import AccessControl, Identity
from ._base import error_response
from ._storage import NO_SPACE_ERRNOS, Storage, StorageError
from .routes_commits import CommitRoutes
from .routes_files import FileRoutes
from .routes_lfs import LfsRoutes
from .routes_repos import RepoRoutes

logger = logging.getLogger("federated_factory.hub")

MAX_COMMIT_BODY = 100 * 1024 * 1024  # one NDJSON commit (streamed to disk)
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_SUBPATHS = "revision|tree|paths-info|preupload|commit|commits|refs|branch|tag|settings|auth-check|lfs-files|super-squash"


class HubApp(RepoRoutes, FileRoutes, CommitRoutes, LfsRoutes):
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
        get, post = frozenset({"GET"}), frozenset({"POST"})
        self._routes: list[tuple[frozenset[str], re.Pattern[str], Callable[..., Awaitable[Response]]]] = [
            (get, re.compile(r"/api/whoami-v2"), self.whoami),
            (post, re.compile(r"/api/repos/create"), self.create_repo),
            (frozenset({"DELETE"}), re.compile(r"/api/repos/delete"), self.delete_repo),
            (post, re.compile(r"/api/repos/move"), self.move_repo),
            (post, re.compile(r"/api/validate-yaml"), self.validate_yaml),
            (get, re.compile(rf"/api/{t}"), self.list_repos),
            (get, re.compile(rf"/api/{t}/{repo}(?:/revision/(?P<rev>.+))?"), self.repo_info),
            (get, re.compile(rf"/api/{t}/{repo}/auth-check(?:/(?P<write>write))?"), self.auth_check),
            (get, re.compile(rf"/api/{t}/{repo}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?"), self.tree),
            (post, re.compile(rf"/api/{t}/{repo}/paths-info/(?P<rev>.+)"), self.paths_info),
            (post, re.compile(rf"/api/{t}/{repo}/preupload/(?P<rev>.+)"), self.preupload),
            (post, re.compile(rf"/api/{t}/{repo}/commit/(?P<rev>.+)"), self.commit),
            (get, re.compile(rf"/api/{t}/{repo}/commits/(?P<rev>.+)"), self.list_commits),
            (get, re.compile(rf"/api/{t}/{repo}/refs"), self.refs),
            (frozenset({"POST", "DELETE"}), re.compile(rf"/api/{t}/{repo}/branch/(?P<rev>.+)"), self.branch),
            (frozenset({"POST", "DELETE"}), re.compile(rf"/api/{t}/{repo}/tag/(?P<rev>.+)"), self.tag),
            (post, re.compile(rf"/api/{t}/{repo}/super-squash/(?P<rev>.+)"), self.super_squash),
            (get, re.compile(rf"/api/{t}/{repo}/lfs-files"), self.list_lfs_files),
            (post, re.compile(rf"/api/{t}/{repo}/lfs-files/batch"), self.delete_lfs_files),
            (frozenset({"PUT"}), re.compile(rf"/api/{t}/{repo}/settings"), self.settings),
            (frozenset({"GET", "POST"}), re.compile(rf"/api/{t}/{repo}/xet-(?:read|write)-token(?:/.*)?"), self.xet),
            (frozenset({"PUT"}), re.compile(rf"/api/lfs-upload/{t}/{repo}/(?P<oid>[0-9a-f]{{64}})"), self.lfs_put),
            (frozenset({"GET", "HEAD"}), re.compile(rf"/{web}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), self.resolve),
            (post, re.compile(rf"/{web}\.git/info/lfs/objects/batch"), self.lfs_batch),
            (post, re.compile(rf"/{web}\.git/info/lfs/objects/verify"), self.lfs_verify),
            # Repo ids without a namespace ("gpt2"): RepoNotFound, as on the Hub.
            (frozenset({"GET", "HEAD", "POST", "PUT", "DELETE"}),
             re.compile(rf"/api/{t}/(?P<name>[^/]+)(?:/(?:{_SUBPATHS})(?:/.*)?)?"), self.repo_not_found),
            (frozenset({"GET", "HEAD"}),
             re.compile(r"/(?:(?P<prefix>datasets|spaces)/)?(?P<name>[^/]+)/resolve/.+"), self.repo_not_found),
        ]  # fmt: skip

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)

    async def _dispatch(self, request: Request) -> Response:
        raw = request.scope.get("raw_path") or request.scope["path"].encode()
        raw_path = raw.decode("latin-1").split("?", 1)[0]
        method = request.method
        ident: Identity | None = None
        started = time.perf_counter()
        request_id = request.headers.get("x-request-id", "")
        if not _REQUEST_ID_RE.match(request_id):
            request_id = uuid.uuid4().hex
        log_path = raw_path.encode("unicode_escape").decode("ascii")[:300]  # never a control character in a log line
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
            response = error_response(exc)
        except ClientDisconnect:  # the client went away mid-body: nothing to answer, nothing stored
            logger.info("%s %s: client disconnected (%s)", method, log_path, request_id)
            response = error_response(StorageError(400, "The client disconnected before the request was complete."))
        except UnicodeDecodeError:
            response = error_response(StorageError(400, "The request path is not valid UTF-8."))
        except (FileNotFoundError, NotADirectoryError):  # e.g. the repo was deleted while this request ran
            response = error_response(StorageError(404, f"Not found: {raw_path} (it may just have been deleted)."))
        except RecursionError:
            response = error_response(StorageError(400, "The request is nested too deeply."))
        except OSError as exc:
            if exc.errno in NO_SPACE_ERRNOS:
                logger.error("%s %s: the data directory is full (%s)", method, log_path, os.strerror(exc.errno))
                response = error_response(StorageError(507, "Insufficient storage on the endpoint; nothing was stored."))
            else:
                logger.exception("Internal error on %s %s (%s)", method, log_path, request_id)
                response = error_response(StorageError(500, "Internal server error."))
        except Exception:  # never leak internals (or request headers) to the client
            logger.exception("Internal error on %s %s (%s)", method, log_path, request_id)
            response = error_response(StorageError(500, "Internal server error."))
        response.headers["X-Request-Id"] = request_id
        logger.info(
            "%s %s -> %d (%s, %.0f ms, %s)",
            method,
            log_path,
            response.status_code,
            ident.user if ident else "anonymous",
            (time.perf_counter() - started) * 1000,
            request_id,
        )
        return response
