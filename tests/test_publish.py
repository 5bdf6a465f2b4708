"""Behaviour of the one Hub publish helper (`federated_factory.hub.publish`), through the real client and endpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import datasets
import pytest
from huggingface_hub.errors import RepositoryNotFoundError

from federated_factory.aggregator import publish_outputs
from federated_factory.errors import PublishError
from federated_factory.hub.env import free_port
from federated_factory.hub.manifest import parse_manifest
from federated_factory.hub.publish import publish_folder


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "folder"
    (root / "data").mkdir(parents=True)
    (root / "README.md").write_text("# a card\n")
    (root / "data" / "rows.csv").write_text("a,b\n1,2\n")
    (root / "notes.txt").write_text("local notes\n")
    return root


def commit_ids(api, repo_id, repo_type="model"):
    return [c.commit_id for c in api.list_repo_commits(repo_id, repo_type=repo_type)]


def test_publish_folder_makes_one_commit_to_a_new_private_repo_and_returns_its_sha(hub, folder):
    api, repo_id = hub.api("alice"), hub.repo_id("alice", "published")
    sha = publish_folder(folder, repo_id, token=hub.token("alice"), commit_message="Publish a folder")
    info = api.repo_info(repo_id)
    assert info.private is True and info.sha == sha
    commits = api.list_repo_commits(repo_id)
    assert len(commits) == 2 and commits[0].commit_id == sha and commits[0].title == "Publish a folder"
    assert sorted(api.list_repo_files(repo_id)) == [".gitattributes", "README.md", "data/rows.csv", "notes.txt"]

    # publishing a changed folder adds exactly one commit on top; an unchanged one adds none and returns the head
    (folder / "notes.txt").write_text("changed\n")
    again = publish_folder(folder, repo_id, token=hub.token("alice"), commit_message="again")
    assert commit_ids(api, repo_id)[1:] == [c.commit_id for c in commits] and commit_ids(api, repo_id)[0] == again
    assert publish_folder(folder, repo_id, token=hub.token("alice"), commit_message="same") == again
    assert len(commit_ids(api, repo_id)) == 3


def test_publish_folder_uploads_only_the_allowed_patterns_to_a_dataset_repo(hub, folder):
    api, repo_id = hub.api("alice"), hub.repo_id("alice", "dataset")
    sha = publish_folder(folder, repo_id, repo_type="dataset", token=hub.token("alice"), commit_message="data",
                         allow_patterns=["README.md", "data/*"])
    assert api.repo_info(repo_id, repo_type="dataset").sha == sha
    files = api.list_repo_files(repo_id, repo_type="dataset")
    assert "data/rows.csv" in files and "README.md" in files and "notes.txt" not in files
    with pytest.raises(RepositoryNotFoundError):  # a dataset repo, not a model repo of that name
        api.repo_info(repo_id)


@pytest.mark.parametrize("who", ["read-token", "rejected-token", "no-token"])
def test_a_token_that_cannot_write_is_refused_before_anything_is_written(hub, folder, who):
    if who == "read-token":
        token, owner, match = hub.add_user("ro-publish", role="read"), "ro-publish", "role 'read'"
    elif who == "rejected-token":
        token, owner, match = "hf_not-a-valid-token", "alice", r"rejected the token \(401\)"
    else:
        token, owner, match = None, "alice", "no Hub token"
    repo_id = hub.repo_id(owner, "refused")
    with pytest.raises(PublishError, match=match) as err:
        publish_folder(folder, repo_id, token=token, commit_message="x")
    assert token is None or token not in str(err.value)
    assert not hub.api(owner).repo_exists(repo_id)


def test_an_existing_public_repo_is_refused_when_private_is_asked(hub, folder):
    api, repo_id = hub.api("alice"), hub.repo_id("alice", "public")
    api.create_repo(repo_id, private=False)
    before = commit_ids(api, repo_id)
    with pytest.raises(PublishError, match="exists and is public"):
        publish_folder(folder, repo_id, token=hub.token("alice"), commit_message="x")
    assert commit_ids(api, repo_id) == before and api.repo_info(repo_id).private is False
    # asked for a public publish, the same repo takes the commit
    sha = publish_folder(folder, repo_id, token=hub.token("alice"), private=False, commit_message="public on purpose")
    assert commit_ids(api, repo_id) == [sha, *before]


def test_a_namespace_the_token_cannot_write_is_refused(hub, folder):
    with pytest.raises(PublishError, match="refused to create it"):
        publish_folder(folder, hub.repo_id("bob", "not-alices"), token=hub.token("alice"), commit_message="x")


def test_an_unreachable_endpoint_is_an_error_naming_it(tmp_path, folder):
    """huggingface_hub fixes its endpoint once per process, so this runs in a child process."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code = textwrap.dedent(f"""
        from federated_factory.errors import PublishError
        from federated_factory.hub.publish import publish_folder
        try:
            publish_folder({str(folder)!r}, "alice/x", token="tok-secret-value", commit_message="x")
        except PublishError as err:
            print("REFUSED:", err)
    """)
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_ETAG_TIMEOUT": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "REFUSED:" in out.stdout and "unreachable" in out.stdout and url in out.stdout, out.stdout
    assert "tok-secret-value" not in out.stdout + out.stderr


def _manifest(dataset_repo, classifier_repo):
    return parse_manifest({
        "label_space": ["a", "b"],
        "factories": [{"repo": "alice/factory", "revision": "0" * 40}],
        "publish": {"dataset_repo": dataset_repo, "classifier_repo": classifier_repo, "private": True},
    })


def test_the_aggregator_checks_both_repos_before_publishing_either(hub, tmp_path):
    """A public classifier repo (or a read token) refuses the whole publish: the dataset repo is not created."""
    api = hub.api("alice")
    dataset_repo, classifier_repo = hub.repo_id("alice", "synthetic"), hub.repo_id("alice", "classifier")
    api.create_repo(classifier_repo, private=False)
    before = commit_ids(api, classifier_repo)
    rows = datasets.Dataset.from_dict({"label": [0, 1]})
    summary = {"plan": {"shards": []}}
    with pytest.raises(PublishError, match="exists and is public"):
        publish_outputs(_manifest(dataset_repo, classifier_repo), rows, summary, tmp_path, token=hub.token("alice"))
    assert not api.repo_exists(dataset_repo, repo_type="dataset")
    assert commit_ids(api, classifier_repo) == before

    reader = hub.token("reader")
    fresh = hub.repo_id("alice", "classifier")
    with pytest.raises(PublishError, match="role 'read'"):
        publish_outputs(_manifest(dataset_repo, fresh), rows, summary, tmp_path, token=reader)
    assert not api.repo_exists(dataset_repo, repo_type="dataset") and not api.repo_exists(fresh)
