"""One way to publish to the Hub, with one set of safety checks, used by every publisher (factories, classifiers,
synthetic datasets).

`publish_folder` checks, before anything is written, that the token can write (a read token, a rejected token,
no token or an unreachable endpoint are errors) and that a repo asked to be private is not an existing public
one; then it creates the repo if needed and uploads the folder as ONE commit, whose sha it returns. Tokens are
never printed, logged or put into error messages.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import PublishError

WRITE_ROLES = (None, "write", "fineGrained")  # None: huggingface.co user tokens of old carry no role


def check_write_token(api, repo_id: str) -> dict:
    """``api.whoami()`` if the token can write, else `PublishError` (nothing is written either way)."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    try:
        user = api.whoami()
    except LocalTokenNotFoundError:
        raise PublishError(f"cannot publish {repo_id}: no Hub token; pass a write token with --token or HF_TOKEN") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "no response"
        raise PublishError(f"cannot publish {repo_id}: the Hub rejected the token ({status}); "
                           "pass a write token with --token or HF_TOKEN") from None
    except (OSError, httpx2.TransportError) as err:
        raise PublishError(f"cannot publish {repo_id}: Hub endpoint {constants.ENDPOINT} is unreachable "
                           f"({type(err).__name__})") from None
    role = ((user.get("auth") or {}).get("accessToken") or {}).get("role")
    if role not in WRITE_ROLES:
        raise PublishError(f"cannot publish {repo_id}: the token has role {role!r}, a write token is needed")
    return user


def check_can_publish(repo_id: str, *, repo_type: str = "model", token: str | None = None,
                      private: bool = True) -> None:
    """Every check `publish_folder` makes before writing, without writing: the token can write, and a repo asked
    to be private is not an existing public one. Raises `PublishError`.

    A publisher of several repos calls it for each before publishing any, so that a refusal leaves none changed.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    api = HfApi(token=token)
    check_write_token(api, repo_id)
    try:
        existing = api.repo_info(repo_id, repo_type=repo_type)
    except RepositoryNotFoundError:
        return
    except HfHubHTTPError as err:
        raise PublishError(f"cannot publish {_what(repo_id, repo_type)}: the Hub answered "
                           f"{err.response.status_code} when asked about the repo") from None
    if private and not existing.private:
        raise PublishError(
            f"cannot publish {_what(repo_id, repo_type)}: the repo already exists and is public, and this is only "
            "published to a private repo; nothing was published (make the repo private or choose another one)"
        )


def publish_folder(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str = "model",
    token: str | None = None,
    private: bool = True,
    commit_message: str,
    allow_patterns: list[str] | str | None = None,
) -> str:
    """Upload ``folder`` to ``repo_id`` as ONE commit and return the commit's sha (the head's sha when nothing
    changed: the Hub client makes no empty commit).

    Raises `PublishError`, having written nothing, when the token cannot write, the endpoint is unreachable,
    ``private`` is asked but ``repo_id`` exists and is public (`check_can_publish`), or the Hub refuses to
    create the repo. A repo that does not exist is created with ``private``; an existing private repo gets
    one more commit. ``allow_patterns`` restricts which files of ``folder`` are uploaded (``upload_folder``'s
    patterns).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(f"cannot publish {_what(repo_id, repo_type)}: {folder} is not a folder")
    check_can_publish(repo_id, repo_type=repo_type, token=token, private=private)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    except HfHubHTTPError as err:
        raise PublishError(f"cannot publish {_what(repo_id, repo_type)}: the Hub refused to create it "
                           f"({err.response.status_code}); does this token's user own that namespace, or belong to "
                           "that organization?") from None
    try:
        commit = api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=folder,
                                   commit_message=commit_message, allow_patterns=allow_patterns)
    except HfHubHTTPError as err:
        raise PublishError(f"cannot publish {_what(repo_id, repo_type)}: the upload was refused "
                           f"({err.response.status_code}); the repo is unchanged (a commit is all or nothing)") from None
    return commit.oid


def _what(repo_id: str, repo_type: str) -> str:
    return repo_id if repo_type == "model" else f"{repo_type} repo {repo_id}"
