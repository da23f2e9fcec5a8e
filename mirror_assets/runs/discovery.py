"""Discovery: every repo a relay knows to hold a tracked collection gets a backfill queued.

Live commits only reveal users who post after the mirror starts; a relay's
`com.atproto.sync.listReposByCollection` lists all of them, so a fresh mirror ends up
complete (docs/backfill.md). A pass pages the relay for one collection and queues each DID
not known yet; each page commits with the pass's position, so an interrupted pass resumes
where it stopped. A collection is passed again once its last pass is older than
`REPASS_AFTER`, or straight away when it has never been passed completely (newly tracked).

The relay takes exact NSIDs only: `prefix.*` patterns are not discovered here, their DIDs
come from the stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import duckdb
import msgspec

from mirror_assets.atproto.syntax import is_did
from mirror_assets.config import Settings
from mirror_assets.model import discovery
from mirror_assets.model.backfills import queue
from mirror_assets.network.net_guard import AddressGuard
from mirror_assets.network.xrpc import Politeness, XrpcClient
from mirror_assets.store.choice import open_store
from mirror_assets.store.contract import MirrorStore

log = logging.getLogger(__name__)

PAGE_LIMIT = 2000  # the relay's own maximum
REPASS_AFTER = timedelta(hours=20)  # a daily schedule passes every collection once a day


class _Repo(msgspec.Struct):
    did: str


class ListReposAnswer(msgspec.Struct):
    repos: list[_Repo]
    cursor: str | None = None


@dataclass
class CollectionPass:
    collection: str
    resumed: bool
    pages: int = 0
    repos_listed: int = 0
    dids_queued: int = 0
    invalid_dids: int = 0
    complete: bool = False


@dataclass
class DiscoveryReport:
    passes: list[CollectionPass] = field(default_factory=list)
    not_discoverable: list[str] = field(default_factory=list)  # wildcard patterns
    seconds: float = 0.0

    def summary(self) -> dict[str, int | float]:
        return {
            "collections_passed": len(self.passes),
            "passes_complete": sum(p.complete for p in self.passes),
            "pages": sum(p.pages for p in self.passes),
            "repos_listed": sum(p.repos_listed for p in self.passes),
            "dids_queued": sum(p.dids_queued for p in self.passes),
            "invalid_dids": sum(p.invalid_dids for p in self.passes),
            "seconds": round(self.seconds, 3),
        }


def collections_due(con: duckdb.DuckDBPyConnection, settings: Settings) -> dict[str, str | None]:
    """Tracked exact collections never passed on this relay, mid-pass, or passed long ago,
    each with the cursor its pass resumes from (None: a new pass)."""
    state = discovery.positions(con)
    stale_before = datetime.now(UTC) - REPASS_AFTER
    due: dict[str, str | None] = {}
    for collection in sorted(settings.collections.exact):
        relay, cursor, completed_at = state.get(collection, (None, None, None))
        if relay != settings.relay_url:
            due[collection] = None  # another relay's position means nothing here
        elif cursor is not None or completed_at is None or completed_at < stale_before:
            due[collection] = cursor
    return due


def never_completed(con: duckdb.DuckDBPyConnection, settings: Settings) -> list[str]:
    """Tracked exact collections without a complete pass on this relay (newly tracked, or
    a first pass that was interrupted)."""
    done = discovery.completed_on(con, settings.relay_url)
    return sorted(settings.collections.exact - done)


def run_discovery(settings: Settings, store: MirrorStore | None = None) -> DiscoveryReport:
    return asyncio.run(discover(settings, store or open_store(settings)))


async def discover(settings: Settings, store: MirrorStore) -> DiscoveryReport:
    started = time.monotonic()
    report = DiscoveryReport(not_discoverable=[f"{p}*" for p in settings.collections.prefixes])
    with store.reading() as con:
        due = collections_due(con, settings)
    politeness = Politeness.from_limits(settings.backfill)
    async with XrpcClient(politeness, AddressGuard.for_settings(settings)) as client:
        for collection, cursor in due.items():
            collection_pass = CollectionPass(collection, resumed=cursor is not None)
            report.passes.append(collection_pass)
            await _pass(client, store, settings.relay_url, collection_pass, cursor)
    report.seconds = time.monotonic() - started
    log.info("discovery done: %s", report.summary())
    return report


async def _pass(
    client: XrpcClient, store: MirrorStore, relay: str, state: CollectionPass, cursor: str | None
) -> None:
    url = f"{relay.rstrip('/')}/xrpc/com.atproto.sync.listReposByCollection"
    while True:
        params: dict[str, str | int] = {"collection": state.collection, "limit": PAGE_LIMIT}
        if cursor is not None:
            params["cursor"] = cursor
        answer = await client.get(url, params, ListReposAnswer, trusted=True)
        dids = [repo.did for repo in answer.repos if is_did(repo.did)]
        state.pages += 1
        state.repos_listed += len(answer.repos)
        state.invalid_dids += len(answer.repos) - len(dids)
        next_cursor = answer.cursor if answer.repos and answer.cursor != cursor else None
        state.dids_queued += await asyncio.to_thread(
            _commit_page, store, relay, state, dids, len(answer.repos), next_cursor
        )
        if next_cursor is None:
            state.complete = True
            return
        cursor = next_cursor


def _commit_page(
    store: MirrorStore,
    relay: str,
    state: CollectionPass,
    dids: list[str],
    listed: int,
    cursor: str | None,
) -> int:
    """Queue the page's DIDs and save the pass's position, in one transaction."""
    first = state.pages == 1 and not state.resumed

    def write(con: duckdb.DuckDBPyConnection) -> int:
        queued = queue(con, [(did, state.collection) for did in dids])
        discovery.record_page(con, state.collection, relay, cursor, listed, queued, first)
        return queued

    return store.transact(write)[0]
