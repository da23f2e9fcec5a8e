"""Jetstream event dicts for tests, in one place.

Times are given in seconds after `BASE_US` (a fixed moment in 2024, so a stream built from
them is never "caught up"); revs are small integers turned into real, sortable TIDs
(`rev_tid`), so the order of revs can be chosen independently of the order of times.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from datetime import UTC, datetime
from typing import Any, NamedTuple

Event = dict[str, Any]

CARD = "app.blento.card"
PAGE = "app.blento.page"
BASE_US = 1_725_000_000_000_000  # 2024-08-30T06:40:00Z
SECOND = 1_000_000

_TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"


def tid(time_us: int, clock_id: int = 0) -> str:
    """A TID: 53 bits of microseconds and 10 bits of clock id, base32-sortable, 13 characters."""
    value = (time_us << 10) | clock_id
    chars = []
    for _ in range(13):
        chars.append(_TID_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def rev_tid(n: int) -> str:
    """The n-th rev of a repository; rev_tid(a) < rev_tid(b) exactly when a < b."""
    return tid(BASE_US + n)


def at(t: float) -> int:
    """`time_us` of an event t seconds after BASE_US."""
    return BASE_US + round(t * SECOND)


def iso(t: float) -> str:
    """The `time` string of identity and account events, t seconds after BASE_US."""
    moment = datetime.fromtimestamp(at(t) / SECOND, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def did(name: str) -> str:
    """A did:plc named after `name`: the name's letters that base32 allows come first, so a
    failing test shows whose DID it is, then its hash, to the 24 characters the method needs."""
    readable = "".join(c for c in name.lower() if c in _TID_ALPHABET)[:12]
    digest = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode().lower()
    return "did:plc:" + (readable + digest)[:24]


def latest_us() -> int:
    """The newest time a frame may carry when decoded now (the reader's own rule)."""
    return time.time_ns() // 1000 + 600 * SECOND


def numbered_did(n: int) -> str:
    """The n-th resolvable did:plc (24 base32 characters); they sort as their numbers do."""
    chars = []
    for _ in range(24):
        chars.append(_TID_ALPHABET[n % 32])
        n //= 32
    return "did:plc:" + "".join(reversed(chars))


def uri(did_: str, rkey: str, collection: str = CARD) -> str:
    return f"at://{did_}/{collection}/{rkey}"


def record_body(collection: str, text: str) -> dict[str, Any]:
    return {"$type": collection, "text": text, "createdAt": "2024-08-30T06:40:00.000Z"}


def cid_of(record: dict[str, Any]) -> str:
    """A stand-in CID: different content, different CID."""
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return "bafyrei" + digest[:40]


def _write(
    operation: str, did_: str, rkey: str, rev_n: int, t: float, text: str, collection: str
) -> Event:
    record = record_body(collection, text)
    return {
        "did": did_,
        "time_us": at(t),
        "kind": "commit",
        "commit": {
            "rev": rev_tid(rev_n),
            "operation": operation,
            "collection": collection,
            "rkey": rkey,
            "record": record,
            "cid": cid_of(record),
        },
    }


def create(
    did_: str, rkey: str, *, rev: int, t: float, text: str = "hello", collection: str = CARD
) -> Event:
    return _write("create", did_, rkey, rev, t, text, collection)


def update(
    did_: str, rkey: str, *, rev: int, t: float, text: str = "edited", collection: str = CARD
) -> Event:
    return _write("update", did_, rkey, rev, t, text, collection)


def delete(did_: str, rkey: str, *, rev: int, t: float, collection: str = CARD) -> Event:
    return {
        "did": did_,
        "time_us": at(t),
        "kind": "commit",
        "commit": {
            "rev": rev_tid(rev),
            "operation": "delete",
            "collection": collection,
            "rkey": rkey,
        },
    }


def identity(did_: str, handle: str | None, *, t: float, seq: int | None = None) -> Event:
    info: dict[str, Any] = {"did": did_, "seq": _seq(t, seq), "time": iso(t)}
    if handle is not None:
        info["handle"] = handle
    return {"did": did_, "time_us": at(t), "kind": "identity", "identity": info}


def account(
    did_: str, *, active: bool, t: float, status: str | None = None, seq: int | None = None
) -> Event:
    info: dict[str, Any] = {"active": active, "did": did_, "seq": _seq(t, seq), "time": iso(t)}
    if status is not None:
        info["status"] = status
    return {"did": did_, "time_us": at(t), "kind": "account", "account": info}


def _seq(t: float, seq: int | None) -> int:
    return seq if seq is not None else 1_000 + round(t * 1_000)


def altered(event: Event, **changes: Any) -> Event:
    """A copy of a commit event with some fields changed, to break one rule at a time:
    `did` and `time_us` at the top, any other in its commit."""
    copy = json.loads(json.dumps(event))
    for key, value in changes.items():
        target = copy if key in ("did", "time_us") else copy["commit"]
        target[key] = value
    return copy


def with_record_text(event: Event, text: str) -> str:
    """The commit event as JSON, its record replaced by these exact characters (which JSON
    libraries would not write: deep nesting, `1e400`, a lone surrogate)."""
    return json.dumps(event).replace(json.dumps(event["commit"]["record"]), text)


# -- what the store should hold for those events -------------------------------------------


class RecordRow(NamedTuple):
    """A row of the `records` view, minus `indexed_at` (the time it was written)."""

    did: str
    collection: str
    rkey: str
    cid: str
    record: dict[str, Any]
    rev: str
    time_us: int


class TombstoneRow(NamedTuple):
    """A row of the `tombstones` view, minus `deleted_at`."""

    did: str
    collection: str
    rkey: str
    rev: str
    time_us: int


def event_uri(event: Event) -> str:
    commit = event["commit"]
    return uri(event["did"], commit["rkey"], commit["collection"])


def rows(*events: Event) -> dict[str, RecordRow]:
    """The `records` rows that these create/update events leave behind, by URI."""
    result: dict[str, RecordRow] = {}
    for event in events:
        commit = event["commit"]
        assert commit["operation"] in ("create", "update"), event
        result[event_uri(event)] = RecordRow(
            event["did"],
            commit["collection"],
            commit["rkey"],
            commit["cid"],
            commit["record"],
            commit["rev"],
            event["time_us"],
        )
    return result


def tombstones(*events: Event) -> dict[str, TombstoneRow]:
    """The `tombstones` rows that these delete events leave behind, by URI."""
    result: dict[str, TombstoneRow] = {}
    for event in events:
        commit = event["commit"]
        assert commit["operation"] == "delete", event
        result[event_uri(event)] = TombstoneRow(
            event["did"], commit["collection"], commit["rkey"], commit["rev"], event["time_us"]
        )
    return result
