"""What the endpoint keeps on disk: erasure after delete/squash/permanent LFS deletion (through the real
huggingface_hub client), garbage collection of uploads never committed, permissions, durability."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
import uuid
from pathlib import Path

import pytest
import requests
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError

from federated_factory.cli import main as cli_main
from federated_factory.hub import _storage
from federated_factory.hub.server import HubServer, gc_main

TOKEN = "storage-alice-token"


@pytest.fixture
def endpoint(tmp_path):
    server = HubServer(tmp_path / "hub", {TOKEN: ("alice", "write")}).start()
    try:
        yield server
    finally:
        server.stop()


def _api(server: HubServer) -> HfApi:
    return HfApi(endpoint=server.url, token=TOKEN)


def _secret(label: str, size: int = 4096) -> bytes:
    return f"SECRET-{label}-{uuid.uuid4().hex}-".encode() + os.urandom(size)


def _leaks(root: str | Path, secret: bytes) -> list[str]:
    """Files under ``root`` whose name or content holds ``secret`` or its sha256 (hex)."""
    digest = hashlib.sha256(secret).hexdigest()
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                data = f.read()
            if digest in path or secret in data or digest.encode() in data:
                found.append(os.path.relpath(path, root))
    return found


def _repo(api: HfApi, stem: str) -> str:
    repo_id = f"alice/{stem}-{uuid.uuid4().hex[:6]}"
    api.create_repo(repo_id, private=True)
    return repo_id


def test_squash_and_permanent_lfs_deletion_erase_the_bytes(endpoint, tmp_path):
    api = _api(endpoint)
    repo_id = _repo(api, "purge")
    weights, notes, kept = _secret("lfs", 50_000), _secret("inline"), b"kept content"
    api.create_commit(
        repo_id,
        [
            CommitOperationAdd("client_3/weights.safetensors", weights),
            CommitOperationAdd("client_3/notes.txt", notes),
            CommitOperationAdd("keep.txt", kept),
        ],
        commit_message="add client 3",
    )
    api.upload_file(path_or_fileobj=b"later", path_in_repo="later.txt", repo_id=repo_id)
    api.create_commit(repo_id, [CommitOperationDelete("client_3")], commit_message="unlearn client 3")  # a folder
    assert "client_3/notes.txt" not in api.list_repo_files(repo_id)
    assert _leaks(endpoint.data_dir, weights) and _leaks(endpoint.data_dir, notes)  # history still holds them

    api.super_squash_history(repo_id, commit_message="squash after unlearning")
    commits = api.list_repo_commits(repo_id)
    assert len(commits) == 1 and commits[0].title == "squash after unlearning"
    assert _leaks(endpoint.data_dir, notes) == []  # inline blobs: collected at the squash
    listed = {f.file_oid: f for f in api.list_lfs_files(repo_id)}
    sha = hashlib.sha256(weights).hexdigest()
    assert sha in listed and listed[sha].size == len(weights)  # as on the Hub: listed until permanently deleted
    assert _leaks(endpoint.data_dir, weights)

    api.permanently_delete_lfs_files(repo_id, [listed[sha]])
    assert list(api.list_lfs_files(repo_id)) == []
    assert _leaks(endpoint.data_dir, weights) == [] and _leaks(endpoint.data_dir, notes) == []
    path = hf_hub_download(repo_id, "keep.txt", token=TOKEN, cache_dir=tmp_path / "c", endpoint=endpoint.url)
    assert Path(path).read_bytes() == kept


def test_permanent_deletion_keeps_a_blob_another_revision_still_uses(endpoint, tmp_path):
    api = _api(endpoint)
    repo_id = _repo(api, "inuse")
    weights = _secret("still-used", 20_000)
    api.upload_file(path_or_fileobj=weights, path_in_repo="w.bin", repo_id=repo_id)
    api.permanently_delete_lfs_files(repo_id, list(api.list_lfs_files(repo_id)))
    path = hf_hub_download(repo_id, "w.bin", token=TOKEN, cache_dir=tmp_path / "c", endpoint=endpoint.url)
    assert Path(path).read_bytes() == weights  # the current revision still references it: not erased


def test_deleting_a_repo_erases_what_no_other_repo_references(endpoint, tmp_path):
    api = _api(endpoint)
    doomed, other = _repo(api, "doomed"), _repo(api, "other")
    weights, notes, shared = _secret("lfs", 30_000), _secret("inline"), _secret("shared", 100)
    api.create_commit(
        doomed,
        [CommitOperationAdd("w.bin", weights), CommitOperationAdd("n.txt", notes), CommitOperationAdd("s.txt", shared)],
        commit_message="x",
    )
    api.upload_file(path_or_fileobj=shared, path_in_repo="same.txt", repo_id=other)
    api.delete_repo(doomed)
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info(doomed)
    assert _leaks(endpoint.data_dir, weights) == [] and _leaks(endpoint.data_dir, notes) == []
    path = hf_hub_download(other, "same.txt", token=TOKEN, cache_dir=tmp_path / "c", endpoint=endpoint.url)
    assert Path(path).read_bytes() == shared  # content shared with another repo stays


def test_uploads_never_committed_are_collected_after_the_grace_period(tmp_path, capsys):
    data_dir = tmp_path / "hub"
    server = HubServer(data_dir, {TOKEN: ("alice", "write")}).start()
    try:
        api = _api(server)
        repo_id = _repo(api, "orphan")
        orphan = _secret("orphan", 20_000)
        api.preupload_lfs_files(repo_id, [CommitOperationAdd("o.bin", orphan)])  # uploaded, never committed
        assert _leaks(data_dir, orphan)
        assert gc_main(["--data-dir", str(data_dir)]) == 2  # the running server holds the directory
    finally:
        server.stop()
    assert gc_main(["--data-dir", str(data_dir)]) == 0  # default grace period: kept
    assert _leaks(data_dir, orphan)
    assert cli_main(["hub", "gc", "--data-dir", str(data_dir), "--grace-seconds", "0"]) == 0
    assert "removed 1 blobs" in capsys.readouterr().out
    assert _leaks(data_dir, orphan) == []
    with HubServer(data_dir, {TOKEN: ("alice", "write")}) as again:  # the repo itself is intact
        assert _api(again).list_repo_files(repo_id) == [".gitattributes"]


def test_data_directory_is_private_to_the_server_user(endpoint):
    api = _api(endpoint)
    repo_id = _repo(api, "perms")
    api.upload_file(path_or_fileobj=b"inline", path_in_repo="a.txt", repo_id=repo_id)
    api.upload_file(path_or_fileobj=os.urandom(1000), path_in_repo="w.bin", repo_id=repo_id)
    api.create_branch(repo_id, branch="dev")
    old = os.umask(0o022)  # a permissive umask in the host process must not matter
    try:
        api.upload_file(path_or_fileobj=b"more", path_in_repo="b.txt", repo_id=repo_id)
    finally:
        os.umask(old)
    root = Path(endpoint.data_dir)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    checked = 0
    for path in root.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, (path, oct(mode))
        checked += 1
    blobs = [p for p in (root / "blobs").rglob("*") if p.is_file()]
    assert blobs and all(stat.S_IMODE(p.stat().st_mode) == 0o400 for p in blobs)
    assert checked > 20


def test_a_corrupt_repo_json_is_skipped_and_logged(endpoint, caplog):
    api = _api(endpoint)
    good, bad = _repo(api, "good"), _repo(api, "bad")
    meta = Path(endpoint.data_dir, "repos", "models", *bad.split("/"), "repo.json")
    meta.chmod(0o600)
    meta.write_text("")
    with caplog.at_level(logging.ERROR, logger="federated_factory.hub"):
        listed = [m.id for m in api.list_models(author="alice")]
    assert good in listed and bad not in listed
    assert "repo.json is unreadable" in caplog.text
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info(bad)


def test_a_full_disk_answers_507_and_leaves_no_temp_file(endpoint, monkeypatch):
    api = _api(endpoint)
    repo_id = _repo(api, "full")
    tmp_dir = Path(endpoint.data_dir, "tmp")
    blobs_before = sorted(p.name for p in Path(endpoint.data_dir, "blobs").rglob("*"))
    real_stage = _storage.Storage.stage_bytes
    calls = []

    def stage_then_fill_up(self, data):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_stage(self, data)

    monkeypatch.setattr(_storage.Storage, "stage_bytes", stage_then_fill_up)
    body = b"".join(
        json.dumps(x).encode() + b"\n"
        for x in (
            {"key": "header", "value": {"summary": "s"}},
            {"key": "file", "value": {"path": "a.txt", "encoding": "base64", "content": "YQ=="}},
            {"key": "file", "value": {"path": "b.txt", "encoding": "base64", "content": "Yg=="}},
        )
    )
    r = requests.post(
        f"{endpoint.url}/api/models/{repo_id}/commit/main",
        data=body,
        headers={"Content-Type": "application/x-ndjson", "Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert r.status_code == 507
    assert list(tmp_dir.iterdir()) == []
    assert sorted(p.name for p in Path(endpoint.data_dir, "blobs").rglob("*")) == blobs_before

    def no_space(*args, **kwargs):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(_storage.Storage, "store_lfs_upload", no_space)
    with pytest.raises(Exception):
        api.upload_file(path_or_fileobj=os.urandom(2000), path_in_repo="w.bin", repo_id=repo_id)
    assert list(tmp_dir.iterdir()) == []
    assert api.list_repo_files(repo_id) == [".gitattributes"]
