"""The Hub endpoint under hostile input: every request below is refused (or answered safely) with the expected
status, leaves the data directory exactly as it was, and the endpoint answers a normal request right after.

Runs its own endpoint on a fresh data directory, so "nothing was stored" is checked over the whole directory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path

import pytest
import requests

from federated_factory.hub.frontmatter import MAX_CARD_JSON, MAX_CARD_YAML
from federated_factory.hub.server import HubServer

TOKENS = {"alice": "hostile-alice-token", "reader": "hostile-reader-token"}
PATHOLOGICAL_NEWLINES = 8000  # the old front-matter regex took minutes on this many


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("hostile-hub")
    server = HubServer(data_dir, {TOKENS["alice"]: ("alice", "write"), TOKENS["reader"]: ("reader", "read")})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _auth(user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[user]}"}


def _snapshot(root: str) -> dict[str, tuple[int, bytes]]:
    """Every stored file (not the lock files) with its size and content hash."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if rel.startswith("locks") or rel == "server.lock":
                continue
            with open(path, "rb") as f:
                out[rel] = (os.path.getsize(path), hashlib.sha256(f.read()).digest())
    return out


def _ndjson(*items: dict) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


HEADER = {"key": "header", "value": {"summary": "hostile", "description": ""}}


def _file(path: str, content: bytes) -> dict:
    return {"key": "file", "value": {"path": path, "encoding": "base64", "content": base64.b64encode(content).decode()}}


def _commit(url: str, repo_id: str, body: bytes, user: str = "alice") -> requests.Response:
    return requests.post(
        f"{url}/api/models/{repo_id}/commit/main",
        data=body,
        headers={"Content-Type": "application/x-ndjson", **_auth(user)},
        timeout=60,
    )


@pytest.fixture(scope="module")
def repo(endpoint):
    """A public repo with a README, a folder and one LFS file."""
    repo_id = f"alice/target-{uuid.uuid4().hex[:6]}"
    r = requests.post(f"{endpoint.url}/api/repos/create", json={"name": repo_id.split("/")[1]}, headers=_auth(), timeout=10)
    assert r.status_code == 200, r.text
    body = _ndjson(HEADER, _file("README.md", b"---\nlicense: mit\n---\n# ok\n"), _file("folder/a.txt", b"a"))
    assert _commit(endpoint.url, repo_id, body).status_code == 200
    return repo_id


