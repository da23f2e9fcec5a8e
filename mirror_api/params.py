"""Query parameters of the contract (DESIGN section 8): `limit`, opaque `cursor`s, and the
tracked-collection check, each failing with the original Worker's exact error."""

from __future__ import annotations

import base64
import binascii
import re

from litestar.exceptions import HTTPException, NotFoundException

from mirror_assets.nsids import CollectionFilter

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
_DIGITS = re.compile(r"[0-9]{1,100}")


class CollectionNotTrackedError(NotFoundException):
    """A 404 with the contract's own message, not "Not found"."""


def require_tracked(collection: str, collections: CollectionFilter) -> None:
    if not collections.matches(collection):
        raise CollectionNotTrackedError(detail="Collection not tracked")


def parse_limit(raw: str | None) -> int:
    """A positive integer, clamped to MAX_LIMIT; anything else is a 400."""
    if raw is None:
        return DEFAULT_LIMIT
    if _DIGITS.fullmatch(raw) is None or int(raw) == 0:
        raise HTTPException(status_code=400, detail="Invalid limit parameter")
    return min(int(raw), MAX_LIMIT)


def encode_cursor(number: int, text: str) -> str:
    """An opaque cursor holding a sort position in full: a number and a unique tie-breaker."""
    return base64.urlsafe_b64encode(f"{number} {text}".encode()).decode().rstrip("=")


def decode_cursor(raw: str | None) -> tuple[int, str] | None:
    """The position a cursor holds; a cursor this API did not make is a 400."""
    if raw is None:
        return None
    try:
        decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        number, text = decoded.split(" ", 1)
        if not text or not re.fullmatch(r"-?[0-9]{1,19}", number):
            raise ValueError(decoded)
        return int(number), text
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise HTTPException(status_code=400, detail="Invalid cursor parameter") from None
