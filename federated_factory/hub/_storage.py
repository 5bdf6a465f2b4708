"""On-disk storage of the Hub-compatible endpoint: repos, commits, refs and content-addressed blobs.

Layout under ``data_dir``::

    blobs/<aa>/<sha256>                 file contents, named by their sha256 (shared by every repo)
    tmp/                                uploads and staged writes (same filesystem, so ``os.replace`` is atomic)
    trash/                              repos being deleted (emptied at once, and at start and at every collection)
    locks/<type>s/<ns>/<name>.lock      per-repo lock files (``flock``, names lower-cased: ids ignore case), next to
                                        an in-process ``threading.Lock``
    repos/<type>s/<ns>/<name>/
        repo.json                       {"id", "type", "private", "createdAt"}
        refs.json                       {"branches": {"main": "<commit id>"}, "tags": {}}
        commits/<id>.json               one immutable file per commit: parents, author, message, date, full tree
        lfs/<sha256>                    LFS objects uploaded *to this repo* (a commit may only reference these):
                                        {"size", "pushedAt", "committed", "filename", "ref"} (what list_lfs_files
                                        shows); a bare size is the format before garbage collection (= committed)

Modes: directories 0700, files 0600, blobs 0400, whatever the process umask. Blobs of a commit are flushed (file
and directory) before the commit file, and the commit file before ``refs.json``. Inline files of a commit are
staged in ``tmp/`` and enter ``blobs/`` only when the commit is accepted. Garbage collection (:mod:`._gc`) runs
exclusively: uploads and commits hold the shared side of one lock while they add blobs.

Every state change is written to a temporary file and moved into place with ``os.replace``; a commit only becomes
visible when ``refs.json`` is replaced, so a crash or a rejected request leaves the previous revision intact. All
state is on disk: a restarted server sees everything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

from federated_factory.atomic import atomic_write_json

from ._fs import BLOB_MODE, DIR_MODE, FILE_MODE, NO_SPACE_ERRNOS, _fsync_dir  # noqa: F401
from ._gc import LFS_GRACE_SECONDS, GarbageCollector, GcReport  # noqa: F401
from .ids import SHORT_COMMIT_RE
from .repo_model import (  # noqa: F401  (re-exported: the endpoint's modules import them from here)
    _COMMIT_RE,
    _SHA256_RE,
    GITATTRIBUTES,
    LFS_SIZE_THRESHOLD,
    LFS_SUFFIXES,
    MAX_PATH_LENGTH,
    REPO_TYPES,
    RESERVED_NAMESPACES,
    Commit,
    FileEntry,
    RepoKey,
    StorageError,
    TreeIndex,
    _check_no_file_folder_clash,
    _now,
    git_blob_sha1,
    is_lfs_path,
    lfs_pointer,
    validate_name,
    validate_namespace,
    validate_path,
    validate_ref_name,
    validate_repo_type,
)

logger = logging.getLogger("federated_factory.hub")

try:  # POSIX only; on other platforms the in-process lock is all we have.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


def _atomic_write_json(path: str, data: object, tmp_dir: str) -> None:
    """Replace ``path`` with ``data`` as JSON (mode 0600), flushed with its directory (``tmp_dir``: unused, kept
    for callers)."""
    atomic_write_json(path, data, indent=None, default=None, fsync=True)


def _mkstemp(tmp_dir: str, suffix: str) -> tuple[int, str]:
    path = os.path.join(tmp_dir, f"{uuid.uuid4().hex}{suffix}")
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), path


class _SharedExclusiveLock:
    """Many holders in shared mode (uploads, commits) or one in exclusive mode (garbage collection)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            self._cond.wait_for(lambda: self._shared == 0)
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


@dataclass(frozen=True)
class StagedBlob:
    """An inline file decoded to a temp file, moved into the blob store only when its commit succeeds."""

    sha256: str
    size: int
    git_oid: str
    tmp_path: str


@dataclass(frozen=True)
class LfsObject:
    """An LFS object uploaded to a repo (what ``list_lfs_files`` lists)."""

    oid: str
    size: int
    pushed_at: str
    committed: bool
    filename: str | None
    ref: str | None