def _upload_lfs(url: str, repo_id: str, data: bytes) -> requests.Response:
    oid = hashlib.sha256(data).hexdigest()
    batch = requests.post(
        f"{url}/{repo_id}.git/info/lfs/objects/batch",
        json={"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(data)}]},
        headers=_auth(),
        timeout=10,
    ).json()
    href = batch["objects"][0]["actions"]["upload"]["href"]
    return requests.put(href, data=data, timeout=10)


def _healthy(url: str, repo_id: str) -> None:
    r = requests.get(f"{url}/api/models/{repo_id}", headers=_auth(), timeout=10)
    assert r.status_code == 200 and r.json()["id"] == repo_id
    assert requests.get(f"{url}/{repo_id}/resolve/main/folder/a.txt", timeout=10).content == b"a"


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _cases(url: str, repo_id: str):
    """(name, callable returning a Response, expected status)."""
    api = f"{url}/api/models/{repo_id}"
    stale = "0" * 40
    newlines_card = "---\n" + "\n" * PATHOLOGICAL_NEWLINES + "x"
    bomb = "---\na: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" \
           "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n---\n"
    deep_yaml = "---\nk: " + "[" * 5000 + "]" * 5000 + "\n---\n"
    post, get, put = requests.post, requests.get, requests.put
    return [
        ("validate-yaml: pathological newlines", lambda: post(f"{url}/api/validate-yaml", json={"content": newlines_card}, timeout=30), 200),
        ("validate-yaml: alias bomb", lambda: post(f"{url}/api/validate-yaml", json={"content": bomb}, headers=_auth(), timeout=10), 400),
        ("validate-yaml: nesting bomb", lambda: post(f"{url}/api/validate-yaml", json={"content": deep_yaml}, headers=_auth(), timeout=10), 400),
        ("validate-yaml: anonymous oversize", lambda: post(f"{url}/api/validate-yaml", json={"content": "x" * 100_000}, timeout=10), 413),
        ("validate-yaml: unknown license", lambda: post(f"{url}/api/validate-yaml", json={"content": "---\nlicense: free-for-all\n---\n"}, headers=_auth(), timeout=10), 400),
        ("validate-yaml: model-index without results", lambda: post(f"{url}/api/validate-yaml", json={"content": "---\nmodel-index:\n- name: m\n---\n"}, headers=_auth(), timeout=10), 400),
        ("validate-yaml: invalid token", lambda: post(f"{url}/api/validate-yaml", json={"content": ""}, headers={"Authorization": "Bearer nope"}, timeout=10), 401),
        ("create: deep-nested JSON", lambda: post(f"{url}/api/repos/create", data=b'{"name": ' + _deep(100_000) + b"}", headers=_auth(), timeout=10), 400),
        ("create: body over 10 MB", lambda: post(f"{url}/api/repos/create", data=b" " * (11 * 1024 * 1024), headers=_auth(), timeout=30), 413),
        ("create: anonymous", lambda: post(f"{url}/api/repos/create", json={"name": "anon"}, timeout=10), 401),
        ("create: read-only token", lambda: post(f"{url}/api/repos/create", json={"name": "ro"}, headers=_auth("reader"), timeout=10), 403),
        ("create: same name, other case", lambda: post(f"{url}/api/repos/create", json={"name": repo_id.split("/")[1].upper()}, headers=_auth(), timeout=10), 409),
        ("create: a space", lambda: post(f"{url}/api/repos/create", json={"name": "s", "type": "space"}, headers=_auth(), timeout=10), 400),
        ("paths-info: 20,000 distinct paths", lambda: post(f"{api}/paths-info/main", json={"paths": [f"p{i}" for i in range(20_000)]}, timeout=30), 400),
        ("paths-info: deep-nested JSON", lambda: post(f"{api}/paths-info/main", data=b'{"paths": ' + _deep(100_000) + b"}", headers={"Content-Type": "application/json"}, timeout=10), 400),
        ("paths-info: form over the field cap", lambda: post(f"{api}/paths-info/main", data="&".join(["paths=x"] * 20_010), headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=30), 400),
        ("commit: deep-nested NDJSON line", lambda: _commit(url, repo_id, json.dumps(HEADER).encode() + b"\n" + _deep(100_000) + b"\n"), 400),
        ("commit: inline file, then a missing deletion (404)", lambda: _commit(url, repo_id, _ndjson(HEADER, _file("secret-404.txt", b"rejected-404"), {"key": "deletedFile", "value": {"path": "missing.txt"}})), 404),
        ("commit: inline file on a stale parent (412)", lambda: _commit(url, repo_id, _ndjson({"key": "header", "value": {"summary": "s", "parentCommit": stale}}, _file("secret-412.txt", b"rejected-412"))), 412),
        ("commit: inline file and an LFS file never uploaded (422)", lambda: _commit(url, repo_id, _ndjson(HEADER, _file("secret-422.txt", b"rejected-422"), {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "a" * 64, "size": 3}})), 422),
        ("commit: file below a file", lambda: _commit(url, repo_id, _ndjson(HEADER, _file("folder/a.txt/b", b"clash"))), 400),
        ("commit: .git path", lambda: _commit(url, repo_id, _ndjson(HEADER, _file(".git/config", b"x"))), 400),
        ("commit: read-only token", lambda: _commit(url, repo_id, _ndjson(HEADER, _file("ro.txt", b"ro")), user="reader"), 403),
        ("commit: not NDJSON", lambda: post(f"{api}/commit/main", data=_ndjson(HEADER), headers={"Content-Type": "application/json", **_auth()}, timeout=10), 415),
        ("lfs upload: non-hex signature", lambda: put(f"{url}/api/lfs-upload/models/{repo_id}/{'b' * 64}?size=1&expires=9999999999&user=alice&sig={'zz' * 32}", data=b"x", timeout=10), 403),
        ("lfs upload: non-ASCII signature", lambda: put(f"{url}/api/lfs-upload/models/{repo_id}/{'b' * 64}?size=1&expires=9999999999&user=alice&sig={'%C3%A9' * 64}", data=b"x", timeout=10), 403),
        ("lfs upload: bytes that do not hash to the oid", lambda: _tampered_upload(url, repo_id), 400),
        ("lfs batch: more than 1000 objects", lambda: post(f"{url}/{repo_id}.git/info/lfs/objects/batch", json={"operation": "upload", "objects": [{"oid": "c" * 64, "size": 1}] * 1001}, headers=_auth(), timeout=10), 400),
        ("lfs batch: anonymous", lambda: post(f"{url}/{repo_id}.git/info/lfs/objects/batch", json={"operation": "upload", "objects": []}, timeout=10), 401),
        ("revision with a control character", lambda: get(f"{api}/revision/a%01b", timeout=10), 404),
        ("resolve: traversal", lambda: get(f"{url}/{repo_id}/resolve/main/%2E%2E/%2E%2E/etc/passwd", timeout=10), 400),
        ("resolve: invalid UTF-8", lambda: get(f"{url}/{repo_id}/resolve/main/%ff", timeout=10), 400),
        ("repo without namespace", lambda: get(f"{url}/api/models/gpt2", headers=_auth(), timeout=10), 404),
        ("branch named like a commit id", lambda: post(f"{api}/branch/{'a' * 40}", json={}, headers=_auth(), timeout=10), 400),
        ("delete main", lambda: requests.delete(f"{api}/branch/main", headers=_auth(), timeout=10), 403),
        ("tree: negative cursor", lambda: get(f"{api}/tree/main?cursor=-1", timeout=10), 400),
        ("commits: non-integer page", lambda: get(f"{api}/commits/main?p=abc", timeout=10), 400),
        ("super-squash: anonymous", lambda: post(f"{api}/super-squash/main", json={}, timeout=10), 401),
        ("lfs-files delete: read-only token", lambda: post(f"{api}/lfs-files/batch", json={"deletions": {"sha": ["d" * 64]}}, headers=_auth("reader"), timeout=10), 403),
        ("lfs-files delete: not a sha256", lambda: post(f"{api}/lfs-files/batch", json={"deletions": {"sha": ["../../x"]}}, headers=_auth(), timeout=10), 400),
        ("move: to another user's namespace", lambda: post(f"{url}/api/repos/move", json={"fromRepo": repo_id, "toRepo": "bob/x", "type": "model"}, headers=_auth(), timeout=10), 403),
        ("method not allowed", lambda: requests.delete(f"{url}/api/whoami-v2", headers=_auth(), timeout=10), 405),
    ]


