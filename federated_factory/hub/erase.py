"""Erase the superseded history of published repos, and verify it, through the ordinary ``huggingface_hub`` client.

One mechanism for both unlearning modes (the classifier and dataset repos of the server mode, the expert and
federation repos of the network mode), in two calls around the publication of the new revision:

1. `erase_history` (before publishing): records the sha256, path, size and revisions of every file of every
   commit reachable from every branch and tag, and every file ``list_lfs_files`` lists; then, per repo, deletes
   every file on ``main`` but ``.gitattributes`` in one commit, deletes every other branch and tag,
   ``super_squash_history`` on ``main`` (the endpoint collects the inline blobs only that history held) and
   ``permanently_delete_lfs_files`` on every listed LFS file (their blobs go unless a revision of some repo still
   uses them). Squashing *before* the new revision is published keeps the new revision's commit id stable, so
   the repo@sha references between published repos (a classifier card naming its dataset revision, a federation
   model naming its experts) stay valid.
2. `verify_erasure` (after publishing): the erased files are the recorded ones whose content (sha256) no current
   revision of the purged repos holds; it checks through the API that each repo has no branch but ``main`` and
   no tag, that no superseded commit resolves, that no file of any reachable commit has an erased sha256 (inline
   files are downloaded and hashed) and that ``list_lfs_files`` lists none. Returns the record for the
   certificate (``erased_files``, ``erased_sha256``, ``retained``, ``checks``, ``verified``, ``limits``).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ERASURE_LIMITS = [
    "A blob is shared by content: bytes identical to an erased file that another repo (not purged here) still "
    "holds stay on that repo's disk; only the purged repos' references are gone.",
    "Deletion is unlink(2): the filesystem may keep the freed blocks; media-level erasure needs an encrypted "
    "volume (drop its key) or one that discards freed blocks.",
    "Copies that anyone downloaded before the purge (clients' caches, mirrors, backups of the endpoint's data "
    "directory) are out of reach of any tool.",
]


@dataclass(frozen=True)
class PurgedRepo:
    """A published repo whose history is erased, and the token that may write to it."""

    repo_id: str
    repo_type: str = "model"
    token: str | None = None


@dataclass
class ErasurePlan:
    """What `erase_history` recorded and did; `verify_erasure` completes it after the new publication."""

    repos: list[PurgedRepo]
    files: list[dict] = field(default_factory=list)  # repo, repo_type, path, sha256, size, lfs, revisions
    repo_records: list[dict] = field(default_factory=list)


def _api(repo: PurgedRepo):
    from huggingface_hub import HfApi

    return HfApi(token=repo.token)


def _reachable_commits(api, repo: PurgedRepo) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Every commit reachable from a branch or tag (newest first per ref), and the refs ``(kind, name, target)``."""
    refs = api.list_repo_refs(repo.repo_id, repo_type=repo.repo_type, include_pull_requests=True)
    named = ([("branch", b.name, b.target_commit) for b in refs.branches]
             + [("tag", t.name, t.target_commit) for t in refs.tags]
             + [("pull_request", p.name, p.target_commit) for p in (refs.pull_requests or [])])
    commits: dict[str, None] = {}
    for _, _, target in named:
        for commit in api.list_repo_commits(repo.repo_id, repo_type=repo.repo_type, revision=target):
            commits.setdefault(commit.commit_id)
    return list(commits), named


