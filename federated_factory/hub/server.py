"""A Hugging Face Hub-compatible HTTP endpoint for air-gapped federations: the server process around :class:`HubApp`.

The real, unmodified ``huggingface_hub`` client (and diffusers, timm, datasets on top of it) talks to this server
through ``HF_ENDPOINT`` (see :func:`federated_factory.hub.env.use_endpoint`, which also sets
``HF_HUB_DISABLE_XET=1``: Xet storage is not implemented here, uploads use the classic LFS protocol).

Implemented surface (what huggingface_hub 2.x calls for models and datasets):

* ``GET /api/whoami-v2``; ``POST /api/repos/{create,move}``; ``DELETE /api/repos/delete``; ``POST /api/validate-yaml``
* ``GET /api/{models,datasets}[?author=&search=]`` (listing), ``GET /api/{type}s/{repo}[/revision/{rev}]`` (info),
  ``GET .../auth-check[/write]``
* ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]`` (``recursive``, ``expand``, cursor pagination with ``Link``)
* ``POST /api/{type}s/{repo}/paths-info/{rev}``, ``POST .../preupload/{rev}``, ``POST .../commit/{rev}`` (NDJSON)
* ``GET .../commits/{rev}``, ``GET .../refs``, ``POST|DELETE .../branch/{b}`` and ``.../tag/{t}``, ``PUT .../settings``
* ``POST .../super-squash/{branch}``, ``GET .../lfs-files``, ``POST .../lfs-files/batch`` (permanent deletion)
* ``POST /[datasets/]{repo}.git/info/lfs/objects/batch`` (basic transfer) and ``.../verify``
* ``GET|HEAD /[datasets/]{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag``, ``X-Linked-*`` and ranges

Layout: :mod:`.app` (the ASGI app and its dispatch), ``routes_*`` (one module per concern), :mod:`.commit_parser`,
:mod:`.frontmatter`, :mod:`.gitignore`; storage and garbage collection in :mod:`._storage`, users and tokens in
:mod:`._auth`. This module runs the app (uvicorn in a thread or in the foreground) and holds the CLI entry points.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
import threading
import time

from federated_factory.errors import HubEndpointError

from ._auth import AccessControl, load_config, parse_token_arg
from ._storage import LFS_GRACE_SECONDS, Storage, StorageError
from .app import MAX_COMMIT_BODY, HubApp

__all__ = ["HubApp", "HubServer", "serve_main", "gc_main"]

logger = logging.getLogger("federated_factory.hub")

KEEP_ALIVE_SECONDS = 65  # longer than any HTTP client's idle pool (httpx: 5 s), as nginx's 75 s and ALB's 60 s are


def is_loopback(host: str) -> bool:
    """True if ``host`` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
        self._public_url = public_url
        self.host = host
        self.port = port
        self.log_level = log_level
        if public_url is None and not is_loopback(host):
            raise HubEndpointError(
                f"Binding {host!r} exposes the endpoint beyond this machine: pass public_url (--public-url), the URL "
                "clients use to reach it, so that the URLs it hands out never come from a request's Host header."
            )
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
            # An idle connection must outlive the client's pool: httpx (huggingface_hub's transport) reuses
            # one for up to 5 s, uvicorn's default also closes after 5 s, and a request sent as the server
            # closes fails with "server disconnected" (RemoteProtocolError) on a busy machine.
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
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
        self._pin_url()
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

    def _pin_url(self) -> None:
        """Without a public URL (loopback only), hand out this server's own address, never the request's Host."""
        if self._public_url is None:
            self.app.public_url = self.url

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
            self._pin_url()
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
    parser.add_argument(
        "--public-url",
        help="URL clients use to reach this server (required unless --host is a loopback address); the URLs the "
        "endpoint hands out come from it, never from a request's Host header",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    os.umask(0o077)  # this process is the server: whatever it creates is for its own user only
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


def gc_main(argv: list[str] | None = None) -> int:
    """``federated-factory hub gc``: collect unreferenced blobs, commits and expired uploads of a stopped endpoint."""
    parser = argparse.ArgumentParser(
        prog="federated-factory hub gc",
        description="Delete every blob, commit and LFS upload record of a Hub endpoint's data directory that no "
        "branch, tag or LFS file listing references. The server collects after each delete, squash and permanent "
        "LFS deletion by itself; run this for uploads that were never committed (after --grace-seconds) or after "
        "a crash. Refuses to run while a server holds the directory.",
    )
    parser.add_argument("--data-dir", required=True, help="the endpoint's data directory")
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=LFS_GRACE_SECONDS,
        help=f"keep LFS uploads never committed for this long (default: {LFS_GRACE_SECONDS})",
    )
    args = parser.parse_args(argv)
    os.umask(0o077)
    if not os.path.isdir(os.path.join(args.data_dir, "repos")):
        print(f"error: {args.data_dir} is not a Hub endpoint data directory (no repos/ folder).", file=sys.stderr)
        return 2
    if args.grace_seconds < 0:
        print("error: --grace-seconds must be non-negative.", file=sys.stderr)
        return 2
    storage = Storage(args.data_dir)
    try:
        storage.open()  # takes the directory lock (a running server holds it) and empties tmp/ and trash/
    except StorageError as exc:
        print(f"error: {exc.message} Stop it first (it collects after deletes and squashes by itself).", file=sys.stderr)
        return 2
    try:
        report = storage.collect_garbage(args.grace_seconds)
    finally:
        storage.close()
    print(
        f"removed {report.blobs} blobs ({report.bytes} bytes), {report.commits} unreachable commits, "
        f"{report.lfs_objects} LFS upload records, {report.temp_files} temp files"
        + (f"; skipped (unreadable, kept whole): {', '.join(report.skipped_repos)}" if report.skipped_repos else "")
    )
    return 1 if report.skipped_repos else 0


if __name__ == "__main__":
    sys.exit(serve_main())
