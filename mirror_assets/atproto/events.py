"""Jetstream events as typed structs, and a decoder that refuses bad frames instead of failing.

Frame shapes (Jetstream's JSON): every event has `did`, `time_us` and `kind`; `commit`
events carry `commit.{rev, operation, collection, rkey, record, cid}`, `identity` events
`identity.{did, handle, seq, time}`, `account` events `account.{active, did, seq, time,
status}`.

Every frame is checked at this door by the AT Protocol's own rules (docs/validation.md):
the DID is a did:plc or did:web, the collection an NSID, the record key and rev valid, the
CID a CID, the record in the data model (`data_model.py`), and `time_us` inside a sane
window. What breaks a rule comes back as a `BadFrame` with its reason; nothing a frame holds
makes the decoder raise.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from mirror_assets.atproto.data_model import check_record
from mirror_assets.atproto.refusals import Reason, RefusedError
from mirror_assets.atproto.syntax import is_cid, is_did, is_nsid, is_record_key, is_tid

# No genuine frame is older than the network (2023-01-01T00:00:00Z is before its first
# public server); the newest allowed is the caller's clock plus a skew (INGEST_CLOCK_SKEW).
NETWORK_EPOCH_US = 1_672_531_200_000_000
# Integers a frame carries must fit in 64 bits: larger ones are refused while decoding.
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


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
    time_us: Int64
    commit: CommitOp


class IdentityInfo(msgspec.Struct, frozen=True):
    did: str
    seq: Int64
    time: str
    handle: str | None = None


class IdentityEvent(msgspec.Struct, frozen=True, tag="identity", tag_field="kind"):
    did: str
    time_us: Int64
    identity: IdentityInfo


class AccountInfo(msgspec.Struct, frozen=True):
    active: bool
    did: str
    seq: Int64
    time: str
    status: str | None = None


class AccountEvent(msgspec.Struct, frozen=True, tag="account", tag_field="kind"):
    did: str
    time_us: Int64
    account: AccountInfo


Event = CommitEvent | IdentityEvent | AccountEvent


class CursorGap(msgspec.Struct, frozen=True):
    """The stream's first event came far later than the cursor asked for: events were lost."""

    endpoint: str
    cursor_us: int
    first_event_us: int


class _Envelope(msgspec.Struct):
    kind: str
    time_us: int  # any size: the window check says whether to believe it


class BadFrame(msgspec.Struct, frozen=True):
    """A frame that was refused: why, its time if it had a believable one, and the error."""

    reason: Reason
    error: str
    time_us: int | None = None


_event_decoder = msgspec.json.Decoder(Event)
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_KNOWN_KINDS = frozenset({"commit", "identity", "account"})


def decode_frame(frame: bytes | str, latest_us: int) -> Event | BadFrame:
    """Decode and check one Jetstream frame; `latest_us` is the newest believable time.

    Never raises on bad input. A refused frame keeps its time when that time is believable,
    so the cursor may still move past it.
    """
    try:
        event: Event = _event_decoder.decode(frame)
    except RecursionError:
        return BadFrame(Reason.TOO_DEEP, "nested past the decoder's limit")
    except msgspec.DecodeError as error:
        return _classify(frame, error, latest_us)
    if not NETWORK_EPOCH_US <= event.time_us <= latest_us:
        return BadFrame(Reason.TIME_OUT_OF_RANGE, _time_error(event.time_us, latest_us))
    try:
        return _checked(event)
    except RefusedError as refused:
        return BadFrame(refused.reason, refused.detail, event.time_us)


def _checked(event: Event) -> Event:
    """The event with its record as checked JSON, or `RefusedError`."""
    if not is_did(event.did):
        raise RefusedError(Reason.INVALID_DID, f"{event.did[:100]!r} is not a did:plc or did:web")
    if isinstance(event, CommitEvent):
        return _checked_commit(event)
    inner = event.identity.did if isinstance(event, IdentityEvent) else event.account.did
    if inner != event.did:
        raise RefusedError(Reason.INVALID_DID, f"an event of {event.did} about {inner[:100]!r}")
    return event


def _checked_commit(event: CommitEvent) -> CommitEvent:
    op = event.commit
    if not is_nsid(op.collection):
        raise RefusedError(Reason.INVALID_COLLECTION, f"{op.collection[:100]!r} is not an NSID")
    if not is_record_key(op.rkey):
        raise RefusedError(Reason.INVALID_RKEY, f"{op.rkey[:100]!r} is not a record key")
    if not is_tid(op.rev):
        raise RefusedError(Reason.INVALID_REV, f"rev {op.rev[:100]!r} is not a TID")
    if op.operation == "delete":
        return event
    record = bytes(op.record)
    if op.cid is None or not record:
        raise RefusedError(Reason.INVALID, f"{op.operation} without a record and a cid")
    if not is_cid(op.cid):
        raise RefusedError(Reason.INVALID_CID, f"{op.cid[:100]!r} is not a CID")
    checked = msgspec.Raw(check_record(record))
    return msgspec.structs.replace(event, commit=msgspec.structs.replace(op, record=checked))


def _classify(frame: bytes | str, error: msgspec.DecodeError, latest_us: int) -> BadFrame:
    """Tell a frame of an unknown kind (a real event: its time still counts) from garbage."""
    try:
        envelope = _envelope_decoder.decode(frame)
    except RecursionError:
        return BadFrame(Reason.TOO_DEEP, "nested past the decoder's limit")
    except msgspec.DecodeError as envelope_error:
        return BadFrame(Reason.MALFORMED, str(envelope_error))
    time_us = envelope.time_us
    if not NETWORK_EPOCH_US <= time_us <= latest_us:
        return BadFrame(Reason.TIME_OUT_OF_RANGE, _time_error(time_us, latest_us))
    if envelope.kind not in _KNOWN_KINDS:
        return BadFrame(Reason.UNKNOWN_KIND, f"kind {envelope.kind[:100]!r}", time_us)
    return BadFrame(Reason.INVALID, str(error), time_us)


def _time_error(time_us: int, latest_us: int) -> str:
    if time_us < NETWORK_EPOCH_US:
        return f"time_us {time_us} is before the network existed"
    return f"time_us {time_us} is later than the clock allows ({latest_us})"
