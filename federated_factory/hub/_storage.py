"""On-disk storage of the Hub-compatible endpoint: repos, commits, refs and content-addressed blobs.

Layout under ``data_dir``::

    blobs/<aa>/<sha256>                 file contents, named by their sha256 (shared by every repo)
    tmp/                                uploads and staged writes (same filesystem, so ``os.replace`` is atomic)
    locks/<type>s/<ns>/<name>.lock      per-repo lock files (``flock``), next to an in-process ``threading.Lock``
    repos/<type>s/<ns>/<name>/
        repo.json                       {"id", "type", "private", "createdAt"}
        refs.json                       {"branches": {"main": "<commit id>"}, "tags": {}}
        commits/<id>.json               one immutable file per commit: parents, author, message, date, full tree
        lfs/<sha256>                    LFS objects uploaded *to this repo* (a commit may only reference these)

Every state change is written to a temporary file and moved into place with ``os.replace``; a commit only becomes
visible when ``refs.json`` is replaced, so a crash or a rejected request leaves the previous revision intact. All
state is on disk: a restarted server sees everything.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

try:  # POSIX only; on other platforms the in-process lock is all we have.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

REPO_TYPES = ("model", "dataset")
RESERVED_NAMESPACES = frozenset(
    {"api", "datasets", "models", "spaces", "kernels", "buckets", "docs", "settings", "organizations", "new", "login"}
)
# Same spirit as huggingface_hub's validator: ASCII word characters, '-' and '.', starting and ending with a word
# character, no '--' or '..', at most 96 characters.
_NAME_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_BRANCH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
MAX_PATH_LENGTH = 1024
LFS_POINTER_TEMPLATE = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"

# Files matching these suffixes (or of at least LFS_SIZE_THRESHOLD bytes) are uploaded through LFS; the list follows
# the .gitattributes the Hub writes into every new repo.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
LFS_SUFFIXES = (
    ".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gz", ".h5", ".joblib", ".mlmodel", ".model", ".msgpack",
    ".npy", ".npz", ".onnx", ".ot", ".parquet", ".pb", ".pickle", ".pkl", ".pt", ".pth", ".rar", ".safetensors",
    ".tar", ".tflite", ".tgz", ".wasm", ".xz", ".zip", ".zst", ".png", ".jpg", ".jpeg", ".gif", ".webp", ".tiff",
    ".wav", ".mp3", ".flac", ".ogg", ".gguf",
)  # fmt: skip
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES)


class StorageError(Exception):
    """A request cannot be carried out; ``status`` and ``code`` say how to answer it over HTTP."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def git_blob_sha1(size: int, chunks: Iterator[bytes] | list[bytes]) -> str:
    h = hashlib.sha1(f"blob {size}\0".encode())
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return LFS_POINTER_TEMPLATE.format(oid=oid, size=size).encode()


def is_lfs_path(path: str, size: int) -> bool:
    """The upload mode the endpoint asks for: LFS for big files and binary formats, regular otherwise."""
    return size >= LFS_SIZE_THRESHOLD or path.lower().endswith(LFS_SUFFIXES)


def validate_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value) or "--" in value or ".." in value:
        raise StorageError(
            400,
            f"Invalid {what} {value!r}: use 1-96 letters, digits, '-', '_' or '.', starting and ending with a letter, "
            "digit or '_', without '--' or '..'.",
        )
    if value.endswith(".git"):
        raise StorageError(400, f"Invalid {what} {value!r}: it must not end with '.git'.")
    return value


def validate_namespace(value: str) -> str:
    validate_name(value, "namespace")
    if value.lower() in RESERVED_NAMESPACES:
        raise StorageError(400, f"Invalid namespace {value!r}: this name is reserved.")
    return value


def validate_repo_type(value: str | None) -> str:
    value = value or "model"
    if value not in REPO_TYPES:
        raise StorageError(400, f"Invalid repo type {value!r}: this endpoint serves 'model' and 'dataset' repos.")
    return value


def validate_ref_name(value: str, what: str = "branch") -> str:
    if not isinstance(value, str) or not _BRANCH_RE.match(value) or ".." in value or value.endswith((".lock", ".")):
        raise StorageError(400, f"Invalid {what} name {value!r}: use letters, digits, '.', '_' and '-'.")
    if _COMMIT_RE.match(value):
        raise StorageError(400, f"Invalid {what} name {value!r}: it looks like a commit id.")
    return value


