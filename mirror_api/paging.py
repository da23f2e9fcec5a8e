"""The paging parameters of the contract (docs/api.md): `limit` and opaque, keyed
`cursor`s, each refused with the original Worker's exact error."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
from functools import cached_property

from litestar.exceptions import HTTPException

from mirror_api.cursor_key import cursor_key
from mirror_assets.atproto.syntax import MAX_HANDLE_LENGTH, MAX_NSID_LENGTH
from mirror_assets.config import Settings

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
_DIGITS = re.compile(r"[0-9]+")
_NUMBER = re.compile(r"-?[0-9]{1,19}")
TAG_BYTES = 16  # a keyed BLAKE2b MAC: nobody without the key makes a cursor we accept
_MAX_RECORD_KEY_LENGTH = 512  # the protocol's limit (syntax.is_record_key)
# The longest position a cursor holds: a /records URI at the protocol's limits (a did:web
# of a whole host name, an NSID, a record key), after the endpoint's name and a time.
_LONGEST_PAYLOAD = (
    len("records ")
    + len(str(-(2**63)))
    + len(" at://did:web:")
    + MAX_HANDLE_LENGTH
    + 1
    + MAX_NSID_LENGTH
    + 1
    + _MAX_RECORD_KEY_LENGTH
)
# Longer strings are refused before they are decoded or hashed. Cursors of real records
# (did:plc DIDs, TID record keys) are about 150 characters.
MAX_CURSOR_CHARACTERS = 4 * math.ceil((TAG_BYTES + _LONGEST_PAYLOAD) / 3)


def parse_limit(raw: str | None) -> int:
    """A positive integer, clamped to MAX_LIMIT; anything else is a 400."""
    if raw is None:
        return DEFAULT_LIMIT
    digits = raw.lstrip("0")
    if _DIGITS.fullmatch(raw) is None or not digits:
        raise HTTPException(status_code=400, detail="Invalid limit parameter")
    return MAX_LIMIT if len(digits) > 3 else min(int(digits), MAX_LIMIT)


class Cursors:
    """Opaque cursors: base64 of a MAC and the payload, which holds a sort position in full
    (a number and a unique tie-breaker) and the endpoint it belongs to. A cut, altered or
    forged cursor, or one of another endpoint, is refused.

    The MAC's key is API_CURSOR_KEY when set (API replicas on several machines share it),
    else the one beside the mirror file (cursor_key.py), read on first use.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    @cached_property
    def _key(self) -> bytes:
        return self._settings.api_cursor_key.encode() or cursor_key(self._settings.db_path)

    def encode(self, kind: str, number: int, text: str) -> str:
        payload = f"{kind} {number} {text}".encode()
        return base64.urlsafe_b64encode(self._tag(payload) + payload).decode().rstrip("=")

    def decode(self, raw: str | None, kind: str) -> tuple[int, str] | None:
        """The position a cursor of this endpoint holds; any other string is a 400."""
        if raw is None:
            return None
        try:
            if len(raw) > MAX_CURSOR_CHARACTERS:
                raise ValueError("too long")
            padded = raw + "=" * (-len(raw) % 4)
            decoded = base64.b64decode(padded, altchars=b"-_", validate=True)
            tag, payload = decoded[:TAG_BYTES], decoded[TAG_BYTES:]
            if not hmac.compare_digest(tag, self._tag(payload)):
                raise ValueError("not a cursor of ours")
            cursor_kind, number, text = payload.decode().split(" ", 2)
            if cursor_kind != kind or not text or not _NUMBER.fullmatch(number):
                raise ValueError(payload)
            return int(number), text
        except (ValueError, binascii.Error):
            raise HTTPException(status_code=400, detail="Invalid cursor parameter") from None

    def _tag(self, payload: bytes) -> bytes:
        return hashlib.blake2b(payload, digest_size=TAG_BYTES, key=self._key).digest()
