"""Users, organisations and access tokens of the Hub-compatible endpoint.

Tokens are kept only as sha256 digests, so a token never sits in a structure that could end up in a log or a
response. Configuration file (YAML)::

    users:
      alice:  {token: "hf_alice_secret", role: write}     # role: write (default) or read
      reader: {token_env: READER_TOKEN, role: read}         # token read from an environment variable
      bob:
        tokens:                                             # several tokens for one user
          - {token: "hf_bob_laptop"}
          - {token_env: BOB_CI_TOKEN, role: read}
    orgs:
      hospitals: [alice, bob]
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from dataclasses import dataclass

from federated_factory.errors import HubEndpointError

from ._storage import StorageError, validate_namespace

ROLES = ("read", "write")


@dataclass(frozen=True)
class Identity:
    user: str
    role: str  # "read" or "write"
    orgs: tuple[str, ...]

    @property
    def can_write(self) -> bool:
        return self.role == "write"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class AccessControl:
    """Token table and org membership; safe to update while the server runs."""

    def __init__(self, tokens: dict[str, tuple[str, str]] | None = None, orgs: dict[str, list[str]] | None = None):
        self._lock = threading.Lock()
        self._tokens: dict[bytes, tuple[str, str]] = {}
        self._orgs: dict[str, frozenset[str]] = {}
        for org, members in (orgs or {}).items():
            self.set_org(org, members)
        for token, (user, role) in (tokens or {}).items():
            self.add_token(token, user, role)

    def add_token(self, token: str, user: str, role: str = "write") -> None:
        if not isinstance(token, str) or not token or len(token) > 1000 or not token.isprintable() or " " in token:
            raise HubEndpointError(f"The token of user {user!r} must be 1-1000 printable characters without spaces.")
        if role not in ROLES:
            raise HubEndpointError(f"Role for user {user!r} must be 'read' or 'write', not {role!r}.")
        try:
            validate_namespace(user)
        except StorageError as exc:
            raise HubEndpointError(f"User name: {exc.message}") from None
        with self._lock:
            if user in self._orgs:
                raise HubEndpointError(f"{user!r} is an organisation; it cannot also be a user.")
            self._tokens[_digest(token)] = (user, role)

    def set_org(self, org: str, members: list[str] | tuple[str, ...]) -> None:
        try:
            validate_namespace(org)
            for member in members:
                validate_namespace(member)
        except StorageError as exc:
            raise HubEndpointError(f"Organisation {org!r}: {exc.message}") from None
        with self._lock:
            if any(user == org for user, _ in self._tokens.values()):
                raise HubEndpointError(f"{org!r} is a user; it cannot also be an organisation.")
            self._orgs[org] = frozenset(members)

    def identify(self, token: str) -> Identity | None:
        digest = _digest(token)
        with self._lock:
            found = None
            for known, value in self._tokens.items():  # constant-time comparison of every digest
                if hmac.compare_digest(known, digest):
                    found = value
            if found is None:
                return None
            user, role = found
            orgs = tuple(sorted(org for org, members in self._orgs.items() if user in members))
        return Identity(user, role, orgs)

    def is_org(self, name: str) -> bool:
        with self._lock:
            return name in self._orgs

    def org_members(self, org: str) -> frozenset[str]:
        with self._lock:
            return self._orgs.get(org, frozenset())


def parse_token_arg(value: str) -> tuple[str, str, str]:
    """``USER=TOKEN[:read|write]`` -> (token, user, role)."""
    user, sep, rest = value.partition("=")
    if not sep or not user or not rest:
        raise HubEndpointError("--token expects USER=TOKEN[:read|write].")
    token, role = rest, "write"
    head, colon, tail = rest.rpartition(":")
    if colon and tail in ROLES:
        token, role = head, tail
    return token, user, role


def load_config(path: str | os.PathLike[str]) -> tuple[dict[str, tuple[str, str]], dict[str, list[str]]]:
    """Read a users/orgs YAML file (format in the module docstring) -> (tokens, orgs)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as exc:
        raise HubEndpointError(f"Cannot read Hub config {path}: {exc.strerror}.") from None
    except yaml.YAMLError as exc:
        raise HubEndpointError(f"Hub config {path} is not valid YAML: {exc}.") from None
    if not isinstance(data, dict) or set(data) - {"users", "orgs"}:
        raise HubEndpointError(f"Hub config {path}: expected a mapping with keys 'users' and 'orgs'.")
    tokens: dict[str, tuple[str, str]] = {}
    users = data.get("users") or {}
    if not isinstance(users, dict):
        raise HubEndpointError(f"Hub config {path}: 'users' must map user names to token settings.")
    for user, spec in users.items():
        if not isinstance(spec, dict):
            raise HubEndpointError(f"Hub config {path}: user {user!r} must be a mapping (token/token_env/role).")
        entries = spec.get("tokens") if "tokens" in spec else [spec]
        if not isinstance(entries, list) or not entries:
            raise HubEndpointError(f"Hub config {path}: user {user!r} has no token.")
        for entry in entries:
            if not isinstance(entry, dict):
                raise HubEndpointError(f"Hub config {path}: tokens of user {user!r} must be mappings.")
            role = entry.get("role", spec.get("role", "write"))
            if "token" in entry:
                token = entry["token"]
            elif "token_env" in entry:
                token = os.environ.get(str(entry["token_env"]))
                if not token:
                    raise HubEndpointError(
                        f"Hub config {path}: environment variable {entry['token_env']!r} (token of user {user!r}) "
                        "is not set."
                    )
            else:
                raise HubEndpointError(f"Hub config {path}: a token of user {user!r} has neither token nor token_env.")
            if not isinstance(token, str):
                raise HubEndpointError(f"Hub config {path}: the token of user {user!r} must be a string.")
            if token in tokens:
                raise HubEndpointError(f"Hub config {path}: the same token is given to two users.")
            tokens[token] = (str(user), str(role))
    orgs = data.get("orgs") or {}
    if not isinstance(orgs, dict) or not all(isinstance(m, list) for m in orgs.values()):
        raise HubEndpointError(f"Hub config {path}: 'orgs' must map organisation names to lists of user names.")
    return tokens, {str(org): [str(m) for m in members] for org, members in orgs.items()}
