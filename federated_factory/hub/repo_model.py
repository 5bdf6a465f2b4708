"""The endpoint's data model: repo ids, files, commits, folder indexes, and the validators of names and paths.

Pure data and checks (no disk access); :mod:`._storage` keeps them on disk.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .ids import COMMIT_SHA_RE, SHA256_RE

REPO_TYPES = ("model", "dataset")
RESERVED_NAMESPACES = frozenset(
    {"api", "datasets", "models", "spaces", "kernels", "buckets", "docs", "settings", "organizations", "new", "login"}
)
# Same spirit as huggingface_hub's validator: ASCII word characters, '-' and '.', starting and ending with a word
# character, no '--' or '..', at most 96 characters.
_NAME_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?$")
_SHA256_RE = SHA256_RE
_COMMIT_RE = COMMIT_SHA_RE
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
    if "\x00" in path or "\\" in path or any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise StorageError(400, f"Invalid {what} {path!r}: control characters and backslashes are not allowed.")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise StorageError(400, f"Invalid {what} {path!r}: absolute paths are not allowed.")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise StorageError(400, f"Invalid {what} {path!r}: empty, '.' and '..' segments are not allowed.")
    if parts[0] == ".git":
        raise StorageError(400, f"Invalid {what} {path!r}: '.git' is reserved.")
    return path


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


def _check_no_file_folder_clash(tree: dict[str, FileEntry]) -> None:
    for path in tree:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in tree:
                raise StorageError(
                    400, f"'{prefix}' is a file, so '{path}' cannot be created below it (and vice versa)."
                )