def _tampered_upload(url: str, repo_id: str) -> requests.Response:
    data = b"announced"
    oid = hashlib.sha256(data).hexdigest()
    batch = requests.post(
        f"{url}/{repo_id}.git/info/lfs/objects/batch",
        json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]},
        headers=_auth(),
        timeout=10,
    ).json()
    return requests.put(batch["objects"][0]["actions"]["upload"]["href"], data=b"different", timeout=10)


def test_hostile_requests_are_refused_store_nothing_and_the_endpoint_keeps_answering(endpoint, repo, caplog):
    cases = _cases(endpoint.url, repo)
    assert len(cases) >= 30
    root = endpoint.data_dir
    with caplog.at_level(logging.INFO, logger="federated_factory.hub"):
        for name, send, status in cases:
            before = _snapshot(root)
            started = time.perf_counter()
            response = send()
            assert response.status_code == status, (name, response.status_code, response.text[:300])
            assert time.perf_counter() - started < 20, name
            assert len(response.content) < 100_000, name
            assert response.headers.get("X-Request-Id"), name
            assert all(c.isprintable() for c in response.headers.get("X-Error-Message", "")), name
            assert _snapshot(root) == before, f"{name}: the data directory changed"
            _healthy(endpoint.url, repo)
    assert "Traceback" not in caplog.text and "Internal error" not in caplog.text
    stored = b"".join(p.read_bytes() for p in Path(root, "blobs").rglob("*") if p.is_file())
    for secret in (b"rejected-404", b"rejected-412", b"rejected-422", b"different"):
        assert secret not in stored


