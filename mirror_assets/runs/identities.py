"""Identities checked again: the DID document read afresh and its handle verified both ways.

A handle counts only when the DID document claims it and the handle resolves back to the
same DID (atproto.com/specs/handle; docs/validation.md). The stream's identity events only
say that something changed: ingest marks the DID (`accounts.identity_stale`), and a run of
the `identities` job re-reads the document of each marked DID (its PDS) and verifies the
handle it claims (network/handles.py). A backfill that resolves a DID does the same check, with the
same function.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb

from mirror_assets.config import Settings
from mirror_assets.model.accounts import (
    Resolved,
    end_identity_checks,
    record_identities,
    stale_identities,
)
from mirror_assets.network.handles import HandleVerifier
from mirror_assets.network.identity import resolve
from mirror_assets.network.net_guard import AddressGuard
from mirror_assets.network.xrpc import Politeness, XrpcClient
from mirror_assets.store.choice import open_store
from mirror_assets.store.contract import MirrorStore

log = logging.getLogger(__name__)

IDENTITIES_PER_RUN = 1_000  # the rest waits for the next run, which the sensor launches
IDENTITIES_AT_ONCE = 16
ERRORS_SHOWN = 20


@dataclass
class IdentityReport:
    """What one run checked."""

    checked: int = 0
    verified: int = 0  # the claimed handle resolves back to the DID: kept
    unverified: int = 0  # no handle claimed, or it does not resolve back: none kept
    failed: int = 0  # the DID document could not be read: left as it was
    errors: dict[str, str] = field(default_factory=dict)  # did -> error, the first few
    seconds: float = 0.0

    def summary(self) -> dict[str, int | float]:
        return {
            "checked": self.checked,
            "handles_verified": self.verified,
            "handles_unverified": self.unverified,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
        }


async def checked_identity(
    client: XrpcClient, verifier: HandleVerifier, did: str, plc_url: str
) -> Resolved:
    """The DID's PDS, and the handle its document claims if that resolves back to the DID.
    Raises what `identity.resolve` raises when the document cannot be read."""
    identity = await resolve(client, did, plc_url)
    handle = await verifier.verified(did, identity.claimed_handle)
    return Resolved(did, identity.pds, handle)


def run_identity_checks(settings: Settings, store: MirrorStore | None = None) -> IdentityReport:
    return asyncio.run(check_identities(settings, store or open_store(settings)))


async def check_identities(settings: Settings, store: MirrorStore) -> IdentityReport:
    started = time.monotonic()
    with store.reading() as con:
        dids = stale_identities(con, IDENTITIES_PER_RUN)
    report = IdentityReport(checked=len(dids))
    politeness = Politeness.from_limits(settings.backfill)
    async with XrpcClient(politeness, AddressGuard.for_settings(settings)) as client:
        verifier = HandleVerifier.for_settings(settings, client)
        gate = asyncio.Semaphore(IDENTITIES_AT_ONCE)

        async def one(did: str) -> Resolved | None:
            async with gate:
                try:
                    return await checked_identity(client, verifier, did, settings.plc_url)
                except Exception as error:  # whatever a DID's documents hold, only it fails
                    report.failed += 1
                    if len(report.errors) < ERRORS_SHOWN:
                        report.errors[did] = str(error)
                    return None

        results = await asyncio.gather(*(one(did) for did in dids))
    resolved = [result for result in results if result is not None]
    report.verified = sum(result.handle is not None for result in resolved)
    report.unverified = len(resolved) - report.verified
    await asyncio.to_thread(_record, store, resolved, dids)
    report.seconds = time.monotonic() - started
    log.info("identity checks done: %s", report.summary())
    return report


def _record(store: MirrorStore, resolved: Sequence[Resolved], checked: Sequence[str]) -> None:
    """Write what was found, and end the check of every DID taken on."""

    def write(con: duckdb.DuckDBPyConnection) -> None:
        record_identities(con, resolved)
        end_identity_checks(con, checked)

    store.transact(write)