def _write_private(path: str, data: bytes) -> None:
    """Create ``path`` (mode 0600) with ``data``, flushed to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class Storage(GarbageCollector):
    """Thread-safe access to the endpoint's data directory (garbage collection: :class:`._gc.GarbageCollector`)."""

    def __init__(self, data_dir: str | os.PathLike[str]):
        self.root = os.path.abspath(os.fspath(data_dir))
        self.tmp_dir = os.path.join(self.root, "tmp")
        is_new = not os.path.exists(self.root) or not os.listdir(self.root)
        os.makedirs(self.root, mode=DIR_MODE, exist_ok=True)
        if is_new or os.path.isdir(os.path.join(self.root, "repos")):  # never re-mode a directory that is not ours
            with contextlib.suppress(OSError):  # e.g. owned by someone else: then we cannot tighten it
                os.chmod(self.root, DIR_MODE)
        for sub in ("blobs", "tmp", "locks", "repos", "trash"):
            os.makedirs(os.path.join(self.root, sub), mode=DIR_MODE, exist_ok=True)
        self._locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._gc_lock = _SharedExclusiveLock()
        self._commit_cache: OrderedDict[tuple[RepoKey, str], Commit] = OrderedDict()
        self._index_cache: OrderedDict[tuple[RepoKey, str], TreeIndex] = OrderedDict()
        self._cache_guard = threading.Lock()
        self._dir_lock_fd: int | None = None

    def open(self) -> None:
        """Take the data directory for this process (one server per directory) and clear leftovers of a crash."""
        if self._dir_lock_fd is not None:
            return
        fd = os.open(os.path.join(self.root, "server.lock"), os.O_RDWR | os.O_CREAT, FILE_MODE)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise StorageError(409, f"{self.root} is already served by another Hub endpoint.") from None
        self._dir_lock_fd = fd
        self._cleanup_trash()

    def close(self) -> None:
        if self._dir_lock_fd is not None:
            os.close(self._dir_lock_fd)  # releases the flock
            self._dir_lock_fd = None

    # ----------------------------------------------------------------------------------------------- paths, locks
    def repo_dir(self, key: RepoKey) -> str:
        return os.path.join(self.root, "repos", f"{key.repo_type}s", key.namespace, key.name)

    def blob_path(self, sha256: str) -> str:
        if not _SHA256_RE.match(sha256):
            raise StorageError(400, f"Invalid sha256 {sha256!r}.")
        return os.path.join(self.root, "blobs", sha256[:2], sha256)

    def has_blob(self, sha256: str) -> bool:
        return os.path.isfile(self.blob_path(sha256))

    def canonical(self, key: RepoKey) -> RepoKey:
        """The stored spelling of a repo id (lookups ignore case, as on the Hub); ``key`` itself if none exists."""
        if os.path.isfile(os.path.join(self.repo_dir(key), "repo.json")):
            return key
        base = os.path.join(self.root, "repos", f"{key.repo_type}s")
        try:
            namespaces = [ns for ns in os.listdir(base) if ns.lower() == key.namespace.lower()]
        except (FileNotFoundError, NotADirectoryError):
            return key
        for ns in namespaces:
            with contextlib.suppress(OSError):
                for name in os.listdir(os.path.join(base, ns)):
                    if name.lower() == key.name.lower() and os.path.isfile(os.path.join(base, ns, name, "repo.json")):
                        return RepoKey(key.repo_type, ns, name)
        return key

    @contextlib.contextmanager
    def repo_lock(self, key: RepoKey) -> Iterator[None]:
        """Serialize changes to one repo (names compared case-insensitively), in this process and across processes."""
        lock_id = (key.repo_type, key.namespace.lower(), key.name.lower())
        with self._locks_guard:
            lock = self._locks.setdefault(lock_id, threading.Lock())
        with lock:
            if fcntl is None:  # pragma: no cover
                yield
                return
            lock_dir = os.path.join(self.root, "locks", f"{key.repo_type}s", lock_id[1])
            os.makedirs(lock_dir, mode=DIR_MODE, exist_ok=True)
            fd = os.open(os.path.join(lock_dir, f"{lock_id[2]}.lock"), os.O_RDWR | os.O_CREAT, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _cleanup_trash(self) -> None:
        trash = os.path.join(self.root, "trash")
        for name in os.listdir(trash):
            shutil.rmtree(os.path.join(trash, name), ignore_errors=True)
        # Leftovers of interrupted uploads or commits are never referenced by any revision.
        for name in os.listdir(self.tmp_dir):
            with contextlib.suppress(OSError):
                path = os.path.join(self.tmp_dir, name)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)

    # ------------------------------------------------------------------------------------------------------ blobs
    def new_temp_file(self, suffix: str = ".part") -> tuple[int, str]:
        return _mkstemp(self.tmp_dir, suffix)

    def store_blob_from_temp(self, tmp_path: str, sha256: str) -> None:
        """Move a verified, flushed temp file into the blob store (or drop it if the blob is already there).

        The blob's directory is flushed too, so a ref written afterwards never points at a blob lost in a crash.
        """
        dest = self.blob_path(sha256)
        if os.path.exists(dest):
            os.unlink(tmp_path)
            return
        os.makedirs(os.path.dirname(dest), mode=DIR_MODE, exist_ok=True)
        os.chmod(tmp_path, BLOB_MODE)
        os.replace(tmp_path, dest)
        _fsync_dir(os.path.dirname(dest))

    def stage_bytes(self, data: bytes) -> StagedBlob:
        """Write an inline file to a flushed temp file; :meth:`commit` moves it into the store if the commit succeeds."""
        fd, tmp = self.new_temp_file(".inline")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return StagedBlob(hashlib.sha256(data).hexdigest(), len(data), git_blob_sha1(len(data), [data]), tmp)

    def store_bytes(self, data: bytes) -> tuple[str, int, str]:
        """Store a small (inline) file right away; returns (sha256, size, git blob sha1)."""
        staged = self.stage_bytes(data)
        self.store_blob_from_temp(staged.tmp_path, staged.sha256)
        return staged.sha256, staged.size, staged.git_oid

    # ------------------------------------------------------------------------------------------------------ repos
    def repo_meta(self, key: RepoKey) -> dict | None:
        """The repo's metadata, or None if it does not exist (or its repo.json is unreadable: logged, skipped)."""
        path = os.path.join(self.repo_dir(key), "repo.json")
        try:
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (ValueError, OSError) as exc:  # empty, truncated or not JSON
            logger.error("Skipping %s: its repo.json is unreadable (%s)", key, type(exc).__name__)
            return None
        if not isinstance(meta, dict):
            logger.error("Skipping %s: its repo.json is not a JSON object", key)
            return None
        return meta

    def refs(self, key: RepoKey) -> dict:
        try:
            with open(os.path.join(self.repo_dir(key), "refs.json"), encoding="utf-8") as f:
                return json.load(f)
        except (FileNotFoundError, NotADirectoryError):
            raise StorageError(404, f"Repository {key.repo_id} not found.", "RepoNotFound") from None

    def create_repo(self, key: RepoKey, *, private: bool, author: str) -> dict:
        final = self.repo_dir(key)
        staging = os.path.join(self.tmp_dir, f"repo-{uuid.uuid4().hex}")
        try:
            for sub in ("", "commits", "lfs"):
                os.makedirs(os.path.join(staging, sub), mode=DIR_MODE, exist_ok=True)
            meta = {"id": key.repo_id, "type": key.repo_type, "private": bool(private), "createdAt": _now()}
            with self._gc_lock.shared():
                sha256, size, git_oid = self.store_bytes(GITATTRIBUTES.encode())
                commit = self._make_commit(parents=[], author=author, title="initial commit", message="", tree={})
                commit.tree[".gitattributes"] = FileEntry(sha256, size, False, git_oid, commit.id)
                _write_private(os.path.join(staging, "repo.json"), json.dumps(meta).encode())
                _write_private(
                    os.path.join(staging, "commits", f"{commit.id}.json"), json.dumps(commit.to_json()).encode()
                )
                _write_private(
                    os.path.join(staging, "refs.json"),
                    json.dumps({"branches": {"main": commit.id}, "tags": {}}).encode(),
                )
                for sub in ("commits", "lfs", ""):
                    _fsync_dir(os.path.join(staging, sub))
                os.makedirs(os.path.dirname(final), mode=DIR_MODE, exist_ok=True)
                with self.repo_lock(key):
                    existing = self.canonical(key)
                    if self.repo_meta(existing) is not None or os.path.exists(final):
                        raise StorageError(409, f"You already created this {key.repo_type} repo: {existing.repo_id}.")
                    os.rename(staging, final)  # atomic; fails if another process created it meanwhile
                    _fsync_dir(os.path.dirname(final))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return meta

    def delete_repo(self, key: RepoKey) -> GcReport:
        """Delete a repo and collect every blob no other repo references."""
        with self.repo_lock(key):
            src = self.repo_dir(key)
            if not os.path.exists(os.path.join(src, "repo.json")):
                raise StorageError(404, f"Repository {key.repo_id} not found.", "RepoNotFound")
            dest = os.path.join(self.root, "trash", uuid.uuid4().hex)
            os.rename(src, dest)
        self._forget(key)
        shutil.rmtree(dest, ignore_errors=True)
        return self.collect_garbage()

    def move_repo(self, src: RepoKey, dst: RepoKey) -> None:
        """Rename a repo (``/api/repos/move``); the target id must be free (ignoring case)."""
        first, second = sorted([src, dst], key=lambda k: (k.namespace.lower(), k.name.lower()))
        with self.repo_lock(first), self.repo_lock(second):
            if self.repo_meta(src) is None:
                raise StorageError(404, f"Repository {src.repo_id} not found.", "RepoNotFound")
            existing = self.canonical(dst)
            if self.repo_meta(existing) is not None and existing != src:
                raise StorageError(409, f"A repo named {existing.repo_id} already exists.")
            meta = self.repo_meta(src) or {}
            meta["id"] = dst.repo_id
            _atomic_write_json(os.path.join(self.repo_dir(src), "repo.json"), meta, self.tmp_dir)
            os.makedirs(os.path.dirname(self.repo_dir(dst)), mode=DIR_MODE, exist_ok=True)
            os.rename(self.repo_dir(src), self.repo_dir(dst))
            _fsync_dir(os.path.dirname(self.repo_dir(dst)))
        self._forget(src)

    def _forget(self, key: RepoKey) -> None:
        with self._cache_guard:
            for cache in (self._commit_cache, self._index_cache):
                for cache_key in [k for k in cache if k[0] == key]:
                    del cache[cache_key]

    def update_settings(self, key: RepoKey, *, private: bool | None) -> dict:
        with self.repo_lock(key):
            meta = self.repo_meta(key)
            if meta is None:
                raise StorageError(404, f"Repository {key.repo_id} not found.", "RepoNotFound")
            if private is not None:
                meta["private"] = bool(private)
            _atomic_write_json(os.path.join(self.repo_dir(key), "repo.json"), meta, self.tmp_dir)
            return meta

    # ---------------------------------------------------------------------------------------- commits, revisions
    def get_commit(self, key: RepoKey, commit_id: str) -> Commit:
        cache_key = (key, commit_id)
        with self._cache_guard:
            if cache_key in self._commit_cache:
                self._commit_cache.move_to_end(cache_key)
                return self._commit_cache[cache_key]
        try:
            with open(os.path.join(self.repo_dir(key), "commits", f"{commit_id}.json"), encoding="utf-8") as f:
                commit = Commit.from_json(json.load(f))
        except (FileNotFoundError, NotADirectoryError):
            raise StorageError(404, f"Invalid rev id: {commit_id}", "RevisionNotFound") from None
        with self._cache_guard:
            self._commit_cache[cache_key] = commit
            while len(self._commit_cache) > 256:
                self._commit_cache.popitem(last=False)
        return commit

    def resolve(self, key: RepoKey, revision: str) -> Commit:
        """A branch, tag, full or abbreviated (>= 7 characters) commit id of this repo -> its commit."""
        refs = self.refs(key)
        if revision in refs["branches"]:
            return self.get_commit(key, refs["branches"][revision])
        if revision in refs.get("tags", {}):
            return self.get_commit(key, refs["tags"][revision])
        for prefix, table in (("refs/heads/", "branches"), ("refs/tags/", "tags")):
            if revision.startswith(prefix) and revision[len(prefix) :] in refs.get(table, {}):
                return self.get_commit(key, refs[table][revision[len(prefix) :]])
        if _COMMIT_RE.match(revision):
            return self.get_commit(key, revision)
        if SHORT_COMMIT_RE.match(revision):
            try:
                names = os.listdir(os.path.join(self.repo_dir(key), "commits"))
            except (FileNotFoundError, NotADirectoryError):
                names = []
            matches = [n[:-5] for n in names if n.startswith(revision) and n.endswith(".json") and len(n) == 45]
            if len(matches) == 1:
                return self.get_commit(key, matches[0])
            if len(matches) > 1:
                raise StorageError(404, f"Invalid rev id: {revision} (ambiguous: several commits start with it)",
                                   "RevisionNotFound")
        raise StorageError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def tree_index(self, key: RepoKey, commit: Commit) -> TreeIndex:
        cache_key = (key, commit.id)
        with self._cache_guard:
            if cache_key in self._index_cache:
                self._index_cache.move_to_end(cache_key)
                return self._index_cache[cache_key]
        index = TreeIndex.build(commit)
        with self._cache_guard:
            self._index_cache[cache_key] = index
            while len(self._index_cache) > 32:
                self._index_cache.popitem(last=False)
        return index

    def history(self, key: RepoKey, commit: Commit) -> Iterator[Commit]:
        """First-parent history, newest first."""
        current: Commit | None = commit
        while current is not None:
            yield current
            current = self.get_commit(key, current.parents[0]) if current.parents else None

    # -------------------------------------------------------------------------------------------------- LFS
    def _lfs_marker(self, key: RepoKey, oid: str) -> str:
        return os.path.join(self.repo_dir(key), "lfs", oid)

    def lfs_object(self, key: RepoKey, oid: str) -> LfsObject | None:
        """The record of an LFS object uploaded to this repo (None if absent or its blob is missing)."""
        if not _SHA256_RE.match(oid):
            return None
        path = self._lfs_marker(key, oid)
        try:
            with open(path, encoding="utf-8") as f:
                raw = f.read().strip()
            mtime = os.stat(path).st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            if raw.isdigit():  # the format before garbage collection existed: treat as committed (never expires)
                data = {"size": int(raw), "committed": True}
            else:
                data = json.loads(raw)
            size = int(data["size"])
        except (ValueError, KeyError, TypeError):
            return None
        if not self.has_blob(oid):
            return None
        pushed = data.get("pushedAt") or datetime.fromtimestamp(mtime, timezone.utc).isoformat().replace("+00:00", "Z")
        return LfsObject(oid, size, pushed, bool(data.get("committed")), data.get("filename"), data.get("ref"))

    def has_lfs_object(self, key: RepoKey, oid: str) -> int | None:
        """Size of an LFS object uploaded to this repo, or None."""
        obj = self.lfs_object(key, oid)
        return obj.size if obj is not None else None

    def _write_lfs_marker(self, key: RepoKey, obj: LfsObject) -> None:
        lfs_dir = os.path.join(self.repo_dir(key), "lfs")
        if not os.path.isdir(lfs_dir):
            raise StorageError(404, f"Repository {key.repo_id} not found.", "RepoNotFound")
        record = {"size": obj.size, "pushedAt": obj.pushed_at, "committed": obj.committed, "filename": obj.filename,
                  "ref": obj.ref}
        _atomic_write_json(self._lfs_marker(key, obj.oid), record, self.tmp_dir)

    def add_lfs_object(self, key: RepoKey, oid: str, size: int) -> None:
        """Record that ``oid`` (already in the blob store) was uploaded to this repo (not yet committed)."""
        self._write_lfs_marker(key, LfsObject(oid, size, _now(), False, None, None))

    def store_lfs_upload(self, key: RepoKey, tmp_path: str, oid: str, size: int) -> None:
        """Move a verified upload into the store and record it for the repo, atomically with respect to GC."""
        with self._gc_lock.shared():
            self.store_blob_from_temp(tmp_path, oid)
            if self.lfs_object(key, oid) is None:
                self.add_lfs_object(key, oid, size)

    def list_lfs_objects(self, key: RepoKey) -> list[LfsObject]:
        """Every LFS object uploaded to this repo and not permanently deleted, oldest first."""
        try:
            names = os.listdir(os.path.join(self.repo_dir(key), "lfs"))
        except (FileNotFoundError, NotADirectoryError):
            raise StorageError(404, f"Repository {key.repo_id} not found.", "RepoNotFound") from None
        objects = [obj for name in names if (obj := self.lfs_object(key, name)) is not None]
        return sorted(objects, key=lambda o: (o.pushed_at, o.oid))

    def permanently_delete_lfs_objects(self, key: RepoKey, oids: list[str]) -> GcReport:
        """Forget LFS objects of a repo, then collect: a blob leaves the disk once no commit of any repo (and no
        other repo's upload record) references it."""
        with self.repo_lock(key):
            if self.repo_meta(key) is None:
                raise StorageError(404, f"Repository {key.repo_id} not found.", "RepoNotFound")
            for oid in oids:
                if not isinstance(oid, str) or not _SHA256_RE.match(oid):
                    raise StorageError(400, f"Invalid LFS file id {oid!r}: expected a lowercase hex sha256.")
            for oid in oids:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._lfs_marker(key, oid))
            _fsync_dir(os.path.join(self.repo_dir(key), "lfs"))
        return self.collect_garbage()

    # ---------------------------------------------------------------------------------------------- commits
    def _make_commit(self, *, parents: list[str], author: str, title: str, message: str, tree: dict) -> Commit:
        date = _now()
        seed = json.dumps([parents, author, title, message, date, time.time_ns(), uuid.uuid4().hex]).encode()
        commit_id = hashlib.sha1(seed).hexdigest()
        return Commit(commit_id, parents, author, title, message, date, dict(tree))

    def commit(
        self,
        key: RepoKey,
        *,
        branch: str,
        operations: list[tuple],
        author: str,
        title: str,
        message: str,
        parent_commit: str | None,
    ) -> Commit:
        """Apply ``operations`` on top of ``branch`` and move the branch; all or nothing.

        Operations, applied in order: ("file", path, StagedBlob) or ("file", path, sha256, size, git_oid) for a blob
        already stored, ("lfsFile", path, oid, size | None), ("deletedFile", path) (a folder path deletes the
        folder, as on the Hub), ("deletedFolder", path). Staged blobs enter the store only if the commit succeeds;
        the caller removes the temp files of a refused one.
        """
        with self._gc_lock.shared(), self.repo_lock(key):
            refs = self.refs(key)
            if branch not in refs["branches"]:
                if branch.startswith("refs/heads/") and branch[len("refs/heads/") :] in refs["branches"]:
                    branch = branch[len("refs/heads/") :]
                else:
                    raise StorageError(
                        404, f"Invalid rev id: {branch} (commits must target a branch)", "RevisionNotFound"
                    )
            head = self.get_commit(key, refs["branches"][branch])
            if parent_commit is not None and parent_commit != head.id:
                raise StorageError(
                    412,
                    f"A commit has happened since. Please refresh and try again. (parentCommit {parent_commit} is "
                    f"not the head of '{branch}', which is {head.id})",
                )
            new = self._make_commit(parents=[head.id], author=author, title=title, message=message, tree=head.tree)
            tree = new.tree
            staged: dict[str, StagedBlob] = {}
            lfs_used: dict[str, tuple[str, LfsObject]] = {}
            for op in operations:
                kind, path = op[0], op[1]
                if kind == "deletedFile" and path not in tree and any(p.startswith(path + "/") for p in tree):
                    kind = "deletedFolder"  # the Hub deletes a folder given as a deletedFile path
                if kind == "deletedFile":
                    if path not in tree:
                        raise StorageError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del tree[path]
                elif kind == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    doomed = [p for p in tree if p.startswith(prefix)]
                    if not doomed:
                        raise StorageError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in doomed:
                        del tree[p]
                elif kind == "file":
                    if isinstance(op[2], StagedBlob):
                        blob = op[2]
                        sha256, size, git_oid = blob.sha256, blob.size, blob.git_oid
                        staged[sha256] = blob
                    else:
                        _, _, sha256, size, git_oid = op
                    old = tree.get(path)
                    if old is not None and not old.lfs and old.sha256 == sha256:
                        continue
                    tree[path] = FileEntry(sha256, size, False, git_oid, new.id)
                elif kind == "lfsFile":
                    _, _, oid, size = op
                    record = self.lfs_object(key, oid)
                    if record is None:
                        raise StorageError(
                            422,
                            f"LFS object {oid} for '{path}' was not uploaded to {key.repo_id}; upload it through the "
                            "LFS batch API before committing.",
                        )
                    if size is not None and size != record.size:
                        raise StorageError(422, f"LFS object {oid} for '{path}' has size {record.size}, not {size}.")
                    lfs_used[oid] = (path, record)
                    old = tree.get(path)
                    if old is not None and old.lfs and old.sha256 == oid:
                        continue
                    pointer = lfs_pointer(oid, record.size)
                    tree[path] = FileEntry(oid, record.size, True, git_blob_sha1(len(pointer), [pointer]), new.id)
                else:  # pragma: no cover - the HTTP layer only builds the kinds above
                    raise StorageError(400, f"Unknown operation {kind!r}.")
            _check_no_file_folder_clash(tree)
            needed = {entry.sha256 for entry in tree.values()}
            for sha256, blob in staged.items():
                if sha256 in needed and os.path.exists(blob.tmp_path):
                    self.store_blob_from_temp(blob.tmp_path, sha256)
            for oid, (path, record) in lfs_used.items():
                if not record.committed:
                    self._write_lfs_marker(
                        key, LfsObject(oid, record.size, record.pushed_at, True, path, f"refs/heads/{branch}")
                    )
            commits_dir = os.path.join(self.repo_dir(key), "commits")
            _atomic_write_json(os.path.join(commits_dir, f"{new.id}.json"), new.to_json(), self.tmp_dir)
            refs["branches"][branch] = new.id
            _atomic_write_json(os.path.join(self.repo_dir(key), "refs.json"), refs, self.tmp_dir)
            return new

    def super_squash(self, key: RepoKey, *, branch: str, author: str, message: str) -> tuple[Commit, GcReport]:
        """Replace ``branch``'s history by one commit holding its current tree, then collect what became
        unreferenced (``super_squash_history``). Other branches and tags keep the commits they point at."""
        with self._gc_lock.shared(), self.repo_lock(key):
            refs = self.refs(key)
            if branch not in refs["branches"]:
                raise StorageError(404, f"Invalid rev id: {branch} (squash a branch)", "RevisionNotFound")
            head = self.get_commit(key, refs["branches"][branch])
            title = message.strip().splitlines()[0][:500] if message.strip() else f"Super-squash branch '{branch}'"
            new = self._make_commit(parents=[], author=author, title=title, message=message, tree={})
            new.tree.update(
                {path: FileEntry(e.sha256, e.size, e.lfs, e.git_oid, new.id) for path, e in head.tree.items()}
            )
            _atomic_write_json(os.path.join(self.repo_dir(key), "commits", f"{new.id}.json"), new.to_json(),
                               self.tmp_dir)
            refs["branches"][branch] = new.id
            _atomic_write_json(os.path.join(self.repo_dir(key), "refs.json"), refs, self.tmp_dir)
        return new, self.collect_garbage()

    def create_ref(self, key: RepoKey, kind: str, name: str, target: Commit) -> None:
        """Create a branch (``kind="branches"``) or a tag (``kind="tags"``) pointing at ``target``."""
        with self.repo_lock(key):
            refs = self.refs(key)
            for table, prefix in (("branches", "refs/heads/"), ("tags", "refs/tags/")):
                if name in refs[table]:
                    raise StorageError(409, f"Reference already exists: {prefix}{name}")
            refs[kind][name] = target.id
            _atomic_write_json(os.path.join(self.repo_dir(key), "refs.json"), refs, self.tmp_dir)

    def delete_ref(self, key: RepoKey, kind: str, name: str) -> None:
        with self.repo_lock(key):
            refs = self.refs(key)
            if kind == "branches" and name == "main":
                raise StorageError(403, "Cannot delete the default branch (main).")
            if name not in refs[kind]:
                raise StorageError(404, f"Invalid rev id: {name}", "RevisionNotFound")
            del refs[kind][name]
            _atomic_write_json(os.path.join(self.repo_dir(key), "refs.json"), refs, self.tmp_dir)

    def list_repos(self, repo_type: str) -> Iterator[RepoKey]:
        base = os.path.join(self.root, "repos", f"{repo_type}s")
        if not os.path.isdir(base):
            return
        for namespace in sorted(os.listdir(base)):
            ns_dir = os.path.join(base, namespace)
            for name in sorted(os.listdir(ns_dir)) if os.path.isdir(ns_dir) else []:
                if os.path.isfile(os.path.join(ns_dir, name, "repo.json")):
                    yield RepoKey(repo_type, namespace, name)
