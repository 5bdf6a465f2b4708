"""Calls of the unmodified huggingface_hub client that must behave as on the Hub (issue: Hub-compatible behaviour)."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError


def test_ids_without_namespace_are_not_found_so_exists_helpers_return_false(hub):
    for api in (hub.api("alice"), hub.api()):
        assert api.repo_exists("gpt2") is False
        assert api.repo_exists("gpt2", repo_type="dataset") is False
        assert api.file_exists("gpt2", "config.json") is False
        assert api.revision_exists("gpt2", "main") is False
    r = requests.get(f"{hub.url}/gpt2/resolve/main/config.json", timeout=10)
    assert r.status_code == 401 and r.headers["X-Error-Code"] == "RepoNotFound"


def test_short_commit_ids_are_revisions(hub, hf_cache):
    api = hub.api("alice")
    repo_id = hub.repo_id(stem="short")
    api.create_repo(repo_id)
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="f.txt", repo_id=repo_id).oid
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="f.txt", repo_id=repo_id)
    short = first[:7]
    path = hf_hub_download(repo_id, "f.txt", revision=short, token=hub.token("alice"), cache_dir=hf_cache)
    assert Path(path).read_bytes() == b"v1"
    assert api.repo_info(repo_id, revision=short).sha == first
    api.create_tag(repo_id, tag="v1", revision=short)
    api.create_branch(repo_id, branch="from-v1", revision=short)
    refs = api.list_repo_refs(repo_id)
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": first}
    assert {b.name: b.target_commit for b in refs.branches}["from-v1"] == first


def test_branch_and_tag_names_do_not_clash_and_errors_read_like_the_hub(hub):
    api = hub.api("alice")
    repo_id = hub.repo_id(stem="refs")
    api.create_repo(repo_id)
    api.create_tag(repo_id, tag="release")
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_branch(repo_id, branch="release")
    assert exc.value.response.status_code == 409 and "Reference already exists: refs/tags/release" in str(exc.value)
    api.create_branch(repo_id, branch="dev")
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_tag(repo_id, tag="dev")
    assert exc.value.response.status_code == 409
    with pytest.raises(HfHubHTTPError) as exc:
        api.delete_branch(repo_id, branch="main")
    assert exc.value.response.status_code == 403 and "Cannot delete the default branch" in str(exc.value)
    head = api.repo_info(repo_id).sha
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    with pytest.raises(HfHubHTTPError) as exc:
        api.upload_file(path_or_fileobj=b"y", path_in_repo="y.txt", repo_id=repo_id, parent_commit=head)
    assert exc.value.response.status_code == 412 and "A commit has happened since" in str(exc.value)


def test_deleting_a_folder_path_without_slash_deletes_the_folder(hub):
    api = hub.api("alice")
    repo_id = hub.repo_id(stem="folder")
    api.create_repo(repo_id)
    api.create_commit(
        repo_id,
        [CommitOperationAdd("ckpt/a.txt", b"a"), CommitOperationAdd("ckpt/sub/b.txt", b"b"),
         CommitOperationAdd("keep.txt", b"k")],
        commit_message="add",
    )
    api.create_commit(repo_id, [CommitOperationDelete("ckpt")], commit_message="drop the folder")
    assert sorted(api.list_repo_files(repo_id)) == [".gitattributes", "keep.txt"]
    with pytest.raises(EntryNotFoundError):  # deletedFolder on a file path matches no folder
        api.delete_folder("keep.txt", repo_id=repo_id)


def test_upload_folder_honours_the_repos_gitignore(hub, tmp_path):
    api = hub.api("alice")
    repo_id = hub.repo_id(stem="ignore")
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"*.log\nscratch/\n!keep.log\n", path_in_repo=".gitignore", repo_id=repo_id)
    for name, data in (("model.txt", "m"), ("train.log", "l"), ("keep.log", "k"), ("scratch/tmp.txt", "t")):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(data)
    api.upload_folder(folder_path=tmp_path, repo_id=repo_id)
    assert sorted(api.list_repo_files(repo_id)) == [".gitattributes", ".gitignore", "keep.log", "model.txt"]


def test_move_repo_and_case_insensitive_names(hub):
    api = hub.api("alice")
    repo_id = hub.repo_id(stem="Moving")
    api.create_repo(repo_id, private=True)
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo(repo_id.lower())
    assert exc.value.response.status_code == 409
    assert api.repo_info(repo_id.upper()).id == repo_id  # lookups ignore case and answer the stored spelling
    target = hub.repo_id(stem="moved")
    api.move_repo(repo_id, target)
    assert api.list_repo_files(target) == [".gitattributes", "x.txt"] and api.repo_info(target).private
    assert api.repo_exists(repo_id) is False
    with pytest.raises(HfHubHTTPError) as exc:
        api.move_repo(target, "bob/stolen")
    assert exc.value.response.status_code == 403


def test_auth_check(hub):
    api = hub.api("alice")
    repo_id = hub.repo_id(stem="authcheck")
    api.create_repo(repo_id, private=True)
    api.auth_check(repo_id)
    api.auth_check(repo_id, write=True)
    with pytest.raises(RepositoryNotFoundError):
        hub.api("bob").auth_check(repo_id)
    public = hub.repo_id(stem="authcheck-public")
    api.create_repo(public)
    hub.api("reader").auth_check(public)
    with pytest.raises(HfHubHTTPError) as exc:
        hub.api("reader").auth_check(public, write=True)
    assert exc.value.response.status_code == 403


def test_responses_carry_a_request_id(hub):
    info = hub.api("alice").whoami()
    assert info["name"] == "alice"
    r = requests.get(f"{hub.url}/api/models/alice/nope-404", headers={"X-Request-Id": "req-42"}, timeout=10)
    assert r.headers["X-Request-Id"] == "req-42"
    with pytest.raises(HfHubHTTPError) as exc:
        hub.api("alice").repo_info("alice/nope-404-either")
    assert exc.value.response.headers.get("X-Request-Id")


def test_validate_yaml_checks_license_and_model_index(hub):
    api = hub.api("alice")
    repo_id = hub.repo_id(stem="validate")
    api.create_repo(repo_id)
    good = (
        "---\nlicense: apache-2.0\nmodel-index:\n- name: m\n  results:\n  - task: {type: image-classification}\n"
        "    dataset: {type: blood, name: blood}\n    metrics:\n    - {type: accuracy, value: 0.9}\n---\n# ok\n"
    )
    api.upload_file(path_or_fileobj=good.encode(), path_in_repo="README.md", repo_id=repo_id)
    for bad, complaint in (
        ("---\nlicense: free-for-all\n---\n", "license"),
        ("---\nmodel-index:\n- name: m\n  results:\n  - task: {type: x}\n---\n", "metrics"),
        ("---\nmodel-index: {name: m}\n---\n", "model-index"),
    ):
        with pytest.raises(ValueError, match=complaint):
            api.upload_file(path_or_fileobj=bad.encode(), path_in_repo="README.md", repo_id=repo_id)
