"""Garbage collection of the endpoint's data directory: what makes deleting, squashing and permanently deleting LFS
files an erasure of the bytes (see README, "Erasure").

Kept: commits reachable from a branch or tag of a repo; the blobs of their files; LFS objects recorded for a repo
(uploaded and committed: until ``permanently_delete_lfs_files``; uploaded and never committed: for a grace period).
Deleted: every other blob, every unreachable commit file, expired LFS records, the trash, temp files of interrupted
atomic writes inside repo folders.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field

from ._fs import _fsync_dir
from .repo_model import _SHA256_RE, REPO_TYPES, RepoKey, StorageError

logger = logging.getLogger("federated_factory.hub")

LFS_GRACE_SECONDS = 24 * 3600  # LFS objects uploaded but never committed are collected after this long


@dataclass
class GcReport:
    """What one garbage collection removed."""

    blobs: int = 0
    bytes: int = 0
    commits: int = 0
    lfs_objects: int = 0
    temp_files: int = 0
    skipped_repos: list[str] = field(default_factory=list)


class GarbageCollector:
    """Mixed into :class:`~federated_factory.hub._storage.Storage` (uses its paths, locks and readers)."""

    def collect_garbage(self, grace_seconds: float = LFS_GRACE_SECONDS) -> GcReport:
        """Delete every blob, commit and upload record that nothing references any more.

        Kept: commits reachable from a branch or tag of a repo; blobs of their files; LFS objects recorded for a
        repo (uploaded and committed, until ``permanently_delete_lfs_files``; uploaded and never committed, for
        ``grace_seconds``). Everything else under ``blobs/`` and ``trash/`` is deleted. Runs exclusively: uploads
        and commits wait for it.
        """
        report = GcReport()
        cutoff = time.time() - grace_seconds
        with self._gc_lock.exclusive():
            referenced: set[str] = set()
            for repo_type in REPO_TYPES:
                for key in list(self.list_repos(repo_type)):
                    try:
                        referenced |= self._collect_repo(key, cutoff, report)
                    except (ValueError, KeyError, TypeError, StorageError) as exc:
                        # An unreadable repo: keep everything it might reference (refuse to guess), and say so.
                        logger.error("GC skipped %s: %s", key, exc)
                        report.skipped_repos.append(str(key))
                        return report
            trash = os.path.join(self.root, "trash")
            for name in os.listdir(trash):
                shutil.rmtree(os.path.join(trash, name), ignore_errors=True)
            blobs = os.path.join(self.root, "blobs")
            for shard in os.listdir(blobs):
                shard_dir = os.path.join(blobs, shard)
                for name in os.listdir(shard_dir) if os.path.isdir(shard_dir) else []:
                    if name not in referenced:
                        path = os.path.join(shard_dir, name)
                        with contextlib.suppress(FileNotFoundError):
                            size = os.stat(path).st_size
                            os.unlink(path)
                            report.blobs += 1
                            report.bytes += size
                with contextlib.suppress(OSError):
                    if not os.listdir(shard_dir):
                        os.rmdir(shard_dir)
                if os.path.isdir(shard_dir):
                    _fsync_dir(shard_dir)
        return report

    def _collect_repo(self, key: RepoKey, cutoff: float, report: GcReport) -> set[str]:
        """Delete the unreachable commits and expired upload records of one repo; return the blobs it references."""
        repo = self.repo_dir(key)
        refs = self.refs(key)
        reachable: set[str] = set()
        pending = list(refs["branches"].values()) + list(refs.get("tags", {}).values())
        referenced: set[str] = set()
        while pending:
            cid = pending.pop()
            if cid in reachable:
                continue
            reachable.add(cid)
            commit = self.get_commit(key, cid)
            referenced.update(entry.sha256 for entry in commit.tree.values())
            pending.extend(commit.parents)
        commits_dir = os.path.join(repo, "commits")
        for name in os.listdir(commits_dir):
            if name.endswith(".json") and name[:-5] in reachable:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(commits_dir, name))
                report.commits += 1
        for name in os.listdir(repo):  # temp files of an interrupted atomic write
            if name.startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(repo, name))
                    report.temp_files += 1
        lfs_dir = os.path.join(repo, "lfs")
        for name in os.listdir(lfs_dir):
            path = os.path.join(lfs_dir, name)
            obj = self.lfs_object(key, name) if _SHA256_RE.match(name) else None
            expired = obj is not None and not obj.committed and name not in referenced and os.stat(path).st_mtime < cutoff
            if obj is None or expired:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    report.lfs_objects += 1
            else:
                referenced.add(name)
        self._forget(key)
        return referenced
