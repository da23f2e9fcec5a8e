"""Handles, resolved to DIDs and checked against the DID that claims them.

A DID document's `alsoKnownAs` may claim any handle; the claim counts only when the handle
resolves back to that DID (docs/backfill.md, "Identity, and the private-network guard"). A
handle resolves through DNS (a TXT record `did=<DID>` at `_atproto.<handle>`) or through HTTPS
(`https://<handle>/.well-known/atproto-did`, whose body is the DID); both are asked at once,
and when DNS gives a DID it wins. With HANDLE_RESOLVER_URL, a resolver service of the
operator's answers instead (`com.atproto.identity.resolveHandle`).

The names and hosts involved are anyone's: the HTTPS request goes through the guarded client
(private addresses refused at the connection, a small body bound, no redirects), the DNS
lookups are bounded in time, and whatever the network does, resolution ends in a DID or None.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec

from mirror_assets.atproto.syntax import is_did, is_resolvable_handle
from mirror_assets.config import Settings
from mirror_assets.network.net_guard import LookupFailedError, RefusedAddressError, Resolver
from mirror_assets.network.xrpc import UnavailableError, XrpcClient, XrpcError

log = logging.getLogger(__name__)

WELL_KNOWN_PATH = "/.well-known/atproto-did"
MAX_WELL_KNOWN_BYTES = 2048  # a DID is far shorter; anything longer is not one
RESOLVE_HANDLE = "com.atproto.identity.resolveHandle"
_TXT_PREFIX = "did="


class _ResolvedHandle(msgspec.Struct):
    did: str


class HandleVerifier:
    """Resolves handles and tells whether a DID's claimed handle is really its own.

    `resolver_url` is HANDLE_RESOLVER_URL ("" resolves directly); `timeout_seconds` bounds
    one whole resolution, both methods and their retries included.
    """

    def __init__(
        self,
        client: XrpcClient,
        resolver: Resolver,
        *,
        resolver_url: str = "",
        timeout_seconds: float = 15.0,
    ) -> None:
        self._client = client
        self._resolver = resolver
        self._resolver_url = resolver_url.rstrip("/")
        self._timeout = timeout_seconds

    @classmethod
    def for_settings(cls, settings: Settings, client: XrpcClient) -> HandleVerifier:
        return cls(
            client,
            Resolver.for_settings(settings),
            resolver_url=settings.handle_resolver_url,
            timeout_seconds=settings.backfill.http_timeout_seconds,
        )

    async def verified(self, did: str, claimed: str | None) -> str | None:
        """The claimed handle, in lower case, if it resolves to `did`; else None."""
        if claimed is None:
            return None
        handle = claimed.lower()
        return handle if await self.resolve(handle) == did else None

    async def resolve(self, handle: str) -> str | None:
        """The DID the handle resolves to, or None: not a resolvable handle, no answer, an
        answer that is not one DID, a refused address, a timeout."""
        handle = handle.lower()
        if not is_resolvable_handle(handle):
            return None
        try:
            async with asyncio.timeout(self._timeout):
                if self._resolver_url:
                    return await self._by_service(handle)
                return await self._directly(handle)
        except TimeoutError:
            log.info("handle %s: no answer within %.0f s", handle, self._timeout)
            return None

    async def _directly(self, handle: str) -> str | None:
        """DNS and HTTPS at once; HTTPS is dropped as soon as DNS gives a DID."""
        by_https = asyncio.create_task(self._by_https(handle))
        try:
            by_dns = await self._by_dns(handle)
            return by_dns if by_dns is not None else await by_https
        finally:
            if not by_https.done():
                by_https.cancel()
                await asyncio.wait([by_https])

    async def _by_dns(self, handle: str) -> str | None:
        try:
            records = await self._resolver.txt(f"_atproto.{handle}")
        except LookupFailedError as error:
            log.info("handle %s: DNS failed (%s)", handle, error)
            return None
        dids = {
            record.removeprefix(_TXT_PREFIX) for record in records if record.startswith(_TXT_PREFIX)
        }
        if len(dids) != 1:
            if dids:
                log.info("handle %s: DNS names several DIDs %s", handle, sorted(dids))
            return None
        return _checked_did(handle, dids.pop())

    async def _by_https(self, handle: str) -> str | None:
        url = f"https://{handle}{WELL_KNOWN_PATH}"
        try:
            body = await self._client.get_bytes(url, max_body_bytes=MAX_WELL_KNOWN_BYTES)
        except (XrpcError, UnavailableError, RefusedAddressError) as error:
            log.info("handle %s: %s", handle, error)
            return None
        return _checked_did(handle, body.decode("utf-8", "replace").strip())

    async def _by_service(self, handle: str) -> str | None:
        url = f"{self._resolver_url}/xrpc/{RESOLVE_HANDLE}"
        try:
            answer = await self._client.get(url, {"handle": handle}, _ResolvedHandle, trusted=True)
        except (XrpcError, UnavailableError, RefusedAddressError) as error:
            log.info("handle %s: the resolver service said %s", handle, error)
            return None
        return _checked_did(handle, answer.did)


def _checked_did(handle: str, did: str) -> str | None:
    if is_did(did):
        return did
    log.info("handle %s: %r is not a DID", handle, did[:100])
    return None
