"""A Jetstream cursor (microseconds since the epoch) as people read it: a date and a lag."""

from __future__ import annotations

from datetime import UTC, datetime


def cursor_iso(time_us: int | None) -> str | None:
    """ISO 8601 in UTC, or None when there is no cursor yet."""
    if time_us is None:
        return None
    return datetime.fromtimestamp(time_us / 1e6, tz=UTC).isoformat()


def cursor_lag_seconds(time_us: int | None, now: float) -> float | None:
    """How far the cursor trails `now` (a Unix time), never negative."""
    if time_us is None:
        return None
    return max(0.0, now - time_us / 1e6)
