"""From a DID to its PDS: `did:plc` through the PLC directory, `did:web` through the host.

DID documents are untrusted input (docs/validation.md): the document must be about the DID
asked for, its PDS must be an http(s) URL of a host (and pass the private-network guard
when it is used), and the handle it claims counts only once it resolves back to the DID.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import msgspec

from mirror_assets.atproto.syntax import is_did, is_handle
from mirror_assets.network.xrpc import XrpcClient, XrpcError

MAX_PDS_URL_LENGTH = 512  # a PDS is a scheme, a host and a port: nothing needs more


class IdentityError(Exception):
    """The DID cannot be resolved to a PDS (for a reason that will not fix itself soon)."""


class DidNotFoundError(IdentityError):
    """The directory does not know the DID, or no directory can (an unsupported method)."""


class DidTombstonedError(IdentityError):
    """The DID was deleted for good (PLC answers 410)."""


class DidDocument(msgspec.Struct):
    id: str
    # Lists of anything: an entry of the wrong shape is skipped, not a broken document.
    alsoKnownAs: list[Any] = []  # noqa: N815 (the DID document's field name)
    service: list[Any] = []


@dataclass(frozen=True)
class Identity:
    did: str
    pds: str  # base URL, without a trailing slash
    claimed_handle: str | None  # lowercase; valid only once it resolves back to the DID


def identity_from_document(did: str, document: DidDocument) -> Identity:
    """The PDS and the handle a DID document claims; refuses documents about another DID.

    The PDS is the first service with id `#atproto_pds` (or `{did}#atproto_pds`); the
    handle is the first syntactically valid `at://` entry of `alsoKnownAs`, which must
    still resolve back to the DID before the mirror believes it (handles.py)."""
    if document.id != did:
        raise IdentityError(f"the DID document of {did} is about {document.id[:100]!r}")
    for service in document.service:
        if isinstance(service, dict) and service.get("id") in (
            "#atproto_pds",
            f"{did}#atproto_pds",
        ):
            endpoint = service.get("serviceEndpoint")
            if not _is_pds_url(endpoint):
                raise IdentityError(
                    f"{did}: #atproto_pds endpoint {str(endpoint)[:100]!r} is not an http(s) "
                    "URL of a host"
                )
            return Identity(did, str(endpoint).rstrip("/"), _claimed_handle(document))
    raise IdentityError(f"{did}: the DID document names no #atproto_pds service")


def _claimed_handle(document: DidDocument) -> str | None:
    for aka in document.alsoKnownAs:
        if isinstance(aka, str) and aka.startswith("at://") and is_handle(aka[5:]):
            return aka[5:].lower()
    return None


def _is_pds_url(value: object) -> bool:
    """An http(s) URL with a host and, if any, a valid port; no user, query or fragment."""
    if not isinstance(value, str) or len(value) > MAX_PDS_URL_LENGTH:
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for a port out of range or not a number)
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.username is None
        and not parts.query
        and not parts.fragment
    )


def did_document_url(did: str, plc_url: str) -> tuple[str, bool]:
    """Where the DID's document is, and whether that URL is trusted (the configured PLC)."""
    if not is_did(did):
        # Not a failure to retry: no directory will ever know it.
        raise DidNotFoundError(f"{did[:100]!r} is not a did:plc or did:web DID")
    if did.startswith("did:plc:"):
        return f"{plc_url.rstrip('/')}/{quote(did)}", True
    host = unquote(did.removeprefix("did:web:"))
    # The DID method says https; the reference implementation uses http for localhost.
    scheme = "http" if host.split(":")[0] == "localhost" else "https"
    return f"{scheme}://{host}/.well-known/did.json", False


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
