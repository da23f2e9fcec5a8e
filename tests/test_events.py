"""decode_frame: every kind decodes; bad frames are sorted out, never raised."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mirror_assets.events import (
    AccountEvent,
    BadFrame,
    CommitEvent,
    IdentityEvent,
    Skip,
    decode_frame,
)
from tests.events_factory import (
    CARD,
    account,
    at,
    create,
    delete,
    did,
    identity,
    iso,
    rev_tid,
    update,
)

ALICE = did("alice")


def _decode(event: dict[str, Any]) -> object:
    return decode_frame(json.dumps(event))


@pytest.mark.parametrize("make", [create, update])
def test_create_and_update_decode_with_record_and_cid(make: Any) -> None:
    event = make(ALICE, "3kcard", rev=7, t=1.5, text="hi")
    decoded = _decode(event)
    assert isinstance(decoded, CommitEvent)
    assert decoded.did == ALICE
    assert decoded.time_us == at(1.5)
    op = decoded.commit
    assert (op.operation, op.collection, op.rkey, op.rev) == (
        event["commit"]["operation"],
        CARD,
        "3kcard",
        rev_tid(7),
    )
    assert op.cid == event["commit"]["cid"]
    assert json.loads(bytes(op.record)) == event["commit"]["record"]


def test_record_bytes_are_kept_verbatim() -> None:
    text = (
        '{"did":"did:plc:alice","time_us":5,"kind":"commit","commit":{"rev":"r","operation":'
        '"create","collection":"app.blento.card","rkey":"k","record":{"b": 1,  "a":"é"},'
        '"cid":"c"}}'
    )
    decoded = decode_frame(text)
    assert isinstance(decoded, CommitEvent)
    assert bytes(decoded.commit.record) == '{"b": 1,  "a":"é"}'.encode()


def test_delete_decodes_without_record_or_cid() -> None:
    decoded = _decode(delete(ALICE, "3kcard", rev=3, t=2))
    assert isinstance(decoded, CommitEvent)
    assert decoded.commit.operation == "delete"
    assert decoded.commit.cid is None
    assert bytes(decoded.commit.record) == b""


def test_bytes_frames_decode_like_text() -> None:
    decoded = decode_frame(json.dumps(delete(ALICE, "k", rev=1, t=0)).encode())
    assert isinstance(decoded, CommitEvent)


def test_identity_decodes_with_and_without_handle() -> None:
    decoded = _decode(identity(ALICE, "alice.test", t=4, seq=99))
    assert isinstance(decoded, IdentityEvent)
    assert (decoded.did, decoded.time_us) == (ALICE, at(4))
    assert (decoded.identity.did, decoded.identity.handle, decoded.identity.seq) == (
        ALICE,
        "alice.test",
        99,
    )
    assert decoded.identity.time == iso(4)
    bare = _decode(identity(ALICE, None, t=5))
    assert isinstance(bare, IdentityEvent)
    assert bare.identity.handle is None


@pytest.mark.parametrize(
    "status",
    [None, "takendown", "suspended", "deleted", "deactivated", "desynchronized", "throttled"],
)
def test_account_decodes_every_status(status: str | None) -> None:
    decoded = _decode(account(ALICE, active=status is None, status=status, t=6, seq=12))
    assert isinstance(decoded, AccountEvent)
    assert decoded.time_us == at(6)
    assert (decoded.account.active, decoded.account.status, decoded.account.seq) == (
        status is None,
        status,
        12,
    )


def test_unknown_fields_are_ignored() -> None:
    event = create(ALICE, "k", rev=1, t=0)
    event["extra"] = {"anything": [1, 2]}
    event["commit"]["future_field"] = True
    assert isinstance(_decode(event), CommitEvent)


def test_unknown_kind_keeps_its_time() -> None:
    decoded = decode_frame(json.dumps({"did": ALICE, "time_us": 123, "kind": "sync"}))
    assert isinstance(decoded, BadFrame)
    assert decoded.reason is Skip.UNKNOWN_KIND
    assert decoded.time_us == 123
    assert "sync" in decoded.error


@pytest.mark.parametrize(
    "frame",
    [
        "not json at all",
        "",
        "{",
        "[]",
        "42",
        "null",
        '{"did": "did:plc:alice", "time_us": 5}',  # no kind
        '{"did": "did:plc:alice", "kind": "commit"}',  # no time_us
        '{"did": "did:plc:alice", "kind": "sync"}',  # unknown kind, no time either
        '{"kind": "commit", "time_us": "soon"}',  # time of the wrong type
        b"\xff\xfe not utf-8",
    ],
)
def test_garbage_is_malformed_without_a_time(frame: str | bytes) -> None:
    decoded = decode_frame(frame)
    assert isinstance(decoded, BadFrame)
    assert decoded.reason is Skip.MALFORMED
    assert decoded.time_us is None
    assert decoded.error


def _without(event: dict[str, Any], *path: str) -> dict[str, Any]:
    target = event
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return event


@pytest.mark.parametrize(
    ("event", "fragment"),
    [
        (_without(create(ALICE, "k", rev=1, t=3), "did"), "did"),
        (_without(create(ALICE, "k", rev=1, t=3), "commit"), "commit"),
        (_without(create(ALICE, "k", rev=1, t=3), "commit", "rev"), "rev"),
        (_without(create(ALICE, "k", rev=1, t=3), "commit", "rkey"), "rkey"),
        (_without(create(ALICE, "k", rev=1, t=3), "commit", "collection"), "collection"),
        (_without(delete(ALICE, "k", rev=1, t=3), "commit", "operation"), "operation"),
        (_without(identity(ALICE, "a.test", t=3), "identity", "seq"), "seq"),
        (_without(identity(ALICE, "a.test", t=3), "identity"), "identity"),
        (_without(account(ALICE, active=True, t=3), "account", "active"), "active"),
        (_without(account(ALICE, active=True, t=3), "account", "time"), "time"),
    ],
)
def test_known_kind_with_missing_field_is_invalid_and_keeps_time(
    event: dict[str, Any], fragment: str
) -> None:
    decoded = _decode(event)
    assert isinstance(decoded, BadFrame)
    assert decoded.reason is Skip.INVALID
    assert decoded.time_us == at(3)
    assert fragment in decoded.error


def test_unknown_operation_is_invalid() -> None:
    event = create(ALICE, "k", rev=1, t=3)
    event["commit"]["operation"] = "upsert"
    decoded = _decode(event)
    assert isinstance(decoded, BadFrame)
    assert (decoded.reason, decoded.time_us) == (Skip.INVALID, at(3))


def test_mistyped_field_is_invalid() -> None:
    event = account(ALICE, active=True, t=3)
    event["account"]["active"] = "yes"
    decoded = _decode(event)
    assert isinstance(decoded, BadFrame)
    assert (decoded.reason, decoded.time_us) == (Skip.INVALID, at(3))


@pytest.mark.parametrize("operation", ["create", "update"])
@pytest.mark.parametrize("missing", ["record", "cid"])
def test_write_without_record_or_cid_is_invalid(operation: str, missing: str) -> None:
    event = create(ALICE, "k", rev=1, t=8)
    event["commit"]["operation"] = operation
    del event["commit"][missing]
    decoded = _decode(event)
    assert isinstance(decoded, BadFrame)
    assert (decoded.reason, decoded.time_us) == (Skip.INVALID, at(8))
    assert operation in decoded.error


@pytest.mark.parametrize("record", [None, "text", 17, [1, 2], True])
def test_write_whose_record_is_not_an_object_is_invalid(record: object) -> None:
    event = create(ALICE, "k", rev=1, t=9)
    event["commit"]["record"] = record
    decoded = _decode(event)
    assert isinstance(decoded, BadFrame)
    assert (decoded.reason, decoded.time_us) == (Skip.INVALID, at(9))


def test_write_with_null_cid_is_invalid() -> None:
    event = create(ALICE, "k", rev=1, t=9)
    event["commit"]["cid"] = None
    decoded = _decode(event)
    assert isinstance(decoded, BadFrame)
    assert decoded.reason is Skip.INVALID


def test_delete_with_stray_record_still_decodes() -> None:
    event = delete(ALICE, "k", rev=1, t=9)
    event["commit"]["record"] = {"left": "over"}
    decoded = _decode(event)
    assert isinstance(decoded, CommitEvent)
    assert decoded.commit.operation == "delete"
