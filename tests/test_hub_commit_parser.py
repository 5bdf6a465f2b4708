"""The NDJSON commit parser on its own: no server, no storage."""

from __future__ import annotations

import base64
import json

import pytest

from federated_factory.hub._storage import StorageError
from federated_factory.hub.commit_parser import iter_commit, parse_commit, parse_header


def _lines(*items) -> list[bytes]:
    return [json.dumps(item).encode() + b"\n" if isinstance(item, dict) else item for item in items]


HEADER = {"key": "header", "value": {"summary": "add files\nsecond line", "description": "d"}}


def test_parses_every_operation_kind_in_order():
    header, ops = parse_commit(
        _lines(
            HEADER,
            b"\n",
            {"key": "file", "value": {"path": "a/b.txt", "encoding": "base64", "content": base64.b64encode(b"hi").decode()}},
            {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "a" * 64, "size": 5}},
            {"key": "deletedFile", "value": {"path": "old.txt"}},
            {"key": "deletedFolder", "value": {"path": "ckpt/"}},
        )
    )
    assert parse_header(header) == ("add files", "d", None)
    assert ops == [
        ("file", "a/b.txt", b"hi"),
        ("lfsFile", "w.bin", "a" * 64, 5),
        ("deletedFile", "old.txt"),
        ("deletedFolder", "ckpt"),
    ]


def test_operations_are_yielded_one_at_a_time():
    items = iter_commit(_lines(HEADER, {"key": "deletedFile", "value": {"path": "x"}}, b"not json\n"))
    assert next(items)[0] == "header"
    assert next(items) == ("deletedFile", "x")
    with pytest.raises(StorageError):
        next(items)


@pytest.mark.parametrize(
    "lines, status",
    [
        ([], 400),
        ([b"not json\n"], 400),
        ([{"key": "deletedFile", "value": {"path": "x"}}], 400),  # no header first
        ([HEADER, HEADER], 400),
        ([HEADER, {"key": "teleport", "value": {}}], 400),
        ([HEADER, {"key": "file", "value": {"path": "a", "content": "!!"}}], 400),
        ([HEADER, {"key": "file", "value": {"path": "../a", "content": ""}}], 400),
        ([HEADER, {"key": "lfsFile", "value": {"path": "w", "oid": "XYZ", "size": 1}}], 400),
        ([HEADER, {"key": "lfsFile", "value": {"path": "w", "oid": "a" * 64, "size": -1}}], 400),
        ([HEADER, b"[" * 100_000 + b"]" * 100_000 + b"\n"], 400),
        ([HEADER, b"x" * (16 * 1024 * 1024 + 2)], 413),
    ],
)
def test_refuses_malformed_payloads(lines, status):
    with pytest.raises(StorageError) as exc:
        parse_commit(_lines(*lines))
    assert exc.value.status == status


def test_header_checks():
    with pytest.raises(StorageError):
        parse_header({"summary": " "})
    with pytest.raises(StorageError):
        parse_header({"summary": "s", "parentCommit": "abc"})
    assert parse_header({"summary": "s", "parentCommit": "0" * 40}) == ("s", "", "0" * 40)
