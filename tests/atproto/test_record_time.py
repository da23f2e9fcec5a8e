"""Record times of backfilled records: from the TID rkey, else `createdAt`, else first seen."""

from __future__ import annotations

import json

import pytest

from mirror_assets.atproto.record_time import created_at_us, record_time_us, tid_time_us
from tests.support.events_factory import BASE_US, SECOND, tid

LATER = BASE_US + 3600 * SECOND  # when the mirror fetched the record


@pytest.mark.parametrize("time_us", [0, 1, BASE_US, BASE_US + 123_456, 2**53 - 1])
@pytest.mark.parametrize("clock_id", [0, 1, 1023])
def test_a_tid_gives_back_its_microseconds(time_us: int, clock_id: int) -> None:
    assert tid_time_us(tid(time_us, clock_id)) == time_us


@pytest.mark.parametrize(
    "rkey",
    [
        "self",  # a literal key
        "3l2ynx3cg252",  # 12 characters
        "3l2ynx3cg25222",  # 14 characters
        "3l2ynx3cg2520",  # 0 is not in the alphabet
        "3L2YNX3CG2522",  # upper case is not either
        "kl2ynx3cg2522",  # the first character would set the top bit
    ],
)
def test_keys_that_are_not_tids_have_no_time(rkey: str) -> None:
    assert tid_time_us(rkey) is None


def test_tids_sort_like_their_times() -> None:
    times = [BASE_US + n for n in (5, 1, 1_000_000, 0, 77)]
    assert sorted(tid(t) for t in times) == [tid(t) for t in sorted(times)]


@pytest.mark.parametrize(
    ("created_at", "expected"),
    [
        ("2024-08-30T06:40:00.000Z", BASE_US),
        ("2024-08-30T06:40:00.5Z", BASE_US + SECOND // 2),
        ("2024-08-30T08:40:00+02:00", BASE_US),
        ("2024-08-30T06:40:00", BASE_US),  # no zone: read as UTC
        ("yesterday", None),
        ("", None),
        (None, None),
        (1725000000, None),  # a number is not a datetime string
    ],
)
def test_created_at_is_read_when_it_is_a_datetime(created_at: object, expected: int | None) -> None:
    assert created_at_us(created_at) == expected


def created(at: str | None) -> bytes:
    """A record's JSON with that `createdAt` (none if None)."""
    return b"{}" if at is None else json.dumps({"text": "x", "createdAt": at}).encode()


def test_the_rkey_wins_then_created_at_then_the_fetch() -> None:
    rkey = tid(BASE_US + 42)
    assert record_time_us(rkey, created("2020-01-01T00:00:00Z"), LATER) == BASE_US + 42
    assert record_time_us("self", created("2024-08-30T06:40:00Z"), LATER) == BASE_US
    assert record_time_us("self", created(None), LATER) == LATER
    assert record_time_us("self", created("not a date"), LATER) == LATER
    assert record_time_us("self", b'{"createdAt": 1725000000}', LATER) == LATER


def test_a_time_after_the_fetch_cannot_be_real() -> None:
    future = LATER + SECOND
    assert record_time_us(tid(future), created("2024-08-30T06:40:00Z"), LATER) == BASE_US
    assert record_time_us(tid(future), created("2099-01-01T00:00:00Z"), LATER) == LATER
    assert record_time_us(tid(0), created(None), LATER) == LATER  # a zero TID says nothing
