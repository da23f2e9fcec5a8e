"""Query parameters of the contract (DESIGN section 8): `limit`, opaque `cursor`s, and the
tracked-collection check, each failing with the original Worker's exact error."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from litestar.exceptions import HTTPException, NotFoundException

from mirror_assets.nsids import CollectionFilter

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
_DIGITS = re.compile(r"[0-9]+")
_NUMBER = re.compile(r"-?[0-9]{1,19}")
_CHECKSUM_BYTES = 4


class CollectionNotTrackedError(NotFoundException):
    """A 404 with the contract's own message, not "Not found"."""


def require_tracked(collection: str, collections: CollectionFilter) -> None:
    if not collections.matches(collection):
        raise CollectionNotTrackedError(detail="Collection not tracked")


def parse_limit(raw: str | None) -> int:
    """A positive integer, clamped to MAX_LIMIT; anything else is a 400."""
    if raw is None:
        return DEFAULT_LIMIT
    digits = raw.lstrip("0")
    if _DIGITS.fullmatch(raw) is None or not digits:
        raise HTTPException(status_code=400, detail="Invalid limit parameter")
    return MAX_LIMIT if len(digits) > 3 else min(int(digits), MAX_LIMIT)


def encode_cursor(kind: str, number: int, text: str) -> str:
    """An opaque cursor holding a sort position in full (a number and a unique tie-breaker),
    the endpoint it belongs to, and a checksum, so a cut or altered cursor is refused."""
    payload = f"{kind} {number} {text}".encode()
    return base64.urlsafe_b64encode(_checksum(payload) + payload).decode().rstrip("=")


def decode_cursor(raw: str | None, kind: str) -> tuple[int, str] | None:
    """The position a cursor of this endpoint holds; any other string is a 400."""
    if raw is None:
        return None
    try:
        decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        checksum, payload = decoded[:_CHECKSUM_BYTES], decoded[_CHECKSUM_BYTES:]
        if checksum != _checksum(payload):
            raise ValueError("checksum")
        cursor_kind, number, text = payload.decode().split(" ", 2)
        if cursor_kind != kind or not text or not _NUMBER.fullmatch(number):
            raise ValueError(payload)
        return int(number), text
    except (ValueError, binascii.Error):
        raise HTTPException(status_code=400, detail="Invalid cursor parameter") from None


def _checksum(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=_CHECKSUM_BYTES).digest()
