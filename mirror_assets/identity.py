"""From a DID to its PDS: `did:plc` through the PLC directory, `did:web` through the host.

The PDS is the DID document's service with id `#atproto_pds` (or `{did}#atproto_pds`);
the handle is the first `at://` entry of `alsoKnownAs`. DID documents are untrusted: the
document must be about the DID asked for, and its PDS URL must pass the private-network
guard when it is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import msgspec

from mirror_assets.xrpc import XrpcClient, XrpcError

# did:plc is 24 characters of base32; did:web is a host name, with a port only as `%3A`.
_DID_PLC = re.compile(r"did:plc:[a-z2-7]{24}")
_DID_WEB = re.compile(r"did:web:[a-zA-Z0-9.-]+(%3[aA][0-9]{1,5})?")
_DID_ANY = re.compile(r"did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]")
MAX_DID_LENGTH = 2048


class IdentityError(Exception):
    """The DID cannot be resolved to a PDS (for a reason that will not fix itself soon)."""


class DidNotFoundError(IdentityError):
    """The directory does not know the DID, or no directory can (an unsupported method)."""


class DidTombstonedError(IdentityError):
    """The DID was deleted for good (PLC answers 410)."""


def is_valid_did(did: str) -> bool:
    """Whether `did` is syntactically a DID (any method), as the AT Protocol allows them."""
    return len(did) <= MAX_DID_LENGTH and _DID_ANY.fullmatch(did) is not None


class _Service(msgspec.Struct):
    id: str
    serviceEndpoint: Any = None  # noqa: N815 (the DID document's own field name)
    type: str = ""


class DidDocument(msgspec.Struct):
    id: str
    alsoKnownAs: list[str] = []  # noqa: N815 (the DID document's field name)
    service: list[_Service] = []


@dataclass(frozen=True)
class Identity:
    did: str
    pds: str  # base URL, without a trailing slash
    handle: str | None


def identity_from_document(did: str, document: DidDocument) -> Identity:
    """The PDS and handle a DID document declares; refuses documents about another DID."""
    if document.id != did:
        raise IdentityError(f"the DID document of {did} is about {document.id!r}")
    for service in document.service:
        if service.id in ("#atproto_pds", f"{did}#atproto_pds"):
            endpoint = service.serviceEndpoint
            if not _is_http_url(endpoint):
                raise IdentityError(f"{did}: #atproto_pds endpoint {endpoint!r} is not a URL")
            handle = next(
                (
                    aka.removeprefix("at://")
                    for aka in document.alsoKnownAs
                    if aka.startswith("at://")
                ),
                None,
            )
            return Identity(did, endpoint.rstrip("/"), handle)
    raise IdentityError(f"{did}: the DID document names no #atproto_pds service")


def _is_http_url(value: object) -> bool:
    """An http(s) URL with a host and, if any, a valid port."""
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for a port out of range or not a number)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def did_document_url(did: str, plc_url: str) -> tuple[str, bool]:
    """Where the DID's document is, and whether that URL is trusted (the configured PLC)."""
    if _DID_PLC.fullmatch(did):
        return f"{plc_url.rstrip('/')}/{quote(did)}", True
    if _DID_WEB.fullmatch(did):
        host = unquote(did.removeprefix("did:web:"))
        # The DID method says https; the reference implementation uses http for localhost.
        scheme = "http" if host.split(":")[0] in ("localhost", "127.0.0.1") else "https"
        return f"{scheme}://{host}/.well-known/did.json", False
    # Not a failure to retry: no directory will ever know it.
    raise DidNotFoundError(f"{did!r} is not a did:plc or did:web DID the mirror can resolve")


async def resolve(client: XrpcClient, did: str, plc_url: str) -> Identity:
    """Fetch and read the DID document (bounded, retried, guarded by the client)."""
    url, trusted = did_document_url(did, plc_url)
    try:
        document = await client.get(url, {}, DidDocument, trusted=trusted)
    except XrpcError as error:
        if error.status == 410:
            raise DidTombstonedError(f"{did} is tombstoned (the directory answered 410)") from None
        if error.status == 404:
            raise DidNotFoundError(f"{did} is not registered at {url}") from None
        raise
    return identity_from_document(did, document)
