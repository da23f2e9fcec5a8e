"""check_record: record values in the AT Protocol data model pass, re-encoded as checked; any
other is refused with the rule it breaks."""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pytest

from mirror_assets.atproto.data_model import MAX_DEPTH, MAX_RECORD_BYTES, check_record
from mirror_assets.atproto.refusals import Reason, RefusedError

LINK = "bafkreibabalobzn6cd366ukcsjycp4yymjymgfxcv6xczmlgpemzkz3cfa"
POST: dict[str, Any] = {
    "$type": "app.bsky.feed.post",
    "text": "hi @a.b",
    "facets": [
        {
            "index": {"byteStart": 3, "byteEnd": 7},
            "features": [{"$type": "app.bsky.richtext.facet#mention", "did": "did:plc:abc"}],
        }
    ],
    "embed": {
        "$type": "app.bsky.embed.images",
        "images": [
            {
                "alt": "",
                "image": {
                    "$type": "blob",
                    "ref": {"$link": LINK},
                    "mimeType": "image/jpeg",
                    "size": 12345,
                },
            }
        ],
    },
    "legacy": {"cid": LINK, "mimeType": "image/png"},
    "bytes": {"$bytes": "nFERjvLLiw9qm45JrqH9QTzyC2Lu1Xb4ne6+sBrCzI0"},
    "padded": {"$bytes": "aGk="},
    "nothing": None,
    "empty": {"list": [], "object": {}},
    "big": 9223372036854775807,
    "small": -9223372036854775808,
    "text \u0000 with nul": "and é, 💩",
    "createdAt": "2024-08-30T06:40:00.000Z",
}


def _refusal(value: Any) -> Reason:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    with pytest.raises(RefusedError) as refused:
        check_record(raw)
    return refused.value.reason


def test_a_record_in_the_data_model_passes_unchanged_in_meaning() -> None:
    checked = check_record(json.dumps(POST).encode())
    assert json.loads(checked) == POST
    # Both readers of the stored JSON take it: DuckDB's JSON type and the API's clients.
    stored = duckdb.connect().execute("SELECT ?::JSON", [checked.decode()]).fetchall()[0][0]
    assert json.loads(stored) == POST


def test_integral_floats_are_the_integers_they_spell_and_duplicates_keep_the_last() -> None:
    raw = b'{"$type":"a.b.c","n":12.0,"e":1e3,"z":-0.0,"d":1,"d":2}'
    assert check_record(raw) == b'{"$type":"a.b.c","n":12,"e":1000,"z":0,"d":2}'


def test_checking_is_idempotent() -> None:
    once = check_record(json.dumps(POST).encode())
    assert check_record(once) == once


def _nested(depth: int) -> dict[str, Any]:
    """A record whose containers are nested `depth` levels, the record itself the first."""
    value: dict[str, Any] = {}
    node = value
    for _ in range(depth - 1):
        node["x"] = {}
        node = node["x"]
    value["$type"] = "a.b.c"
    return value


