"""decode_frame: every kind decodes; what breaks the protocol's rules is refused by reason,
never raised."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mirror_assets.atproto.events import (
    NETWORK_EPOCH_US,
    AccountEvent,
    BadFrame,
    CommitEvent,
    IdentityEvent,
    decode_frame,
)
from mirror_assets.atproto.refusals import Reason
from tests.support.events_factory import (
    CARD,
    SECOND,
    account,
    altered,
    at,
    create,
    delete,
    did,
    identity,
    iso,
    latest_us,
    rev_tid,
    update,
    with_record_text,
)

ALICE = did("alice")


def _decode(event: dict[str, Any]) -> object:
    return decode_frame(json.dumps(event), latest_us())


def _refused(event: dict[str, Any] | str) -> BadFrame:
    text = event if isinstance(event, str) else json.dumps(event)
    decoded = decode_frame(text, latest_us())
    assert isinstance(decoded, BadFrame), decoded
    return decoded


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


def test_the_record_is_kept_as_checked_json() -> None:
    """What is stored is what was checked: compact, one value per key, integral numbers as
    the integers they spell."""
    event = create(ALICE, "k", rev=1, t=1)
    text = with_record_text(
        event, '{"$type": "app.blento.card", "b": 1,  "a":"é", "n": 12.0, "b": 2}'
    )
    decoded = decode_frame(text, latest_us())
    assert isinstance(decoded, CommitEvent)
    assert (
        bytes(decoded.commit.record) == '{"$type":"app.blento.card","b":2,"a":"é","n":12}'.encode()
    )


def test_delete_decodes_without_record_or_cid() -> None:
    decoded = _decode(delete(ALICE, "3kcard", rev=3, t=2))
    assert isinstance(decoded, CommitEvent)
    assert decoded.commit.operation == "delete"
    assert decoded.commit.cid is None
    assert bytes(decoded.commit.record) == b""


def test_bytes_frames_decode_like_text() -> None:
    decoded = decode_frame(json.dumps(delete(ALICE, "k", rev=1, t=0)).encode(), latest_us())
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
    decoded = _refused({"did": ALICE, "time_us": at(1), "kind": "sync"})
    assert decoded.reason is Reason.UNKNOWN_KIND
    assert decoded.time_us == at(1)
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
        '{"did": "did:plc:alice", "time_us": 1725000000000000}',  # no kind
        '{"did": "did:plc:alice", "kind": "commit"}',  # no time_us
        '{"did": "did:plc:alice", "kind": "sync"}',  # unknown kind, no time either
        '{"kind": "commit", "time_us": "soon"}',  # time of the wrong type
        '{"kind": "commit", "time_us": ' + "9" * 5000 + "}",  # more digits than any clock
        b"\xff\xfe not utf-8",
    ],
)
def test_garbage_is_malformed_without_a_time(frame: str | bytes) -> None:
    decoded = decode_frame(frame, latest_us())
    assert isinstance(decoded, BadFrame)
    assert decoded.reason is Reason.MALFORMED
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
    decoded = _refused(event)
    assert decoded.reason is Reason.INVALID
    assert decoded.time_us == at(3)
    assert fragment in decoded.error


def test_unknown_operation_is_invalid() -> None:
    event = create(ALICE, "k", rev=1, t=3)
    event["commit"]["operation"] = "upsert"
    decoded = _refused(event)
    assert (decoded.reason, decoded.time_us) == (Reason.INVALID, at(3))


def test_mistyped_field_is_invalid() -> None:
    event = account(ALICE, active=True, t=3)
    event["account"]["active"] = "yes"
    decoded = _refused(event)
    assert (decoded.reason, decoded.time_us) == (Reason.INVALID, at(3))


@pytest.mark.parametrize("operation", ["create", "update"])
@pytest.mark.parametrize("missing", ["record", "cid"])
def test_write_without_record_or_cid_is_invalid(operation: str, missing: str) -> None:
    event = create(ALICE, "k", rev=1, t=8)
    event["commit"]["operation"] = operation
    del event["commit"][missing]
    decoded = _refused(event)
    assert (decoded.reason, decoded.time_us) == (Reason.INVALID, at(8))
    assert operation in decoded.error


@pytest.mark.parametrize("record", [None, "text", 17, [1, 2], True])
def test_write_whose_record_is_not_an_object_is_refused(record: object) -> None:
    event = create(ALICE, "k", rev=1, t=9)
    event["commit"]["record"] = record
    decoded = _refused(event)
    assert (decoded.reason, decoded.time_us) == (Reason.RECORD_NOT_OBJECT, at(9))


def test_write_with_null_cid_is_invalid() -> None:
    event = create(ALICE, "k", rev=1, t=9)
    event["commit"]["cid"] = None
    assert _refused(event).reason is Reason.INVALID


def test_delete_with_stray_record_still_decodes() -> None:
    event = delete(ALICE, "k", rev=1, t=9)
    event["commit"]["record"] = {"left": "over"}
    decoded = _decode(event)
    assert isinstance(decoded, CommitEvent)
    assert decoded.commit.operation == "delete"


# -- what a stranger can put in a frame, class by class ------------------------------------


def _commit_with(**changes: Any) -> dict[str, Any]:
    return altered(create(ALICE, "3kcard", rev=5, t=10), **changes)


@pytest.mark.parametrize(
    "value",
    [
        "did:key:zQ3shunBKsXixLxKtC5qeSG9E4J5RkGN57im31pcTzbNQnm5w",  # a method not supported
        "did:plc:tooshort",
        "did:plc:" + "a" * 2040,
        "did:plc:ewvi7nxzyoun6zhxrhs64oi0",  # 0 is not base32
        "did:web:example.com%3A8443",  # a port, outside localhost
        "did:web:127.0.0.1",  # an address, not a host name
        "did:web:example.com:user",  # a path
        "did:plc:EWVI7NXZYOUN6ZHXRHS64OIZ",
        "",
    ],
)
def test_a_frame_of_a_did_the_protocol_does_not_support_is_refused(value: str) -> None:
    decoded = _refused(_commit_with(did=value))
    assert (decoded.reason, decoded.time_us) == (Reason.INVALID_DID, at(10))


@pytest.mark.parametrize("kind", ["identity", "account"])
def test_an_event_about_another_did_than_its_own_is_refused(kind: str) -> None:
    event = identity(ALICE, None, t=3) if kind == "identity" else account(ALICE, active=True, t=3)
    event[kind]["did"] = did("bob")
    assert _refused(event).reason is Reason.INVALID_DID


@pytest.mark.parametrize(
    "value",
    [
        "app.blento.card\x00",
        "app.blento/../../etc",
        "app.blento..card",
        "app.blento.card\u202e",  # a bidi control
        "app.blento." + "c" * 400,
        "app.blento.card-v2",  # a hyphen in the name segment
        "app.blento",
        "app.blento.9card",
    ],
)
def test_a_commit_of_a_collection_that_is_not_an_nsid_is_refused(value: str) -> None:
    decoded = _refused(_commit_with(collection=value))
    assert (decoded.reason, decoded.time_us) == (Reason.INVALID_COLLECTION, at(10))


@pytest.mark.parametrize("value", ["", ".", "..", "a/b", "a b", "#x", "dHJ1ZQ==", "k" * 513])
def test_a_commit_of_a_record_key_that_is_not_one_is_refused(value: str) -> None:
    assert _refused(_commit_with(rkey=value)).reason is Reason.INVALID_RKEY


@pytest.mark.parametrize("value", ["r", "zzzzzzzzzzzzz", "3JZFCIJPJ2Z2A", "3jzfcijpj2z2aa", "~"])
def test_a_commit_whose_rev_is_not_a_tid_is_refused(value: str) -> None:
    """A rev sorts against every other version of the record: one that is not a TID (such as
    `zzzz...`) would win over every real update and delete for good."""
    assert _refused(_commit_with(rev=value)).reason is Reason.INVALID_REV


@pytest.mark.parametrize(
    "value", ["", "short", "QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR", "a b c d e f"]
)
def test_a_commit_whose_cid_is_not_one_is_refused(value: str) -> None:
    assert _refused(_commit_with(cid=value)).reason is Reason.INVALID_CID


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ('{"$type": "app.blento.card", "x": 1.5}', Reason.RECORD_FLOAT),
        ('{"$type": "app.blento.card", "x": 1e400}', Reason.RECORD_FLOAT),
        ('{"$type": "app.blento.card", "x": 9223372036854775808}', Reason.RECORD_INTEGER_RANGE),
        ('{"$type": "app.blento.card", "x": ' + "9" * 5000 + "}", Reason.RECORD_INTEGER_RANGE),
        ('{"$type": "app.blento.card", "x":' + "[" * 40 + "]" * 40 + "}", Reason.RECORD_TOO_DEEP),
        ('{"x": 1}', Reason.RECORD_BAD_TYPE),
        ('{"$type": "", "x": 1}', Reason.RECORD_BAD_TYPE),
        ('{"$type": "app.blento.card", "": 1}', Reason.RECORD_BAD_KEY),
        ('{"$type": "app.blento.card", "b": {"$bytes": [1, 2]}}', Reason.RECORD_BAD_BYTES),
        ('{"$type": "app.blento.card", "l": {"$link": "."}}', Reason.RECORD_BAD_LINK),
        ('{"$type": "app.blento.card", "i": {"$type": "blob", "size": 1}}', Reason.RECORD_BAD_BLOB),
        (
            '{"$type": "blob", "ref": {"$link": "bafkreibabalobzn6cd366ukcs"}}',
            Reason.RECORD_NOT_OBJECT,
        ),
    ],
)
def test_a_record_outside_the_data_model_is_refused(record: str, reason: Reason) -> None:
    event = _commit_with()
    text = with_record_text(event, record)
    decoded = _refused(text)
    assert (decoded.reason, decoded.time_us) == (reason, at(10))


def test_a_string_that_is_not_unicode_makes_the_frame_malformed() -> None:
    """A lone surrogate: DuckDB's JSON type refuses it, which once failed every ingest."""
    event = _commit_with()
    broken = '{"$type": "app.blento.card", "x": "\\ud800"}'
    decoded = _refused(with_record_text(event, broken))
    assert decoded.reason is Reason.MALFORMED


