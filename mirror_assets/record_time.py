"""When a backfilled record was made: from its TID rkey, else its `createdAt`, else now.

A TID is 13 characters of a base32-sortable alphabet: one zero bit, 53 bits of
microseconds since the Unix epoch, then 10 bits of clock id (DESIGN section 4, invariant 5).
"""

from __future__ import annotations

from datetime import UTC, datetime

TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
_TID_VALUES = {char: value for value, char in enumerate(TID_ALPHABET)}
_TID_LENGTH = 13
# The first character carries the zero bit and four time bits: only the first half fits.
_TID_FIRST = TID_ALPHABET[:16]


def tid_time_us(rkey: str) -> int | None:
    """Microseconds since the epoch encoded in a TID, or None if `rkey` is not a TID."""
    if len(rkey) != _TID_LENGTH or rkey[0] not in _TID_FIRST:
        return None
    value = 0
    for char in rkey:
        digit = _TID_VALUES.get(char)
        if digit is None:
            return None
        value = (value << 5) | digit
    return value >> 10


def created_at_us(created_at: str | None) -> int | None:
    """A record's `createdAt` as microseconds since the epoch, if it is a valid datetime."""
    if created_at is None:
        return None
    try:
        moment = datetime.fromisoformat(created_at)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


def record_time_us(rkey: str, created_at: str | None, first_seen_us: int) -> int:
    """The record's real time (DESIGN section 4, invariant 5): never "now" for all of them.

    A time after `first_seen_us` (when the mirror fetched the record) cannot be real.
    """
    for candidate in (tid_time_us(rkey), created_at_us(created_at)):
        if candidate is not None and 0 < candidate <= first_seen_us:
            return candidate
    return first_seen_us
