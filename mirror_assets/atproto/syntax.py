"""The AT Protocol's identifier syntax, as its specifications give it (atproto.com/specs):
DIDs of the methods the protocol supports, handles, NSIDs, record keys, TIDs and CIDs.

Everything a stranger names goes through these checks where it enters the mirror
(docs/validation.md): a frame's DID and collection, a PDS's record keys and CIDs, a DID
document's handle, an API request's `did`. They are regular expressions compiled once, so
checking costs well under a microsecond per identifier.
"""

from __future__ import annotations

import re
from functools import lru_cache

MAX_DID_LENGTH = 2048  # the protocol's hard limit on any DID
MAX_HANDLE_LENGTH = 253
MAX_NSID_LENGTH = 317

# did:plc is exactly 24 characters of lowercase base32; did:web is a host name, and only
# `localhost` may carry a port (hex-encoded colon), for development. Other methods are valid
# DID syntax but not supported by the protocol, so the mirror refuses them.
_DID_PLC = re.compile(r"did:plc:[a-z2-7]{24}")
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
_HOSTNAME = rf"(?:{_LABEL}\.)+[a-zA-Z](?:[a-zA-Z0-9-]{{0,61}}[a-zA-Z0-9])?"
_DID_WEB = re.compile(rf"did:web:(?:{_HOSTNAME}|localhost(?:%3[aA][0-9]{{1,5}})?)")
_HANDLE = re.compile(_HOSTNAME)
# Reversed domain authority (its first segment cannot start with a digit), then a name of
# letters and digits that starts with a letter.
_NSID = re.compile(
    rf"[a-zA-Z](?:[a-zA-Z0-9-]{{0,61}}[a-zA-Z0-9])?(?:\.{_LABEL})+\.[a-zA-Z][a-zA-Z0-9]{{0,62}}"
)
# A `prefix.*` glob: whole segments of a domain authority, then `.*`.
_NSID_PREFIX = re.compile(rf"[a-zA-Z](?:[a-zA-Z0-9-]{{0,61}}[a-zA-Z0-9])?(?:\.{_LABEL})*\.\*")
_RECORD_KEY = re.compile(r"[A-Za-z0-9._:~-]{1,512}")
_TID = re.compile(r"[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}")
_CID = re.compile(r"[a-zA-Z0-9+=]{8,256}")
# Top-level domains that are valid syntax but never resolve in the AT Protocol.
_UNRESOLVABLE_TLDS = frozenset(
    {"alt", "arpa", "example", "internal", "invalid", "local", "localhost", "onion"}
)


# The same DIDs and collections come back frame after frame: their answers are kept (a few
# MB at most), which halves the cost of the checks on the stream (bench/README.md).
@lru_cache(maxsize=65_536)
def is_did(text: str) -> bool:
    """A `did:plc` or `did:web` DID the protocol supports, in its exact syntax."""
    if text.startswith("did:plc:"):
        return len(text) == 32 and _DID_PLC.fullmatch(text) is not None
    return (
        text.startswith("did:web:")
        and len(text) <= 8 + MAX_HANDLE_LENGTH
        and _DID_WEB.fullmatch(text) is not None
    )


def is_handle(text: str) -> bool:
    """A handle's syntax: a host name of two or more labels, the last not starting with a
    digit (so no IP address)."""
    return len(text) <= MAX_HANDLE_LENGTH and _HANDLE.fullmatch(text) is not None


def is_resolvable_handle(handle: str) -> bool:
    """A handle whose top-level domain may resolve at all (the specification's disallowed
    TLDs, such as `.local` or `.onion`, must fail resolution; `.test` is for development)."""
    return is_handle(handle) and handle.rsplit(".", 1)[-1].lower() not in _UNRESOLVABLE_TLDS


@lru_cache(maxsize=4_096)
def is_nsid(text: str) -> bool:
    """One exact NSID (no wildcard, no list)."""
    return len(text) <= MAX_NSID_LENGTH and _NSID.fullmatch(text) is not None


def is_nsid_prefix(text: str) -> bool:
    """A `prefix.*` glob: one or more whole segments of a domain authority, then `.*`."""
    return len(text) <= MAX_NSID_LENGTH and _NSID_PREFIX.fullmatch(text) is not None


def is_record_key(text: str) -> bool:
    """1 to 512 characters of `A-Za-z0-9._:~-`, but neither `.` nor `..`."""
    if len(text) <= 512 and text.isascii() and text.isalnum():  # most keys: TIDs, words
        return True
    return _RECORD_KEY.fullmatch(text) is not None and text not in (".", "..")


def is_tid(text: str) -> bool:
    """13 characters of base32-sortable, the top bit zero: a record key or a commit's rev."""
    return _TID.fullmatch(text) is not None


def is_cid(text: str) -> bool:
    """A CID string as Lexicon syntax checks it (8 to 256 characters of a multibase
    alphabet); the legacy CIDv0 (`Qmb...`) is not allowed."""
    if text.startswith("Qmb"):
        return False
    if 8 <= len(text) <= 256 and text.isascii() and text.isalnum():  # base32, as written
        return True
    return _CID.fullmatch(text) is not None