def test_nesting_is_allowed_to_the_limit_and_no_deeper() -> None:
    check_record(json.dumps(_nested(MAX_DEPTH)).encode())
    assert _refusal(_nested(MAX_DEPTH + 1)) is Reason.RECORD_TOO_DEEP
    assert _refusal(b'{"$type":"a.b.c","x":' + b"[" * 3000 + b"]" * 3000 + b"}") is (
        Reason.RECORD_TOO_DEEP
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("blah", Reason.RECORD_NOT_OBJECT),
        ([{"$type": "a.b.c"}], Reason.RECORD_NOT_OBJECT),
        (
            {"$type": "blob", "ref": {"$link": LINK}, "mimeType": "a/b", "size": 1},
            Reason.RECORD_NOT_OBJECT,
        ),
        ({"$type": "a.b.c", "$link": LINK}, Reason.RECORD_NOT_OBJECT),
        ({"a": 1}, Reason.RECORD_BAD_TYPE),
        ({"$type": None}, Reason.RECORD_BAD_TYPE),
        ({"$type": 123}, Reason.RECORD_BAD_TYPE),
        ({"$type": ""}, Reason.RECORD_BAD_TYPE),
        ({"$type": "a.b.c", "x": {"$type": 7}}, Reason.RECORD_BAD_TYPE),
        ({"$type": "a.b.c", "a": 123.456}, Reason.RECORD_FLOAT),
        ({"$type": "a.b.c", "a": [0.5]}, Reason.RECORD_FLOAT),
        ({"$type": "a.b.c", "a": 2**63}, Reason.RECORD_INTEGER_RANGE),
        ({"$type": "a.b.c", "a": [-(2**63) - 1]}, Reason.RECORD_INTEGER_RANGE),
        ({"$type": "a.b.c", "": 1}, Reason.RECORD_BAD_KEY),
        ({"$type": "a.b.c", "k" * 8193: 1}, Reason.RECORD_TOO_LONG),
        ({"$type": "a.b.c", "a": list(range(128 * 1024 + 1))}, Reason.RECORD_TOO_LONG),
        (
            {
                "$type": "a.b.c",
                "blb": {
                    "$type": "blob",
                    "ref": {"$link": LINK},
                    "mimeType": "image/jpeg",
                    "size": "10000",
                },
            },
            Reason.RECORD_BAD_BLOB,
        ),
        (
            {"$type": "a.b.c", "blb": {"$type": "blob", "mimeType": "image/jpeg", "size": 10000}},
            Reason.RECORD_BAD_BLOB,
        ),
        (
            {
                "$type": "a.b.c",
                "blb": {"$type": "blob", "ref": {"$link": LINK}, "mimeType": "", "size": 1},
            },
            Reason.RECORD_BAD_BLOB,
        ),
        (
            {
                "$type": "a.b.c",
                "blb": {"$type": "blob", "ref": {"$link": "."}, "mimeType": "a/b", "size": 1},
            },
            Reason.RECORD_BAD_LINK,
        ),
        ({"$type": "a.b.c", "lnk": {"$bytes": [1, 2, 3]}}, Reason.RECORD_BAD_BYTES),
        (
            {
                "$type": "a.b.c",
                "lnk": {"$bytes": "nFERjvLLiw9qm45JrqH9QTzyC2Lu1Xb4ne6+sBrCzI0", "other": "blah"},
            },
            Reason.RECORD_BAD_BYTES,
        ),
        ({"$type": "a.b.c", "lnk": {"$bytes": "a===="}}, Reason.RECORD_BAD_BYTES),
        ({"$type": "a.b.c", "lnk": {"$bytes": "abcde"}}, Reason.RECORD_BAD_BYTES),
        ({"$type": "a.b.c", "lnk": {"$bytes": "ab-_"}}, Reason.RECORD_BAD_BYTES),
        ({"$type": "a.b.c", "lnk": {"$link": 1234}}, Reason.RECORD_BAD_LINK),
        ({"$type": "a.b.c", "lnk": {"$link": "."}}, Reason.RECORD_BAD_LINK),
        ({"$type": "a.b.c", "lnk": {"$link": LINK, "other": "blah"}}, Reason.RECORD_BAD_LINK),
    ],
)
def test_values_outside_the_data_model_are_refused(value: Any, reason: Reason) -> None:
    assert _refusal(value) is reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"$type":"a.b.c","x":1e400}', Reason.RECORD_FLOAT),
        (b'{"$type":"a.b.c","x":-1e400}', Reason.RECORD_FLOAT),
        (b'{"$type":"a.b.c","x":' + b"9" * 5000 + b"}", Reason.RECORD_INTEGER_RANGE),
        (b'{"$type":"a.b.c","x":"\\ud800"}', Reason.RECORD_NOT_JSON),
        (b'{"$type":"a.b.c","x":"\x01"}', Reason.RECORD_NOT_JSON),
        (b'{"$type":"a.b.c","x":NaN}', Reason.RECORD_NOT_JSON),
        (b'{"$type":"a.b.c",}', Reason.RECORD_NOT_JSON),
        (b"", Reason.RECORD_NOT_JSON),
        (b"\xff\xfe", Reason.RECORD_NOT_JSON),
    ],
)
def test_json_no_machine_or_database_reads_the_same_is_refused(raw: bytes, reason: Reason) -> None:
    assert _refusal(raw) is reason


def test_a_record_over_the_size_limit_is_refused_before_it_is_read() -> None:
    raw = b'{"$type":"a.b.c","t":"' + b"x" * MAX_RECORD_BYTES + b'"}'
    assert _refusal(raw) is Reason.RECORD_TOO_LARGE