def test_a_record_over_two_mebibytes_is_refused() -> None:
    decoded = _refused(_commit_with(record={"$type": CARD, "text": "x" * (2 * 1024 * 1024)}))
    assert decoded.reason is Reason.RECORD_TOO_LARGE


def test_a_frame_nested_thousands_deep_is_refused_without_raising() -> None:
    """Today's frame that stopped ingest for good: too deep for any decoder to follow."""
    event = _commit_with()
    deep = '{"a":' * 5000 + "1" + "}" * 5000
    decoded = _refused(with_record_text(event, deep))
    assert decoded.reason is Reason.TOO_DEEP


@pytest.mark.parametrize(
    ("time_us", "why"),
    [
        (NETWORK_EPOCH_US - 1, "before the network"),
        (0, "before the network"),
        (-5, "before the network"),
        (10**30, "past any clock"),
        (2**63, "past int64"),
    ],
)
def test_a_time_outside_the_window_is_refused_and_carries_no_time(time_us: int, why: str) -> None:
    decoded = _refused(_commit_with(time_us=time_us))
    assert decoded.reason is Reason.TIME_OUT_OF_RANGE, why
    assert decoded.time_us is None  # the cursor must not move to it


def test_a_time_just_inside_the_clock_skew_is_believed() -> None:
    latest = latest_us()
    assert isinstance(decode_frame(json.dumps(_commit_with(time_us=latest)), latest), CommitEvent)
    refused = decode_frame(json.dumps(_commit_with(time_us=latest + 1)), latest)
    assert isinstance(refused, BadFrame)
    assert refused.reason is Reason.TIME_OUT_OF_RANGE


def test_a_sequence_number_past_64_bits_is_invalid_but_keeps_its_time() -> None:
    event = identity(ALICE, None, t=3, seq=2**64)
    decoded = _refused(event)
    assert (decoded.reason, decoded.time_us) == (Reason.INVALID, at(3))


def test_an_unknown_kind_from_the_future_carries_no_time() -> None:
    decoded = _refused({"kind": "sync", "time_us": latest_us() + 3600 * SECOND})
    assert (decoded.reason, decoded.time_us) == (Reason.TIME_OUT_OF_RANGE, None)
