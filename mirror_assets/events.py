"""Jetstream events as typed structs, and a decoder that sorts out bad frames instead of failing.

Frame shapes (Jetstream's JSON): every event has `did`, `time_us` and `kind`; `commit`
events carry `commit.{rev, operation, collection, rkey, record, cid}`, `identity` events
`identity.{did, handle, seq, time}`, `account` events `account.{active, did, seq, time,
status}`. The record is kept as raw JSON bytes: the mirror stores it, it never reads it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

import msgspec


class CommitOp(msgspec.Struct, frozen=True):
    rev: str
    operation: Literal["create", "update", "delete"]
    collection: str
    rkey: str
    # Raw cannot sit in a union with None: an absent record is empty bytes.
    record: msgspec.Raw = msgspec.Raw(b"")
    cid: str | None = None


class CommitEvent(msgspec.Struct, frozen=True, tag="commit", tag_field="kind"):
    did: str
    time_us: int
    commit: CommitOp


class IdentityInfo(msgspec.Struct, frozen=True):
    did: str
    seq: int
    time: str
    handle: str | None = None


class IdentityEvent(msgspec.Struct, frozen=True, tag="identity", tag_field="kind"):
    did: str
    time_us: int
    identity: IdentityInfo


class AccountInfo(msgspec.Struct, frozen=True):
    active: bool
    did: str
    seq: int
    time: str
    status: str | None = None


class AccountEvent(msgspec.Struct, frozen=True, tag="account", tag_field="kind"):
    did: str
    time_us: int
    account: AccountInfo


Event = CommitEvent | IdentityEvent | AccountEvent


class Skip(StrEnum):
    """Why a frame was not applied; the counts end up in each run's metadata."""

    MALFORMED = "malformed"  # not JSON, or no kind/time_us
    UNKNOWN_KIND = "unknown_kind"  # a kind this mirror does not know
    INVALID = "invalid"  # a known kind with missing or mistyped fields
    UNTRACKED = "untracked_collection"  # a commit for a collection not tracked


class _Envelope(msgspec.Struct):
    kind: str
    time_us: int


class BadFrame(msgspec.Struct, frozen=True):
    """A frame that could not be decoded: why, its time if it had one, and the error."""

    reason: Skip
    error: str
    time_us: int | None = None


_event_decoder = msgspec.json.Decoder(Event)
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_KNOWN_KINDS = frozenset({"commit", "identity", "account"})


def decode_frame(frame: bytes | str) -> Event | BadFrame:
    """Decode one Jetstream frame; never raises on bad input."""
    try:
        event: Event = _event_decoder.decode(frame)
    except msgspec.DecodeError as error:
        return _classify(frame, error)
    if isinstance(event, CommitEvent) and not _commit_is_complete(event.commit):
        return BadFrame(
            Skip.INVALID,
            f"{event.commit.operation} without a record object and a cid",
            event.time_us,
        )
    return event


def _commit_is_complete(op: CommitOp) -> bool:
    if op.operation == "delete":
        return True
    return op.cid is not None and bytes(op.record)[:1] == b"{"


def _classify(frame: bytes | str, error: msgspec.DecodeError) -> BadFrame:
    """Tell a frame of an unknown kind (a real event: its time still counts) from garbage."""
    try:
        envelope = _envelope_decoder.decode(frame)
    except msgspec.DecodeError as envelope_error:
        return BadFrame(Skip.MALFORMED, str(envelope_error))
    if envelope.kind not in _KNOWN_KINDS:
        return BadFrame(Skip.UNKNOWN_KIND, f"kind {envelope.kind!r}", envelope.time_us)
    return BadFrame(Skip.INVALID, str(error), envelope.time_us)
