"""The Hub-compatible endpoint, driven over HTTP by the real huggingface_hub / diffusers / timm / datasets clients.

Malformed requests that no well-behaved client would send are made with ``requests`` directly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationCopy,
    CommitOperationDelete,
    HfFileSystem,
    ModelCard,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils.sha import git_hash

from federated_factory.errors import HubEndpointError
from federated_factory.hub.env import free_port
from federated_factory.hub.server import HubServer, serve_main


def _auth(hub, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {hub.token(user)}"}


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _head(hub, repo_id: str, repo_type: str = "model") -> str:
    return hub.api("alice").repo_info(repo_id, repo_type=repo_type).sha


def _commit_raw(hub, repo_id: str, lines: list[dict] | bytes, user: str = "alice", **kwargs) -> requests.Response:
    body = lines if isinstance(lines, bytes) else b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    headers = {"Content-Type": "application/x-ndjson", **_auth(hub, user), **kwargs.pop("headers", {})}
    return requests.post(
        f"{hub.url}/api/models/{repo_id}/commit/main", data=body, headers=headers, timeout=60, **kwargs
    )


HEADER = {"key": "header", "value": {"summary": "raw commit", "description": ""}}


def _b64_file(path: str, content: bytes = b"x") -> dict:
    return {"key": "file", "value": {"path": path, "encoding": "base64", "content": base64.b64encode(content).decode()}}


# ------------------------------------------------------------------------------------------------ core workflows
def test_private_repo_upload_folder_pinned_snapshot_and_delete(hub, tmp_path, hf_cache):
    api = hub.api("alice")
    assert api.whoami()["name"] == "alice"
    assert [org["name"] for org in api.whoami()["orgs"]] == ["hospitals"]
    repo_id = hub.repo_id()
    url = api.create_repo(repo_id, private=True)
    assert url.repo_id == repo_id and url.startswith(hub.url)
    assert api.create_repo(repo_id, private=True, exist_ok=True).repo_id == repo_id
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo(repo_id)
    assert exc.value.response.status_code == 409

    weights_v1 = os.urandom(3000)
    folder = tmp_path / "v1"
    _write(folder / "config.json", '{"v": 1}')
    _write(folder / "weights.safetensors", weights_v1)  # binary extension -> LFS
    _write(folder / "sub" / "notes.txt", "old notes")
    v1 = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="v1")
    info = api.repo_info(repo_id, files_metadata=True)
    assert info.private is True and info.sha == v1.oid
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == {".gitattributes", "config.json", "weights.safetensors", "sub/notes.txt"}
    assert siblings["weights.safetensors"].lfs.sha256 == hashlib.sha256(weights_v1).hexdigest()
    assert siblings["config.json"].lfs is None and siblings["config.json"].blob_id == git_hash(b'{"v": 1}')

    # A later commit changes a regular and an LFS file and deletes a folder.
    weights_v2 = os.urandom(3000)
    v2 = api.create_commit(
        repo_id,
        operations=[
            CommitOperationAdd("config.json", b'{"v": 2}'),
            CommitOperationAdd("weights.safetensors", weights_v2),
            CommitOperationDelete("sub/"),
        ],
        commit_message="v2",
    )
    assert v2.oid != v1.oid and len(v2.oid) == 40

    old = Path(snapshot_download(repo_id, revision=v1.oid, token=hub.token("alice"), cache_dir=hf_cache))
    assert old.name == v1.oid
    assert (old / "config.json").read_text() == '{"v": 1}'
    assert (old / "weights.safetensors").read_bytes() == weights_v1
    assert (old / "sub" / "notes.txt").read_text() == "old notes"
    new = Path(snapshot_download(repo_id, token=hub.token("alice"), cache_dir=hf_cache))
    assert new.name == v2.oid
    assert (new / "weights.safetensors").read_bytes() == weights_v2
    assert not (new / "sub").exists()

    path = hf_hub_download(repo_id, "config.json", revision=v1.oid, token=hub.token("alice"), cache_dir=hf_cache)
    assert Path(path).read_text() == '{"v": 1}'
    path = hf_hub_download(repo_id, "weights.safetensors", token=hub.token("alice"), cache_dir=hf_cache)
    assert Path(path).read_bytes() == weights_v2
    assert Path(path).resolve().name == hashlib.sha256(weights_v2).hexdigest()  # cache blob named by the ETag
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "sub/notes.txt", token=hub.token("alice"), cache_dir=hf_cache)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "config.json", revision="0" * 40, token=hub.token("alice"), cache_dir=hf_cache)

    commits = api.list_repo_commits(repo_id)
    assert [c.commit_id for c in commits[:2]] == [v2.oid, v1.oid] and commits[-1].title == "initial commit"
    assert commits[0].authors == ["alice"]
    assert api.list_repo_refs(repo_id).branches[0].target_commit == v2.oid

    api.delete_repo(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info(repo_id)
    api.delete_repo(repo_id, missing_ok=True)


def test_resolve_headers_ranges_and_hffs(hub, tmp_path):
    api = hub.api("alice")
    repo_id = hub.repo_id()
    api.create_repo(repo_id)
    text, blob = b"0123456789" * 10, os.urandom(5000)
    commit = api.create_commit(
        repo_id,
        [CommitOperationAdd("a/text.txt", text), CommitOperationAdd("a/blob.bin", blob)],
        commit_message="files",
    )
    base = f"{hub.url}/{repo_id}/resolve/main"
    head = requests.head(f"{base}/a/text.txt", timeout=10)
    assert head.status_code == 200 and head.headers["X-Repo-Commit"] == commit.oid
    assert head.headers["ETag"].strip('"') == git_hash(text) and int(head.headers["Content-Length"]) == len(text)
    head = requests.head(f"{base}/a/blob.bin", timeout=10)
    assert head.headers["X-Linked-Etag"].strip('"') == hashlib.sha256(blob).hexdigest()
    assert int(head.headers["X-Linked-Size"]) == len(blob)

    part = requests.get(f"{base}/a/blob.bin", headers={"Range": "bytes=100-199"}, timeout=10)
    assert part.status_code == 206 and part.content == blob[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(blob)}"
    assert requests.get(f"{base}/a/blob.bin", headers={"Range": "bytes=-7"}, timeout=10).content == blob[-7:]
    assert requests.get(f"{base}/a/blob.bin", headers={"Range": "bytes=9999-"}, timeout=10).status_code == 416
    missing = requests.head(f"{base}/a/nope.txt", timeout=10)
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"
    assert missing.headers["X-Repo-Commit"] == commit.oid

    # Tree pagination as the Hub does it: cursor links in the Link header, on the pinned commit.
    seen, url = [], f"{hub.url}/api/models/{repo_id}/tree/main?recursive=true&limit=2"
    while url:
        page = requests.get(url, timeout=10)
        assert page.status_code == 200
        seen += [entry["path"] for entry in page.json()]
        url = page.links.get("next", {}).get("url")
        assert url is None or commit.oid in url
    assert seen == sorted(f.path for f in api.list_repo_tree(repo_id, recursive=True))
    assert set(seen) == {".gitattributes", "a", "a/text.txt", "a/blob.bin"}
    tree = requests.get(f"{hub.url}/api/models/{repo_id}/tree/main/nowhere", timeout=10)
    assert tree.status_code == 404 and tree.headers["X-Error-Code"] == "EntryNotFound"
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(repo_id, "nowhere"))

    # HfFileSystem (what datasets uses): listing, paths-info, ranged reads.
    fs = HfFileSystem(token=hub.token("alice"))
    assert sorted(fs.ls(f"{repo_id}/a", detail=False)) == [f"{repo_id}/a/blob.bin", f"{repo_id}/a/text.txt"]
    assert fs.info(f"{repo_id}/a/blob.bin")["size"] == len(blob)
    assert fs.glob(f"{repo_id}/**/*.txt") == [f"{repo_id}/a/text.txt"]
    with fs.open(f"{repo_id}/a/blob.bin", "rb", block_size=1024) as f:
        f.seek(3000)
        assert f.read(100) == blob[3000:3100]
    assert [p.path for p in api.get_paths_info(repo_id, ["a", "a/text.txt", "missing"])] == ["a", "a/text.txt"]


def test_branches_tags_copies_and_listing(hub, hf_cache):
    api = hub.api("alice")
    repo_id = hub.repo_id(stem="refs")
    api.create_repo(repo_id, private=True)
    blob = os.urandom(2048)
    v1 = api.create_commit(
        repo_id,
        [CommitOperationAdd("w.bin", blob), CommitOperationAdd("t.txt", b"text"), CommitOperationAdd("empty.txt", b"")],
        commit_message="v1",
    )
    api.create_tag(repo_id, tag="round-1", revision=v1.oid)
    api.create_branch(repo_id, branch="dev")
    dev = api.create_commit(
        repo_id,
        [CommitOperationCopy("w.bin", "copy/w.bin"), CommitOperationCopy("t.txt", "copy/t.txt")],
        commit_message="copies on dev",
        revision="dev",
    )
    assert api.list_repo_files(repo_id) == [".gitattributes", "empty.txt", "t.txt", "w.bin"]
    assert set(api.list_repo_files(repo_id, revision="dev")) >= {"copy/w.bin", "copy/t.txt"}
    path = hf_hub_download(repo_id, "copy/w.bin", revision="dev", token=hub.token("alice"), cache_dir=hf_cache)
    assert Path(path).read_bytes() == blob
    assert Path(hf_hub_download(repo_id, "empty.txt", token=hub.token("alice"), cache_dir=hf_cache)).read_bytes() == b""
    refs = api.list_repo_refs(repo_id)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": v1.oid, "dev": dev.oid}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("round-1", v1.oid)]
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="t.txt", repo_id=repo_id)
    assert api.repo_info(repo_id, revision="round-1").sha == v1.oid
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_tag(repo_id, tag="round-1")
    assert exc.value.response.status_code == 409
    api.delete_tag(repo_id, tag="round-1")
    api.delete_branch(repo_id, branch="dev")
    assert [b.name for b in api.list_repo_refs(repo_id).branches] == ["main"]
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(repo_id, revision="dev")
    assert repo_id in [m.id for m in api.list_models(author="alice")]
    assert repo_id not in [m.id for m in hub.api("bob").list_models(author="alice")]


def test_many_files_paginate_through_the_client(hub, tmp_path):
    api = hub.api("alice")
    repo_id = hub.repo_id()
    api.create_repo(repo_id)
    for i in range(1105):
        _write(tmp_path / "many" / f"d{i % 3}" / f"f{i:04d}.txt", str(i))
    api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "many", commit_message="many files")
    files = api.list_repo_files(repo_id)  # > 1000 entries: needs the Link header pagination
    assert len(files) == 1106 and "d1/f1000.txt" in files


def test_commit_conflicts_and_concurrency(hub):
    api = hub.api("alice")
    repo_id = hub.repo_id()
    api.create_repo(repo_id)
    first = api.create_commit(repo_id, [CommitOperationAdd("a.txt", b"a")], commit_message="a")
    api.create_commit(repo_id, [CommitOperationAdd("b.txt", b"b")], commit_message="b", parent_commit=first.oid)
    with pytest.raises(HfHubHTTPError) as exc:  # parent is no longer the head -> 412 like the Hub
        api.create_commit(repo_id, [CommitOperationAdd("c.txt", b"c")], commit_message="c", parent_commit=first.oid)
    assert exc.value.response.status_code == 412
    assert "c.txt" not in api.list_repo_files(repo_id)

    barrier, results, errors = threading.Barrier(4), {}, []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = api.create_commit(
                repo_id, [CommitOperationAdd(f"t{i}.bin", os.urandom(2000))], commit_message=f"thread {i}"
            ).oid
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    files = api.list_repo_files(repo_id)
    assert {f"t{i}.bin" for i in range(4)} <= set(files)  # no commit was lost
    history = api.list_repo_commits(repo_id)
    ids = [c.commit_id for c in history]
    assert set(results.values()) <= set(ids[:4])
    # Linear history: each thread's commit has a distinct parent.
    parents = {ids[i]: ids[i + 1] for i in range(len(ids) - 1)}
    assert len({parents[c] for c in results.values()}) == 4


def test_rejected_commit_changes_nothing(hub):
    api = hub.api("alice")
    repo_id = hub.repo_id()
    api.create_repo(repo_id)
    before = _head(hub, repo_id)
    response = _commit_raw(
        hub, repo_id, [HEADER, _b64_file("new.txt"), {"key": "deletedFile", "value": {"path": "missing.txt"}}]
    )
    assert response.status_code == 404 and response.headers["X-Error-Code"] == "EntryNotFound"
    assert _head(hub, repo_id) == before and "new.txt" not in api.list_repo_files(repo_id)
    response = _commit_raw(hub, repo_id, [HEADER, _b64_file("x"), _b64_file("x/y")])  # file and folder clash
    assert response.status_code == 400 and _head(hub, repo_id) == before


def test_crash_before_ref_update_keeps_previous_revision(hub, monkeypatch):
    from federated_factory.hub import _storage

    repo_id = hub.repo_id(stem="crash")
    hub.api("alice").create_repo(repo_id)
    before = _head(hub, repo_id)
    real_write = _storage._atomic_write_json

    def crash_on_refs(path, data, tmp_dir):
        if path.endswith("refs.json"):
            raise OSError("simulated crash between the commit file and the branch update")
        real_write(path, data, tmp_dir)

    monkeypatch.setattr(_storage, "_atomic_write_json", crash_on_refs)
    response = _commit_raw(hub, repo_id, [HEADER, _b64_file("lost.txt")])
    assert response.status_code == 500 and "simulated" not in response.text
    monkeypatch.undo()
    assert _head(hub, repo_id) == before and "lost.txt" not in hub.api("alice").list_repo_files(repo_id)
    assert _commit_raw(hub, repo_id, [HEADER, _b64_file("kept.txt")]).status_code == 200


# ------------------------------------------------------------------------------------------- library round-trips
def test_diffusers_pipeline_roundtrip(hub, tmp_path):
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, DiffusionPipeline, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(tmp_path / "pipe")
    api = hub.api("alice")
    repo_id = hub.repo_id(stem="ddpm")
    api.create_repo(repo_id, private=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "pipe", commit_message="pipeline")
    api.upload_file(path_or_fileobj=b"later", path_in_repo="later.txt", repo_id=repo_id)  # moves main on
    loaded = DiffusionPipeline.from_pretrained(repo_id, revision=commit.oid, token=hub.token("alice"))
    assert isinstance(loaded, DDPMPipeline)
    for name, tensor in unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[name], tensor)


def test_timm_push_and_create_model(hub, monkeypatch):
    import timm
    import torch
    from timm.models import push_to_hf_hub

    model = timm.create_model("resnet10t", num_classes=3, pretrained=False)
    repo_id = hub.repo_id(stem="timm")
    hub.api("alice").create_repo(repo_id, private=True)
    push_to_hf_hub(model, repo_id, token=hub.token("alice"))
    monkeypatch.setenv("HF_TOKEN", hub.token("alice"))  # timm.create_model has no token argument
    loaded = timm.create_model(f"hf-hub:{repo_id}", pretrained=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)


def test_datasets_push_to_hub_and_load_dataset(hub):
    import datasets

    repo_id = hub.repo_id(stem="data")
    ds = datasets.Dataset.from_dict({"label": [0, 1, 2, 1], "text": ["a", "b", "c", "d"]})
    ds.push_to_hub(repo_id, private=True, token=hub.token("alice"))
    info = hub.api("alice").dataset_info(repo_id)
    assert info.private is True and any(s.rfilename.endswith(".parquet") for s in info.siblings)
    loaded = datasets.load_dataset(repo_id, token=hub.token("alice"))
    assert loaded["train"].to_dict() == ds.to_dict()
    with pytest.raises(RepositoryNotFoundError):
        hub.api("bob").dataset_info(repo_id)


def test_model_card_push_and_load(hub):
    repo_id = hub.repo_id(stem="card")
    hub.api("alice").create_repo(repo_id, private=True)
    card = ModelCard("---\nlicense: mit\nlibrary_name: diffusers\ntags: [federated, diffusion]\n---\n# Factory\n")
    card.push_to_hub(repo_id, token=hub.token("alice"))
    loaded = ModelCard.load(repo_id, token=hub.token("alice"))
    assert loaded.data.license == "mit" and "# Factory" in loaded.text
    info = hub.api("alice").model_info(repo_id)
    assert info.card_data.tags == ["federated", "diffusion"] and info.library_name == "diffusers"
    with pytest.raises(ValueError, match="Invalid metadata"):  # the endpoint validates README YAML
        hub.api("alice").upload_file(path_or_fileobj=b"---\n: [\n---\n", path_in_repo="README.md", repo_id=repo_id)


# --------------------------------------------------------------------------------------------------------- access
def test_access_rules(hub, hf_cache, caplog):
    caplog.set_level(logging.INFO, logger="federated_factory.hub")
    alice, bob, reader, anonymous = hub.api("alice"), hub.api("bob"), hub.api("reader"), hub.api()
    private_id, public_id = hub.repo_id(stem="private"), hub.repo_id(stem="public")
    alice.create_repo(private_id, private=True)
    alice.create_repo(public_id)
    alice.upload_file(path_or_fileobj=b"secret", path_in_repo="s.txt", repo_id=private_id)
    alice.upload_file(path_or_fileobj=b"open", path_in_repo="o.txt", repo_id=public_id)

    with pytest.raises(RepositoryNotFoundError) as exc:
        anonymous.repo_info(private_id)
    assert exc.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError) as exc:
        bob.repo_info(private_id)
    assert exc.value.response.status_code == 404
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(private_id, "s.txt", token=hub.token("bob"), cache_dir=hf_cache)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(private_id, "s.txt", token=False, cache_dir=hf_cache)
    with pytest.raises(RepositoryNotFoundError):  # cannot write what it cannot see
        bob.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=private_id)

    # Public repos: everyone reads, only the owner writes; read tokens never write.
    assert Path(hf_hub_download(public_id, "o.txt", token=False, cache_dir=hf_cache)).read_bytes() == b"open"
    assert reader.list_repo_files(public_id) == [".gitattributes", "o.txt"]
    for api, status in ((reader, 403), (bob, 403), (anonymous, 401)):
        with pytest.raises(HfHubHTTPError) as exc:
            api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=public_id)
        assert exc.value.response.status_code == status
    with pytest.raises(HfHubHTTPError) as exc:
        reader.create_repo("reader/mine")
    assert exc.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as exc:
        bob.delete_repo(public_id)
    assert exc.value.response.status_code == 403

    # Organisations: members read and write the org's private repos, others get 404.
    org_repo = hub.repo_id(owner="hospitals", stem="shared")
    alice.create_repo(org_repo, private=True)
    alice.upload_file(path_or_fileobj=b"org", path_in_repo="o.txt", repo_id=org_repo)
    assert alice.repo_info(org_repo).private is True
    with pytest.raises(RepositoryNotFoundError):
        bob.repo_info(org_repo)
    with pytest.raises(HfHubHTTPError) as exc:
        bob.create_repo(hub.repo_id(owner="hospitals"))
    assert exc.value.response.status_code == 403

    # Tokens added while the server runs; invalid tokens are refused.
    carol_token = hub.add_user("carol")
    carol = hub.api("carol")
    assert carol.whoami()["name"] == "carol"
    carol.create_repo(hub.repo_id(owner="carol"))
    with pytest.raises(RepositoryNotFoundError):
        carol.repo_info(private_id)
    bad = requests.get(f"{hub.url}/api/whoami-v2", headers={"Authorization": "Bearer not-a-token"}, timeout=10)
    assert bad.status_code == 401 and "not-a-token" not in bad.text
    bad = requests.get(f"{hub.url}/api/models/{public_id}", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert bad.status_code == 401

    # No token ever shows up in the server's log lines or in a response.
    whoami = requests.get(f"{hub.url}/api/whoami-v2", headers=_auth(hub, "alice"), timeout=10)
    assert hub.token("alice") not in whoami.text
    logged = caplog.text
    assert "/api/whoami-v2" in logged
    for secret in (hub.token("alice"), hub.token("bob"), hub.token("reader"), carol_token, "not-a-token"):
        assert secret not in logged


# ----------------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def bad_paths_repo(hub):
    repo_id = hub.repo_id(stem="badpaths")
    hub.api("alice").create_repo(repo_id)
    return repo_id


BAD_PATHS = [
    "../evil.txt",
    "a/../../evil.txt",
    "/etc/passwd",
    "C:/x",
    "a\\b.txt",
    "a\x00b",
    "./a",
    "a//b",
    ".git/config",
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_commit_refuses_bad_paths(hub, bad_paths_repo, path):
    repo_id = bad_paths_repo
    before = _head(hub, repo_id)
    for op in (
        _b64_file(path),
        {"key": "deletedFile", "value": {"path": path}},
        {"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": "a" * 64, "size": 1}},
    ):
        response = _commit_raw(hub, repo_id, [HEADER, op])
        assert response.status_code == 400, (path, op["key"], response.text)
        assert "error" in response.json()
    preupload = requests.post(
        f"{hub.url}/api/models/{repo_id}/preupload/main",
        json={"files": [{"path": path, "size": 1, "sample": ""}]},
        headers=_auth(hub, "alice"),
        timeout=10,
    )
    assert preupload.status_code == 400
    assert _head(hub, repo_id) == before


def test_bad_requests_are_4xx_and_change_nothing(hub):
    repo_id = hub.repo_id(stem="bad")
    hub.api("alice").create_repo(repo_id)
    before = _head(hub, repo_id)
    auth = _auth(hub, "alice")

    for name, org in (("../x", None), ("a--b", None), ("bad name", None), ("x", "../alice"), ("x", "api"), ("", None)):
        r = requests.post(
            f"{hub.url}/api/repos/create", json={"name": name, "organization": org}, headers=auth, timeout=10
        )
        assert r.status_code == 400, (name, org, r.text)
    assert requests.post(f"{hub.url}/api/repos/create", data=b"{not json", headers=auth, timeout=10).status_code == 400
    for raw in ("%2E%2E/%2E%2E/etc/passwd", "a/..%2F..%2Fx", "a%00b", "a%5Cb"):
        r = requests.get(f"{hub.url}/{repo_id}/resolve/main/{raw}", headers=auth, timeout=10)
        assert r.status_code == 400, (raw, r.status_code)
    assert requests.get(f"{hub.url}/alice/..%2Fx/resolve/main/a", headers=auth, timeout=10).status_code == 400

    cases = [
        b"not json\n",
        json.dumps(_b64_file("a.txt")).encode() + b"\n",  # no header
        b"".join(json.dumps(x).encode() + b"\n" for x in (HEADER, HEADER)),
        b"".join(json.dumps(x).encode() + b"\n" for x in (HEADER, {"key": "teleport", "value": {}})),
        b"".join(
            json.dumps(x).encode() + b"\n" for x in (HEADER, {"key": "file", "value": {"path": "a", "content": "!!"}})
        ),
        b"".join(json.dumps(x).encode() + b"\n" for x in ({"key": "header", "value": {"summary": ""}},)),
        b"".join(
            json.dumps(x).encode() + b"\n"
            for x in ({"key": "header", "value": {"summary": "s", "parentCommit": "zz"}},)
        ),
        b"",
    ]
    for body in cases:
        r = _commit_raw(hub, repo_id, body)
        assert r.status_code == 400, (body[:80], r.status_code, r.text)
    r = _commit_raw(hub, repo_id, [HEADER], headers={"Content-Type": "application/json"})
    assert r.status_code == 415
    r = requests.get(f"{hub.url}/api/models/{repo_id}/xet-write-token/main", headers=auth, timeout=10)
    assert r.status_code == 501 and "HF_HUB_DISABLE_XET=1" in r.json()["error"]

    # Oversized: one NDJSON line (> 16 MB) and a whole body (> 100 MB, streamed without Content-Length).
    big_line = json.dumps(_b64_file("big.txt", b"\0" * (13 * 1024 * 1024))).encode() + b"\n"
    assert _commit_raw(hub, repo_id, json.dumps(HEADER).encode() + b"\n" + big_line).status_code == 413

    def endless():
        yield json.dumps(HEADER).encode() + b"\n"
        for _ in range(101):
            yield b" " * (1024 * 1024)

    r = requests.post(
        f"{hub.url}/api/models/{repo_id}/commit/main",
        data=endless(),
        headers={"Content-Type": "application/x-ndjson", **auth},
        timeout=60,
    )
    assert r.status_code == 413
    assert _head(hub, repo_id) == before


def test_lfs_upload_is_verified(hub, tmp_path):
    repo_id = hub.repo_id(stem="lfs")
    hub.api("alice").create_repo(repo_id)
    before = _head(hub, repo_id)
    auth = _auth(hub, "alice")
    data = os.urandom(4096)
    oid = hashlib.sha256(data).hexdigest()

    def batch(oid: str, size: int) -> dict:
        r = requests.post(
            f"{hub.url}/{repo_id}.git/info/lfs/objects/batch",
            json={"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": size}]},
            headers=auth,
            timeout=10,
        )
        assert r.status_code == 200
        return r.json()["objects"][0]

    action = batch(oid, len(data))["actions"]
    upload = action["upload"]["href"]
    assert hub.token("alice") not in upload
    wrong = os.urandom(4096)
    assert requests.put(upload, data=wrong, timeout=10).status_code == 400  # right size, wrong bytes
    assert requests.put(upload, data=data + b"x", timeout=10).status_code == 400  # too long
    assert requests.put(upload, data=data[:-1], timeout=10).status_code == 400  # too short
    assert requests.put(upload.replace("sig=", "sig=0"), data=data, timeout=10).status_code == 403
    assert requests.put(upload.replace("size=4096", "size=4095"), data=data[:-1], timeout=10).status_code == 403
    assert not (hub.data_dir / "blobs" / oid[:2] / oid).exists()
    assert not (
        hub.data_dir / "blobs" / hashlib.sha256(wrong).hexdigest()[:2] / hashlib.sha256(wrong).hexdigest()
    ).exists()
    r = requests.post(action["verify"]["href"], json={"oid": oid, "size": len(data)}, headers=auth, timeout=10)
    assert r.status_code == 404
    lfs_op = {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": oid, "size": len(data)}}
    assert _commit_raw(hub, repo_id, [HEADER, lfs_op]).status_code == 422
    assert _head(hub, repo_id) == before

    assert requests.put(upload, data=data, timeout=10).status_code == 200
    assert requests.post(action["verify"]["href"], json={"oid": oid, "size": len(data)}, headers=auth, timeout=10).ok
    assert "actions" not in batch(oid, len(data))  # already uploaded: nothing to do
    assert _commit_raw(hub, repo_id, [HEADER, lfs_op]).status_code == 200
    assert requests.get(f"{hub.url}/{repo_id}/resolve/main/w.bin", headers=auth, timeout=10).content == data

    # An object uploaded to one repo cannot be committed to another without uploading it there.
    other = hub.repo_id(stem="lfs-other")
    hub.api("alice").create_repo(other)
    assert _commit_raw(hub, other, [HEADER, lfs_op]).status_code == 422
    bad = batch("z" * 64, 1)
    assert bad["error"]["code"] == 422


# ----------------------------------------------------------------------------------------------- persistence, CLI
def test_state_survives_restart(hub, hf_cache):
    api = hub.api("alice")
    repo_id = hub.repo_id(stem="persist")
    api.create_repo(repo_id, private=True)
    first = api.upload_file(path_or_fileobj=b"one", path_in_repo="f.txt", repo_id=repo_id)
    second = api.upload_file(path_or_fileobj=os.urandom(1000), path_in_repo="w.bin", repo_id=repo_id)
    with pytest.raises(HubEndpointError, match="already served"):  # one server per data directory
        HubServer(hub.data_dir, port=0).start()
    hub.restart()
    assert api.repo_info(repo_id).sha == second.oid and api.repo_info(repo_id).private is True
    path = hf_hub_download(repo_id, "f.txt", revision=first.oid, token=hub.token("alice"), cache_dir=hf_cache)
    assert Path(path).read_bytes() == b"one"
    third = api.upload_file(path_or_fileobj=b"three", path_in_repo="f.txt", repo_id=repo_id)
    assert [c.commit_id for c in api.list_repo_commits(repo_id)[:3]] == [third.oid, second.oid, first.oid]
    with pytest.raises(RepositoryNotFoundError):
        hub.api("bob").repo_info(repo_id)


def test_serve_cli(tmp_path, monkeypatch):
    assert serve_main(["--data-dir", str(tmp_path / "d"), "--token", "no-equals-sign"]) == 2
    (tmp_path / "bad.yaml").write_text("users: [1, 2]\n")
    assert serve_main(["--data-dir", str(tmp_path / "d"), "--config", str(tmp_path / "bad.yaml")]) == 2

    (tmp_path / "users.yaml").write_text(
        "users:\n  dana: {token_env: DANA_TOKEN, role: write}\n  eve: {token: eve-token-1, role: read}\n"
        "orgs:\n  clinic: [dana]\n"
    )
    port = free_port()
    env = {**os.environ, "DANA_TOKEN": "dana-secret-token"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "federated_factory.hub.server",
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(port),
            "--config",
            str(tmp_path / "users.yaml"),
            "--token",
            "frank=frank-token:read",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        who = requests.get(f"{url}/api/whoami-v2", headers={"Authorization": "Bearer dana-secret-token"}, timeout=10)
        assert who.json()["name"] == "dana" and who.json()["orgs"][0]["name"] == "clinic"
        for token, user in (("eve-token-1", "eve"), ("frank-token", "frank")):
            who = requests.get(f"{url}/api/whoami-v2", headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert who.json()["name"] == user and who.json()["auth"]["accessToken"]["role"] == "read"
        r = requests.post(
            f"{url}/api/repos/create",
            json={"name": "m", "organization": "clinic"},
            headers={"Authorization": "Bearer dana-secret-token"},
            timeout=10,
        )
        assert r.status_code == 200 and r.json()["url"] == f"{url}/clinic/m"
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0
    assert "dana-secret-token" not in output and "eve-token-1" not in output and "frank-token" not in output
    assert (tmp_path / "data" / "repos" / "models" / "clinic" / "m" / "repo.json").exists()


def test_an_idle_connection_outlives_the_http_clients_pool(hub):
    """The server keeps an idle keep-alive connection open longer than httpx (huggingface_hub's transport) keeps
    it in its pool, so a pooled connection is never closed by the server just as the client reuses it (which
    failed a publish with "server disconnected" on a busy machine)."""
    import httpx2

    client_expiry = httpx2.Limits().keepalive_expiry
    request = f"GET /api/whoami-v2 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {hub.token('alice')}\r\n\r\n"

    def receive(sock) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the idle connection"
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection mid-response"
            body += chunk
        return head

    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as sock:
        sock.sendall(request.encode())
        assert receive(sock).startswith(b"HTTP/1.1 200")
        time.sleep(client_expiry + 1)  # idle past the client's pool: the server must still hold the connection
        sock.sendall(request.encode())
        assert receive(sock).startswith(b"HTTP/1.1 200")
