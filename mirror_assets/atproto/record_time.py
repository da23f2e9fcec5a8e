"""When a backfilled record was made: from its TID rkey, else its `createdAt`, else now.

A TID is 13 characters of a base32-sortable alphabet: one zero bit, 53 bits of
microseconds since the Unix epoch, then 10 bits of clock id (docs/architecture.md, invariant 5).
Every backfilled record goes through here, so the common case (a TID rkey) stays in C:
a regular expression checks it and `int(..., 32)` decodes it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import msgspec

TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
# The first character carries the zero bit and four time bits: only the first half fits.
_TID = re.compile(r"[234567a-j][234567a-z]{12}")
_TO_BASE32_DIGITS = str.maketrans(TID_ALPHABET, "0123456789abcdefghijklmnopqrstuv")


class _CreatedAt(msgspec.Struct):
    createdAt: object = None  # noqa: N815 (the lexicon's field name; any JSON value)


def tid_time_us(rkey: str) -> int | None:
    """Microseconds since the epoch encoded in a TID, or None if `rkey` is not a TID."""
    if _TID.fullmatch(rkey) is None:
        return None
    return int(rkey.translate(_TO_BASE32_DIGITS), 32) >> 10


def created_at_us(created_at: object) -> int | None:
    """A record's `createdAt` as microseconds since the epoch, if it is a datetime string."""
    if not isinstance(created_at, str):
        return None
    try:
        moment = datetime.fromisoformat(created_at)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


def record_time_us(rkey: str, record: bytes, fetched_us: int) -> int:
    """The real time of a record (its JSON `record`), fetched at `fetched_us`: never "now"
    for all of them. A time after the fetch cannot be real."""
    tid_us = tid_time_us(rkey)
    if tid_us is not None and 0 < tid_us <= fetched_us:
        return tid_us
    created_us = created_at_us(msgspec.json.decode(record, type=_CreatedAt).createdAt)
    if created_us is not None and 0 < created_us <= fetched_us:
        return created_us
    return fetched_us