def test_pathological_card_is_found_in_linear_time(endpoint, repo):
    """8,000 newlines after '---': minutes for the old backtracking regex; well under a second now."""
    card = ("---\n" + "\n" * PATHOLOGICAL_NEWLINES + "x").encode()
    for content in (card, card + b"\n" * 100_000):
        started = time.perf_counter()
        r = requests.post(f"{endpoint.url}/api/validate-yaml", json={"content": content.decode()}, headers=_auth(), timeout=30)
        assert r.status_code == 200 and time.perf_counter() - started < 1.0

    repo_id = f"alice/newlines-{uuid.uuid4().hex[:6]}"
    requests.post(f"{endpoint.url}/api/repos/create", json={"name": repo_id.split("/")[1]}, headers=_auth(), timeout=10)
    assert _commit(endpoint.url, repo_id, _ndjson(HEADER, _file("README.md", card + b"\n" * 500_000))).status_code == 200
    started = time.perf_counter()
    info = requests.get(f"{endpoint.url}/api/models/{repo_id}", headers=_auth(), timeout=30)
    assert info.status_code == 200 and "cardData" not in info.json()
    assert time.perf_counter() - started < 1.0


def test_cards_json_cannot_carry_are_converted_dropped_or_capped(endpoint, tmp_path):
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi(endpoint=endpoint.url, token=TOKENS["alice"])
    cases = {
        "odd": "---\nd: 2020-01-01\nt: 2001-12-14t21:59:43.10-05:00\nn: .nan\ni: .inf\nb: !!binary aGVsbG8=\n"
        "s: !!set {a: null, b: null}\n1: one\ntags: [x]\n---\n# card\n",
        "bomb": "---\na: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n---\n",
        "huge": "---\nbig: [" + ", ".join(["\u6f22\u5b57\u6f22\u5b57"] * 9_000) + "]\n---\n",  # 54 KB of YAML, 240 KB of JSON
    }
    expected = {
        "odd": {"d": "2020-01-01", "t": "2001-12-14T21:59:43.100000-05:00", "n": None, "i": None, "s": ["a", "b"],
                "1": "one", "tags": ["x"]},
        "bomb": None,
        "huge": None,
    }
    assert MAX_CARD_YAML > len(cases["huge"]) and len(json.dumps(cases["huge"])) > MAX_CARD_JSON
    for stem, card in cases.items():
        repo_id = f"alice/card-{stem}-{uuid.uuid4().hex[:6]}"
        api.create_repo(repo_id)
        # Upload without the client's own validation (it would refuse the bomb): a hostile member could do this.
        body = _ndjson(HEADER, _file("README.md", card.encode()), _file("w.txt", b"weights"))
        assert _commit(endpoint.url, repo_id, body).status_code == 200
        r = requests.get(f"{endpoint.url}/api/models/{repo_id}", headers=_auth(), timeout=60)
        assert r.status_code == 200 and len(r.content) < 50_000
        assert r.json().get("cardData") == expected[stem]
        local = snapshot_download(repo_id, cache_dir=tmp_path / stem, token=TOKENS["alice"], endpoint=endpoint.url)
        assert Path(local, "w.txt").read_bytes() == b"weights"