class _Hasher:
    """sha256 of files in revisions: LFS files from their pointer, inline files downloaded once per git blob id."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="ff-erase-")
        self._by_blob: dict[str, str] = {}

    def files(self, api, repo: PurgedRepo, revision: str) -> list[dict]:
        from huggingface_hub.hf_api import RepoFile

        out = []
        for entry in api.list_repo_tree(repo.repo_id, repo_type=repo.repo_type, revision=revision, recursive=True):
            if not isinstance(entry, RepoFile):
                continue
            if entry.lfs is not None:
                sha256, lfs = entry.lfs.sha256, True
            else:
                lfs = False
                sha256 = self._by_blob.get(entry.blob_id)
                if sha256 is None:
                    path = api.hf_hub_download(repo.repo_id, entry.path, repo_type=repo.repo_type, revision=revision,
                                               cache_dir=self._tmp.name)
                    sha256 = self._by_blob[entry.blob_id] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            out.append({"path": entry.path, "sha256": sha256, "size": entry.size, "lfs": lfs})
        return out

    def close(self) -> None:
        self._tmp.cleanup()


def erase_history(repos: Sequence[PurgedRepo], *, message: str = "Erase superseded history") -> ErasurePlan:
    """Record every file of every revision (and LFS listing) of ``repos``, then erase all of it (see the module).

    A repo that does not exist is recorded as such and skipped. Call `verify_erasure` after publishing.
    """
    from huggingface_hub import CommitOperationDelete
    from huggingface_hub.errors import RepositoryNotFoundError
    from huggingface_hub.hf_api import RepoFile

    plan = ErasurePlan(list(repos))
    hasher = _Hasher()
    recorded: dict[tuple[str, str, str], dict] = {}
    try:
        for repo in plan.repos:  # 1. record, before anything changes
            api = _api(repo)
            try:
                commits, refs = _reachable_commits(api, repo)
            except RepositoryNotFoundError:
                plan.repo_records.append({"repo": repo.repo_id, "repo_type": repo.repo_type, "existed": False})
                continue
            for commit in commits:
                for f in hasher.files(api, repo, commit):
                    key = (repo.repo_id, f["path"], f["sha256"])
                    entry = recorded.setdefault(key, {"repo": repo.repo_id, "repo_type": repo.repo_type, **f,
                                                      "revisions": []})
                    entry["revisions"].append(commit)
            listed = list(api.list_lfs_files(repo.repo_id, repo_type=repo.repo_type))
            for obj in listed:
                key = next((k for k in recorded if k[0] == repo.repo_id and k[2] == obj.file_oid),
                           (repo.repo_id, obj.filename or obj.file_oid, obj.file_oid))
                recorded.setdefault(key, {"repo": repo.repo_id, "repo_type": repo.repo_type,
                                          "path": obj.filename or obj.file_oid, "sha256": obj.file_oid,
                                          "size": obj.size, "lfs": True, "revisions": []})
            plan.repo_records.append({"repo": repo.repo_id, "repo_type": repo.repo_type, "existed": True,
                                      "revisions_superseded": commits,
                                      "refs_before": [f"{kind}:{name}@{target}" for kind, name, target in refs]})
        for repo, record in zip(plan.repos, plan.repo_records):  # 2. erase
            if not record["existed"]:
                continue
            api = _api(repo)
            current = [f.path for f in api.list_repo_tree(repo.repo_id, repo_type=repo.repo_type, recursive=True)
                       if isinstance(f, RepoFile) and f.path != ".gitattributes"]
            if current:
                api.create_commit(repo.repo_id, repo_type=repo.repo_type, commit_message=f"{message}: delete every file",
                                  operations=[CommitOperationDelete(p) for p in current])
            deleted = []
            refs = api.list_repo_refs(repo.repo_id, repo_type=repo.repo_type)
            for branch in refs.branches:
                if branch.name != "main":
                    api.delete_branch(repo.repo_id, branch=branch.name, repo_type=repo.repo_type)
                    deleted.append(f"branch:{branch.name}")
            for tag in refs.tags:
                api.delete_tag(repo.repo_id, tag=tag.name, repo_type=repo.repo_type)
                deleted.append(f"tag:{tag.name}")
            api.super_squash_history(repo.repo_id, branch="main", repo_type=repo.repo_type, commit_message=message)
            lfs = list(api.list_lfs_files(repo.repo_id, repo_type=repo.repo_type))
            if lfs:
                api.permanently_delete_lfs_files(repo.repo_id, lfs, repo_type=repo.repo_type)
            record.update({"refs_deleted": deleted, "lfs_files_deleted": len(lfs)})
    finally:
        hasher.close()
    plan.files = list(recorded.values())
    return plan


def _check(name: str, what: str, problems: list[str]) -> dict:
    return {"check": name, "what": what,
            "result": "passed" if not problems else "FAILED: " + "; ".join(problems[:20])}


def verify_erasure(plan: ErasurePlan) -> dict:
    """After the new revisions are published: which recorded files are erased, and checks, through the API, that no
    branch, tag, revision or LFS listing of the purged repos still offers one. Returns the certificate record."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    hasher = _Hasher()
    try:
        current: dict[str, set[str]] = {}  # repo -> sha256 held by a reachable commit
        commits_now: dict[str, list[str]] = {}
        ref_problems = []
        for repo in plan.repos:
            api = _api(repo)
            try:
                commits, refs = _reachable_commits(api, repo)
            except RepositoryNotFoundError:
                current[repo.repo_id], commits_now[repo.repo_id] = set(), []
                continue
            ref_problems += [f"{repo.repo_id} still has {kind} {name}" for kind, name, _ in refs
                             if (kind, name) != ("branch", "main")]
            commits_now[repo.repo_id] = commits
            current[repo.repo_id] = {f["sha256"] for c in commits for f in hasher.files(api, repo, c)}
    finally:
        hasher.close()
    held = set().union(*current.values()) if current else set()
    erased = [f for f in plan.files if f["sha256"] not in held]
    retained = [{"repo": f["repo"], "path": f["path"], "sha256": f["sha256"],
                 "why": "a current revision of a purged repo holds identical content"}
                for f in plan.files if f["sha256"] in held]
    erased_sha = sorted({f["sha256"] for f in erased})
    doomed = set(erased_sha)

    revision_problems, lfs_problems, old_problems = [], [], []
    superseded = 0
    for repo, record in zip(plan.repos, plan.repo_records):
        api = _api(repo)
        revision_problems += [f"{repo.repo_id} still holds {sha} in a reachable revision"
                              for sha in sorted(current.get(repo.repo_id, set()) & doomed)]
        if commits_now.get(repo.repo_id) or record.get("existed"):
            try:
                listed = {obj.file_oid for obj in api.list_lfs_files(repo.repo_id, repo_type=repo.repo_type)}
            except RepositoryNotFoundError:
                listed = set()
            lfs_problems += [f"{repo.repo_id} lists {sha}" for sha in sorted(listed & doomed)]
        for commit in record.get("revisions_superseded", []):
            if commit in commits_now.get(repo.repo_id, []):
                old_problems.append(f"{repo.repo_id}@{commit} is still reachable")
                continue
            superseded += 1
            try:
                api.repo_info(repo.repo_id, repo_type=repo.repo_type, revision=commit)
                old_problems.append(f"{repo.repo_id}@{commit} still resolves")
            except (RevisionNotFoundError, RepositoryNotFoundError):
                pass
    checks = [
        _check("refs", "each purged repo has no branch but main, no tag and no pull request (list_repo_refs)",
               ref_problems),
        _check("superseded_revisions", f"none of the {superseded} superseded commits recorded before the purge "
               "resolves any more (repo_info at that revision)", old_problems),
        _check("revisions", "no file of any commit reachable from any branch or tag of the purged repos has an "
               "erased sha256 (LFS files by their pointer's sha256, inline files downloaded and hashed)",
               revision_problems),
        _check("lfs_listing", "list_lfs_files of each purged repo lists no erased sha256", lfs_problems),
    ]
    return {
        "method": "recorded every file of every revision (every branch and tag) and every listed LFS file of each "
                  "purged repo; deleted the files on main in one commit, deleted every other branch and tag, "
                  "super_squash_history on main, permanently_delete_lfs_files on every listed LFS file; then "
                  "published the new revision on top and checked what the endpoint still offers",
        "repos": [{**r, "revisions_now": commits_now.get(r["repo"], [])} for r in plan.repo_records],
        "erased_files": sorted(erased, key=lambda f: (f["repo"], f["path"], f["sha256"])),
        "erased_sha256": erased_sha,
        "retained": retained,
        "checks": checks,
        "verified": all(c["result"] == "passed" for c in checks),
        "limits": list(ERASURE_LIMITS),
    }
