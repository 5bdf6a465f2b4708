"""Shared test fixtures: an in-process Hub-compatible endpoint that the real HF clients talk to over HTTP.

huggingface_hub reads ``HF_ENDPOINT`` once, at import, so the endpoint's port is chosen and every HF cache is moved
to a throw-away directory *before* anything imports an HF library. Fixtures:

* ``hub`` (session): a running :class:`~federated_factory.hub.server.HubServer` with users ``alice`` (write),
  ``bob`` (write) and ``reader`` (read), and org ``hospitals`` (member: ``alice``). See :class:`HubFixture`.
* ``hf_cache`` (function): a fresh, empty ``HF_HUB_CACHE`` directory for the test (returns its path).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from federated_factory.hub.env import free_port, use_endpoint

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="ff-tests-"))
atexit.register(shutil.rmtree, _SESSION_DIR, True)
HUB_PORT = free_port()
HUB_URL = use_endpoint(f"http://127.0.0.1:{HUB_PORT}")
for _var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.pop(_var, None)
os.environ["HF_HOME"] = str(_SESSION_DIR / "hf_home")
os.environ["HF_HUB_CACHE"] = str(_SESSION_DIR / "hf_home" / "hub")
os.environ["HF_DATASETS_CACHE"] = str(_SESSION_DIR / "hf_home" / "datasets")
os.environ["HF_XET_CACHE"] = str(_SESSION_DIR / "hf_home" / "xet")
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

import pytest  # noqa: E402

from federated_factory.hub.server import HubServer  # noqa: E402  (imports no HF library)

HUB_USERS: dict[str, str] = {"alice": "write", "bob": "write", "reader": "read"}
HUB_ORGS: dict[str, list[str]] = {"hospitals": ["alice"]}


class HubFixture:
    """Handle on the session's endpoint.

    * ``url``: ``http://127.0.0.1:PORT`` (also in ``HF_ENDPOINT``); ``server``: the running ``HubServer``;
      ``data_dir``: its storage directory.
    * ``token(user)``: the token of ``alice``, ``bob``, ``reader`` or a user added with ``add_user``.
    * ``api(user=None)``: an ``HfApi`` authenticated as ``user`` (anonymous if ``None``).
    * ``repo_id(owner="alice", stem="repo")``: a repo id that no other test uses.
    * ``add_user(user, role="write")``: give a new user a token on the running server; returns the token.
    * ``restart()``: stop the server and start a new one on the same port and directory (state is on disk).
    """

    def __init__(self, data_dir: Path, port: int):
        self.data_dir = data_dir
        self.port = port
        self._tokens = {user: f"tok-{user}-{uuid.uuid4().hex[:12]}" for user in HUB_USERS}
        self._roles = dict(HUB_USERS)
        self.server = self._new_server().start()
        self.url = self.server.url

    def _new_server(self) -> HubServer:
        tokens = {token: (user, self._roles[user]) for user, token in self._tokens.items()}
        return HubServer(self.data_dir, tokens, host="127.0.0.1", port=self.port, orgs=HUB_ORGS)

    def token(self, user: str) -> str:
        return self._tokens[user]

    def api(self, user: str | None = None):
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.url, token=self.token(user) if user else False)

    def repo_id(self, owner: str = "alice", stem: str = "repo") -> str:
        return f"{owner}/{stem}-{uuid.uuid4().hex[:8]}"

    def add_user(self, user: str, role: str = "write") -> str:
        token = f"tok-{user}-{uuid.uuid4().hex[:12]}"
        self.server.add_token(token, user, role)
        self._tokens[user], self._roles[user] = token, role
        return token

    def restart(self) -> None:
        self.server.stop()
        self.server = self._new_server().start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="session")
def hub():
    fixture = HubFixture(_SESSION_DIR / "hub_data", HUB_PORT)
    try:
        yield fixture
    finally:
        fixture.stop()


@pytest.fixture
def hf_cache(tmp_path):
    """A fresh HF hub cache for one test (pass it as ``cache_dir=``)."""
    path = tmp_path / "hf_cache"
    path.mkdir()
    return path


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The models in these tests are tiny: one thread is as fast as two, and it avoids OpenMP spin-wait
    stalls (10x slower runs measured) when other processes share the 2 cores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