def validate_path(path: object, *, what: str = "path") -> str:
    """A file path inside a repo: relative, '/'-separated, no '.', '..' or empty segment, no backslash or NUL."""
    if not isinstance(path, str) or not path:
        raise StorageError(400, f"Invalid {what}: expected a non-empty string.")
    if len(path) > MAX_PATH_LENGTH:
        raise StorageError(400, f"Invalid {what}: longer than {MAX_PATH_LENGTH} characters.")
    if "\x00" in path or "\\" in path or any(ord(c) < 32 for c in path):
        raise StorageError(400, f"Invalid {what} {path!r}: control characters and backslashes are not allowed.")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise StorageError(400, f"Invalid {what} {path!r}: absolute paths are not allowed.")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise StorageError(400, f"Invalid {what} {path!r}: empty, '.' and '..' segments are not allowed.")
    if parts[0] == ".git":
        raise StorageError(400, f"Invalid {what} {path!r}: '.git' is reserved.")
    return path


def _atomic_write_json(path: str, data: object, tmp_dir: str) -> None:
    fd, tmp = _mkstemp(tmp_dir, ".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(path: str) -> None:
    """Make a rename durable (POSIX); best effort elsewhere."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _mkstemp(tmp_dir: str, suffix: str) -> tuple[int, str]:
    path = os.path.join(tmp_dir, f"{uuid.uuid4().hex}{suffix}")
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), path


@dataclass(frozen=True)
class RepoKey:
    repo_type: str
    namespace: str
    name: str

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def url_prefix(self) -> str:
        return "" if self.repo_type == "model" else f"{self.repo_type}s/"

    def __str__(self) -> str:
        return f"{self.repo_type} {self.repo_id}"


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int
    lfs: bool
    git_oid: str  # git blob sha1 of the content (regular) or of the LFS pointer (LFS)
    last_commit: str

    def to_json(self) -> list:
        return [self.sha256, self.size, self.lfs, self.git_oid, self.last_commit]

    @classmethod
    def from_json(cls, data: list) -> FileEntry:
        return cls(data[0], data[1], data[2], data[3], data[4])

    @property
    def etag(self) -> str:
        """What the Hub sends as ETag: the sha256 for LFS files, the git blob sha1 for regular ones."""
        return self.sha256 if self.lfs else self.git_oid

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))


@dataclass
class Commit:
    id: str
    parents: list[str]
    author: str
    title: str
    message: str
    date: str
    tree: dict[str, FileEntry]

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "parents": self.parents,
            "author": self.author,
            "title": self.title,
            "message": self.message,
            "date": self.date,
            "tree": {path: entry.to_json() for path, entry in self.tree.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> Commit:
        return cls(
            id=data["id"],
            parents=data["parents"],
            author=data["author"],
            title=data["title"],
            message=data["message"],
            date=data["date"],
            tree={path: FileEntry.from_json(value) for path, value in data["tree"].items()},
        )


@dataclass
class TreeIndex:
    """Folder structure of one commit (immutable, so it is cached)."""

    commit: Commit
    children: dict[str, list[str]] = field(default_factory=dict)  # folder ("" = root) -> direct children paths
    folder_oids: dict[str, str] = field(default_factory=dict)
    all_paths: list[str] = field(default_factory=list)  # every file and folder, sorted
    _folder_last: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, commit: Commit) -> TreeIndex:
        index = cls(commit)
        children: dict[str, set[str]] = {"": set()}
        for path in commit.tree:
            parts = path.split("/")
            for depth in range(len(parts)):
                children.setdefault("/".join(parts[:depth]), set()).add("/".join(parts[: depth + 1]))
        index.children = {folder: sorted(kids) for folder, kids in children.items()}
        index.all_paths = sorted((set(commit.tree) | set(index.children)) - {""})
        for folder in index._deepest_first():
            h = hashlib.sha1()
            for child in index.children[folder]:
                entry = commit.tree.get(child)
                oid = entry.git_oid if entry is not None else index.folder_oids[child]
                h.update(f"{child}\0{oid}\n".encode())
            index.folder_oids[folder] = h.hexdigest()
        return index

    def _deepest_first(self) -> list[str]:
        return sorted(self.children, key=lambda f: -f.count("/") if f else 1)

    def below(self, folder: str) -> list[str]:
        """Every file and folder below ``folder`` (recursive listing), sorted."""
        if not folder:
            return self.all_paths
        prefix = folder + "/"
        start = bisect.bisect_left(self.all_paths, prefix)
        end = bisect.bisect_left(self.all_paths, folder + "0")  # '0' is the character after '/'
        return self.all_paths[start:end]

    def is_folder(self, path: str) -> bool:
        return path in self.children and path not in self.commit.tree

    def folder_last_commit(self, folder: str, date_of) -> str:
        """The most recent of the last commits of the files below ``folder`` (``date_of``: commit id -> date)."""
        if not self._folder_last:
            last: dict[str, str] = {}
            for name in self._deepest_first():
                best = ("", "")
                for child in self.children[name]:
                    entry = self.commit.tree.get(child)
                    cid = entry.last_commit if entry is not None else last[child]
                    best = max(best, (date_of(cid), cid))
                last[name] = best[1]
            self._folder_last = last
        return self._folder_last[folder]


class Storage:
    """Thread-safe access to the endpoint's data directory."""

    def __init__(self, data_dir: str | os.PathLike[str]):
        self.root = os.path.abspath(os.fspath(data_dir))
        self.tmp_dir = os.path.join(self.root, "tmp")
        for sub in ("blobs", "tmp", "locks", "repos", "trash"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        self._locks: dict[RepoKey, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._commit_cache: OrderedDict[tuple[RepoKey, str], Commit] = OrderedDict()
        self._index_cache: OrderedDict[tuple[RepoKey, str], TreeIndex] = OrderedDict()
        self._cache_guard = threading.Lock()
        self._dir_lock_fd: int | None = None

    def open(self) -> None:
        """Take the data directory for this process (one server per directory) and clear leftovers of a crash."""
        if self._dir_lock_fd is not None:
            return
        fd = os.open(os.path.join(self.root, "server.lock"), os.O_RDWR | os.O_CREAT, 0o600)
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

    @contextlib.contextmanager
    def repo_lock(self, key: RepoKey) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if fcntl is None:  # pragma: no cover
                yield
                return
            lock_dir = os.path.join(self.root, "locks", f"{key.repo_type}s", key.namespace)
            os.makedirs(lock_dir, exist_ok=True)
            fd = os.open(os.path.join(lock_dir, f"{key.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
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
        """Move a verified temp file into the blob store (or drop it if the blob is already there)."""
        dest = self.blob_path(sha256)
        if os.path.exists(dest):
            os.unlink(tmp_path)
            return
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.chmod(tmp_path, 0o444)
        os.replace(tmp_path, dest)

    def store_bytes(self, data: bytes) -> tuple[str, int, str]:
        """Store a small (inline) file; returns (sha256, size, git blob sha1)."""
        sha256 = hashlib.sha256(data).hexdigest()
        git_oid = git_blob_sha1(len(data), [data])
        if not self.has_blob(sha256):
            fd, tmp = self.new_temp_file()
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self.store_blob_from_temp(tmp, sha256)
        return sha256, len(data), git_oid

    # ------------------------------------------------------------------------------------------------------ repos
    def repo_meta(self, key: RepoKey) -> dict | None:
        try:
            with open(os.path.join(self.repo_dir(key), "repo.json"), encoding="utf-8") as f:
                return json.load(f)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def refs(self, key: RepoKey) -> dict:
        try:
            with open(os.path.join(self.repo_dir(key), "refs.json"), encoding="utf-8") as f:
                return json.load(f)
        except (FileNotFoundError, NotADirectoryError):
            raise StorageError(404, f"Repository {key.repo_id} not found.", "RepoNotFound") from None

    def create_repo(self, key: RepoKey, *, private: bool, author: str) -> dict:
        final = self.repo_dir(key)
        staging = os.path.join(self.tmp_dir, f"repo-{uuid.uuid4().hex}")
        os.makedirs(os.path.join(staging, "commits"))
        os.makedirs(os.path.join(staging, "lfs"))
        meta = {"id": key.repo_id, "type": key.repo_type, "private": bool(private), "createdAt": _now()}
        sha256, size, git_oid = self.store_bytes(GITATTRIBUTES.encode())
        commit = self._make_commit(parents=[], author=author, title="initial commit", message="", tree={})
        commit.tree[".gitattributes"] = FileEntry(sha256, size, False, git_oid, commit.id)
        with open(os.path.join(staging, "repo.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f)
        with open(os.path.join(staging, "commits", f"{commit.id}.json"), "w", encoding="utf-8") as f:
            json.dump(commit.to_json(), f)
        with open(os.path.join(staging, "refs.json"), "w", encoding="utf-8") as f:
            json.dump({"branches": {"main": commit.id}, "tags": {}}, f)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        with self.repo_lock(key):
            if os.path.exists(final):
                shutil.rmtree(staging, ignore_errors=True)
                raise StorageError(409, f"You already created this {key.repo_type} repo: {key.repo_id}.")
            os.rename(staging, final)  # atomic; fails if another process created it meanwhile
        return meta

    def delete_repo(self, key: RepoKey) -> None:
        with self.repo_lock(key):
            src = self.repo_dir(key)
            if not os.path.exists(os.path.join(src, "repo.json")):
                raise StorageError(404, f"Repository {key.repo_id} not found.", "RepoNotFound")
            dest = os.path.join(self.root, "trash", uuid.uuid4().hex)
            os.rename(src, dest)
        with self._cache_guard:
            for cache in (self._commit_cache, self._index_cache):
                for cache_key in [k for k in cache if k[0] == key]:
                    del cache[cache_key]
        shutil.rmtree(dest, ignore_errors=True)

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
        """A branch, tag or full commit id of this repo -> its commit."""
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

    def has_lfs_object(self, key: RepoKey, oid: str) -> int | None:
        """Size of an LFS object uploaded to this repo, or None."""
        if not _SHA256_RE.match(oid):
            return None
        try:
            with open(os.path.join(self.repo_dir(key), "lfs", oid), encoding="ascii") as f:
                size = int(f.read().strip())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        return size if self.has_blob(oid) else None

    def add_lfs_object(self, key: RepoKey, oid: str, size: int) -> None:
        lfs_dir = os.path.join(self.repo_dir(key), "lfs")
        if not os.path.isdir(lfs_dir):
            raise StorageError(404, f"Repository {key.repo_id} not found.", "RepoNotFound")
        fd, tmp = _mkstemp(self.tmp_dir, ".lfs")
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(str(size))
        os.replace(tmp, os.path.join(lfs_dir, oid))

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

        Operations, applied in order: ("file", path, sha256, size, git_oid), ("lfsFile", path, oid, size | None),
        ("deletedFile", path), ("deletedFolder", path). Blobs of "file" operations are already stored.
        """
        with self.repo_lock(key):
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
            for op in operations:
                kind, path = op[0], op[1]
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
                    _, _, sha256, size, git_oid = op
                    old = tree.get(path)
                    if old is not None and not old.lfs and old.sha256 == sha256:
                        continue
                    tree[path] = FileEntry(sha256, size, False, git_oid, new.id)
                elif kind == "lfsFile":
                    _, _, oid, size = op
                    known = self.has_lfs_object(key, oid)
                    if known is None:
                        raise StorageError(
                            422,
                            f"LFS object {oid} for '{path}' was not uploaded to {key.repo_id}; upload it through the "
                            "LFS batch API before committing.",
                        )
                    if size is not None and size != known:
                        raise StorageError(422, f"LFS object {oid} for '{path}' has size {known}, not {size}.")
                    old = tree.get(path)
                    if old is not None and old.lfs and old.sha256 == oid:
                        continue
                    pointer = lfs_pointer(oid, known)
                    tree[path] = FileEntry(oid, known, True, git_blob_sha1(len(pointer), [pointer]), new.id)
                else:  # pragma: no cover - the HTTP layer only builds the kinds above
                    raise StorageError(400, f"Unknown operation {kind!r}.")
            _check_no_file_folder_clash(tree)
            commits_dir = os.path.join(self.repo_dir(key), "commits")
            _atomic_write_json(os.path.join(commits_dir, f"{new.id}.json"), new.to_json(), self.tmp_dir)
            refs["branches"][branch] = new.id
            _atomic_write_json(os.path.join(self.repo_dir(key), "refs.json"), refs, self.tmp_dir)
            return new

    def create_ref(self, key: RepoKey, kind: str, name: str, target: Commit) -> None:
        """Create a branch (``kind="branches"``) or a tag (``kind="tags"``) pointing at ``target``."""
        with self.repo_lock(key):
            refs = self.refs(key)
            if name in refs["branches"] or name in refs["tags"]:
                raise StorageError(409, f"Reference {name} already exists.")
            refs[kind][name] = target.id
            _atomic_write_json(os.path.join(self.repo_dir(key), "refs.json"), refs, self.tmp_dir)

    def delete_ref(self, key: RepoKey, kind: str, name: str) -> None:
        with self.repo_lock(key):
            refs = self.refs(key)
            if kind == "branches" and name == "main":
                raise StorageError(403, "The main branch cannot be deleted.")
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


def _check_no_file_folder_clash(tree: dict[str, FileEntry]) -> None:
    for path in tree:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in tree:
                raise StorageError(
                    400, f"'{prefix}' is a file, so '{path}' cannot be created below it (and vice versa)."
                )