def test_paths_info_deduplicates_and_runs_off_the_loop(endpoint, repo):
    r = requests.post(
        f"{endpoint.url}/api/models/{repo}/paths-info/main", json={"paths": ["folder/a.txt"] * 50_000}, timeout=30
    )
    assert r.status_code == 200 and [e["path"] for e in r.json()] == ["folder/a.txt"]


def _raw_request(url: str, head: str, body: bytes = b"", read: bool = True) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        if not read:
            return b""
        return sock.recv(65536)


def test_authorization_is_checked_before_the_body_is_read(endpoint, repo):
    """A 1 GB body is announced and never sent: the refusal comes at once, without waiting for it."""
    for path, auth in (
        (f"/api/models/{repo}/commit/main", ""),
        (f"/api/models/{repo}/commit/main", f"Authorization: Bearer {TOKENS['reader']}\r\n"),
        (f"/api/models/{repo}/preupload/main", ""),
        (f"/{repo}.git/info/lfs/objects/batch", ""),
        ("/api/repos/create", ""),
    ):
        started = time.perf_counter()
        answer = _raw_request(
            endpoint.url,
            f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/x-ndjson\r\n"
            f"Content-Length: 1000000000\r\n\r\n",
        )
        assert answer.split(b" ")[1] in (b"401", b"403"), (path, answer[:100])
        assert time.perf_counter() - started < 5


def test_client_disconnects_are_not_logged_as_errors(endpoint, repo, caplog):
    before = _snapshot(endpoint.data_dir)
    with caplog.at_level(logging.INFO, logger="federated_factory.hub"):
        body = _ndjson(HEADER, _file("cut.txt", b"cut short"))
        _raw_request(
            endpoint.url,
            f"POST /api/models/{repo}/commit/main HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKENS['alice']}\r\n"
            f"Content-Type: application/x-ndjson\r\nContent-Length: {len(body) + 1000}\r\n\r\n",
            body,
            read=False,
        )
        time.sleep(1.0)
        _healthy(endpoint.url, repo)
    assert "Traceback" not in caplog.text and "Internal error" not in caplog.text
    assert _snapshot(endpoint.data_dir) == before


def test_request_ids_are_echoed_or_generated(endpoint, repo):
    r = requests.get(f"{endpoint.url}/api/models/{repo}", headers={"X-Request-Id": "abc-123"}, timeout=10)
    assert r.headers["X-Request-Id"] == "abc-123"
    r = requests.get(f"{endpoint.url}/api/models/{repo}", headers={"X-Request-Id": "bad id; x"}, timeout=10)
    assert r.headers["X-Request-Id"] != "bad id; x" and len(r.headers["X-Request-Id"]) == 32


def test_hostile_gitignore_does_not_stall_preupload(endpoint):
    repo_id = f"alice/ignore-{uuid.uuid4().hex[:6]}"
    requests.post(f"{endpoint.url}/api/repos/create", json={"name": repo_id.split("/")[1]}, headers=_auth(), timeout=10)
    rules = ("*a" * 30 + "b\n") * 500 + "*.log\n"
    assert _commit(endpoint.url, repo_id, _ndjson(HEADER, _file(".gitignore", rules.encode()))).status_code == 200
    files = [{"path": "a" * 900 + f"{i}.txt", "size": 1} for i in range(50)] + [{"path": "x.log", "size": 1}]
    started = time.perf_counter()
    r = requests.post(f"{endpoint.url}/api/models/{repo_id}/preupload/main", json={"files": files}, headers=_auth(), timeout=30)
    assert r.status_code == 200 and time.perf_counter() - started < 2.0
    assert [f["shouldIgnore"] for f in r.json()["files"]] == [False] * 50 + [True]


def test_binding_beyond_loopback_requires_a_public_url(tmp_path):
    from federated_factory.errors import HubEndpointError

    with pytest.raises(HubEndpointError, match="public_url"):
        HubServer(tmp_path / "d", host="0.0.0.0")
    server = HubServer(tmp_path / "d", host="0.0.0.0", port=0, public_url="http://hub.example:9000")
    assert server.app.public_url == "http://hub.example:9000"
