"""Backfill DIDs from their PDSes: resolve each DID, page its collections, write every page.

For each DID a run takes on, every due (did, collection) listing is paged with
`listRecords` from its saved cursor. Pages carry the repo rev read with `getLatestCommit`
when the pass began, so the rev rule decides between them and live events (docs/
architecture.md, invariant 2). Fetching and writing overlap: pages go to a writer that commits
whatever has arrived in one short transaction (each page's records with its cursor), while
the network keeps fetching; the file is never held across a request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby

import duckdb
import pyarrow as pa

from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.atproto.refusals import Refusals
from mirror_assets.config import Settings
from mirror_assets.model.accounts import cached_pdses
from mirror_assets.model.apply import ApplyResult
from mirror_assets.model.backfills import Task, claim, done_dids
from mirror_assets.model.batch import COMMIT_SCHEMA
from mirror_assets.model.progress import (
    Ended,
    ListingDone,
    PageRead,
    Progress,
    ProgressResult,
    write_progress,
)
from mirror_assets.network.handles import HandleVerifier
from mirror_assets.network.identity import DidNotFoundError, DidTombstonedError
from mirror_assets.network.net_guard import AddressGuard
from mirror_assets.network.pds import RecordEntry, RefusedAnswerError, latest_rev, list_records
from mirror_assets.network.xrpc import Politeness, UnavailableError, XrpcClient, XrpcError
from mirror_assets.runs.identities import checked_identity
from mirror_assets.store.choice import open_store
from mirror_assets.store.committer import Committer
from mirror_assets.store.contract import MirrorStore

log = logging.getLogger(__name__)

# XRPC errors that end a backfill with the repository's own status.
_REPO_STATUS = {
    "RepoNotFound": "not_found",
    "RepoTakendown": "takendown",
    "RepoSuspended": "suspended",
    "RepoDeactivated": "deactivated",
}
# A transaction takes whatever pages have arrived, up to this many records: a
# transaction's fixed cost (open, commit, close) is paid per group, not per page
# (docs/backfill.md).
_RECORDS_PER_TRANSACTION = 20_000
_QUEUED_PAGES = 256  # fetched pages waiting for the writer before fetching pauses
# ... or this many bytes of them: pages of large records from a hostile PDS stay bounded.
_QUEUED_BYTES = 256 * 1024 * 1024


@dataclass
class BackfillReport:
    """What one run fetched and what it changed."""

    dids: int = 0
    tasks: int = 0
    pages: int = 0
    records_listed: int = 0
    applied: ApplyResult = field(default_factory=ApplyResult)
    removed: int = 0  # rows a complete listing no longer had
    completed: int = 0  # listings that reached their end
    paused: int = 0  # listings left for the next run by the time budget
    ended: Counter[str] = field(default_factory=Counter)  # by status: failed, not_found, ...
    errors: dict[str, str] = field(default_factory=dict)  # "did collection" -> last error
    refused: Refusals = field(default_factory=Refusals)  # what PDSes sent that was refused
    oversized_pages: int = 0
    transactions: int = 0
    done_dids: list[str] = field(default_factory=list)  # every listing complete or ended
    seconds: float = 0.0

    def add(self, result: ProgressResult) -> None:
        self.applied.add(result.applied)
        self.removed += result.removed
        self.completed += len(result.completed)
        self.transactions += 1

    def summary(self) -> dict[str, int | float]:
        """Flat numbers for run metadata and the CLI."""
        return {
            "dids": self.dids,
            "listings": self.tasks,
            "pages": self.pages,
            "records_listed": self.records_listed,
            "rows_upserted": self.applied.upserted,
            "rows_stale": self.applied.stale,
            "rows_removed": self.removed,
            "listings_completed": self.completed,
            "listings_paused": self.paused,
            **{f"ended_{status}": n for status, n in sorted(self.ended.items())},
            "refused": len(self.refused),
            **self.refused.summary(),
            "oversized_pages": self.oversized_pages,
            "transactions": self.transactions,
            "max_lock_wait_seconds": round(self.applied.lock_wait_seconds, 3),
            "seconds": round(self.seconds, 3),
        }


def run_backfill(
    settings: Settings,
    dids: Sequence[str],
    restart: Sequence[tuple[str, str]] = (),
    store: MirrorStore | None = None,
) -> BackfillReport:
    """Backfill the due listings of `dids` (and list the `restart` pairs anew); blocking."""
    return asyncio.run(backfill(settings, store or open_store(settings), dids, restart))


async def backfill(
    settings: Settings,
    store: MirrorStore,
    dids: Sequence[str],
    restart: Sequence[tuple[str, str]] = (),
) -> BackfillReport:
    started = time.monotonic()
    limits = settings.backfill
    ttl = limits.identity_ttl_seconds
    tasks, cached = await asyncio.to_thread(_claim, store, dids, settings.collections, restart, ttl)
    report = BackfillReport(dids=len({task.did for task in tasks}), tasks=len(tasks))
    writer = ProgressWriter(store, limits.retry_seconds, report)
    guard = AddressGuard.for_settings(settings)
    try:
        async with XrpcClient(Politeness.from_limits(limits), guard) as client:
            verifier = HandleVerifier.for_settings(settings, client)
            runner = _Runner(
                settings, client, verifier, writer, report, started + limits.run_seconds
            )
            gate = asyncio.Semaphore(limits.dids_at_once)

            async def one_did(did: str, did_tasks: list[Task]) -> None:
                async with gate:
                    await runner.backfill_did(did, did_tasks, cached.get(did))

            await asyncio.gather(
                *(
                    one_did(did, list(group))
                    for did, group in groupby(tasks, key=lambda task: task.did)
                )
            )
    finally:
        await writer.close()
    claimed = sorted({task.did for task in tasks})
    report.done_dids = await asyncio.to_thread(_done_dids, store, claimed)
    report.seconds = time.monotonic() - started
    log.info("backfill run done: %s", report.summary())
    return report


def _claim(
    store: MirrorStore,
    dids: Sequence[str],
    collections: CollectionFilter,
    restart: Sequence[tuple[str, str]],
    ttl: float,
) -> tuple[list[Task], dict[str, str]]:
    def claim_and_look_up(con: duckdb.DuckDBPyConnection) -> tuple[list[Task], dict[str, str]]:
        tasks = claim(con, dids, collections, restart)
        return tasks, cached_pdses(con, [task.did for task in tasks], ttl)

    return store.transact(claim_and_look_up)[0]


def _done_dids(store: MirrorStore, dids: Sequence[str]) -> list[str]:
    with store.reading() as con:
        return done_dids(con, dids)


class _Runner:
    """The network side of one run: DIDs in, progress reports out to the writer."""

    def __init__(
        self,
        settings: Settings,
        client: XrpcClient,
        verifier: HandleVerifier,
        writer: ProgressWriter,
        report: BackfillReport,
        deadline: float,
    ) -> None:
        self._settings = settings
        self._client = client
        self._verifier = verifier
        self._writer = writer
        self._report = report
        self._deadline = deadline

    async def backfill_did(self, did: str, tasks: list[Task], cached_pds: str | None) -> None:
        try:
            pds, rev = await self._locate(did, cached_pds)
        except WriteFailedError:
            raise
        except Exception as error:  # whatever the DID's documents hold, only this DID fails
            if isinstance(error, RefusedAnswerError):
                self._report.refused.refuse(error.refused, did)
            await self._end(tasks, _ended_status(error), error)
            return
        for task in tasks:
            # A resumed pass keeps the rev it began with: its pages already carry it.
            if task.cursor is not None and task.repo_rev is not None:
                await self._backfill_listing(pds, task, task.cursor, task.repo_rev)
            else:
                await self._backfill_listing(pds, task, None, rev)

    async def _locate(self, did: str, cached_pds: str | None) -> tuple[str, str]:
        """The DID's PDS, and its repo's rev now (asked every run: it is also how a closed
        repo says so). A cached PDS that refuses is checked against a fresh resolution:
        the account may have moved."""
        if cached_pds is not None:
            try:
                return cached_pds, await latest_rev(self._client, cached_pds, did)
            except (XrpcError, UnavailableError) as error:
                pds = await self._resolve(did)
                if pds == cached_pds:
                    raise error
        else:
            pds = await self._resolve(did)
        return pds, await latest_rev(self._client, pds, did)

    async def _resolve(self, did: str) -> str:
        resolved = await checked_identity(self._client, self._verifier, did, self._settings.plc_url)
        await self._writer.put(resolved)
        return resolved.pds

    async def _backfill_listing(self, pds: str, task: Task, cursor: str | None, rev: str) -> None:
        did, collection = task.did, task.collection
        report = self._report
        try:
            while True:
                if time.monotonic() > self._deadline:
                    report.paused += 1
                    return
                page = await list_records(self._client, pds, did, collection, cursor)
                report.pages += 1
                report.records_listed += page.listed
                report.refused.update(page.refused)
                report.oversized_pages += page.oversized
                if not page.listed:
                    await self._writer.put(ListingDone(did, collection, rev))
                    return
                rows = page_rows(did, collection, rev, page.entries)
                await self._writer.put(PageRead(did, collection, rev, rows, page.next_cursor))
                if page.next_cursor is None:  # a PDS that omits the cursor on its last page
                    await self._writer.put(ListingDone(did, collection, rev))
                    return
                cursor = page.next_cursor
        except WriteFailedError:
            raise
        except Exception as error:  # whatever the PDS sends, only this listing fails
            if isinstance(error, RefusedAnswerError):
                report.refused.refuse(error.refused, f"{pds} {did} {collection}")
            await self._end([task], _ended_status(error), error)

    async def _end(self, tasks: Sequence[Task], status: str, error: Exception) -> None:
        for task in tasks:
            log.warning("backfill of %s %s: %s (%s)", task.did, task.collection, status, error)
            self._report.ended[status] += 1
            self._report.errors[f"{task.did} {task.collection}"] = str(error)
            await self._writer.put(Ended(task.did, task.collection, status, str(error)))


def _ended_status(error: Exception) -> str:
    """The status a backfill ends with: the repository's or the DID's own, else `failed`."""
    if isinstance(error, DidTombstonedError):
        return "tombstoned"
    if isinstance(error, DidNotFoundError):
        return "not_found"
    if isinstance(error, XrpcError):
        return _REPO_STATUS.get(error.error or "", "failed")
    return "failed"


def page_rows(did: str, collection: str, rev: str, entries: Sequence[RecordEntry]) -> pa.Table:
    """A page's records as commit rows at the pass's rev."""
    count = len(entries)
    return pa.table(
        {
            "seq": pa.array(range(count), pa.int64()),
            "uri": [f"at://{did}/{collection}/{entry.rkey}" for entry in entries],
            "did": [did] * count,
            "collection": [collection] * count,
            "rkey": [entry.rkey for entry in entries],
            "deleted": pa.array([False] * count, pa.bool_()),
            "rev": [rev] * count,
            "cid": [entry.cid for entry in entries],
            "record": pa.array([entry.value for entry in entries], pa.string()),
            "time_us": pa.array([entry.time_us for entry in entries], pa.int64()),
        },
        schema=COMMIT_SCHEMA,
    )


class WriteFailedError(Exception):
    """The writer could not commit: the run stops (what was committed stays)."""


class ProgressWriter:
    """Commits progress reports in a worker thread, whatever has arrived in one transaction.

    Network tasks `put` their reports and go on fetching; a full queue (by pages or by
    bytes) makes them wait (the writer is behind). If a write fails, `put` and `close`
    raise its error, and the rest of the run stops: what was committed stays, the rest
    resumes on the next run.
    """

    def __init__(self, store: MirrorStore, retry_seconds: float, report: BackfillReport) -> None:
        self._committer = Committer(store)
        self._retry_seconds = retry_seconds
        self._report = report
        self._queue: asyncio.Queue[Progress | None] = asyncio.Queue(_QUEUED_PAGES)
        self._queued_bytes = 0
        self._room = asyncio.Condition()  # notified as the writer takes pages off the queue
        self._error: BaseException | None = None
        self._task = asyncio.ensure_future(self._run())

    async def put(self, item: Progress) -> None:
        if self._error is not None:
            raise WriteFailedError("the run's writer failed; see the run's error") from self._error
        size = _size_of(item)
        async with self._room:
            # An empty queue takes any page, so one larger than the budget still goes through.
            await self._room.wait_for(
                lambda: not self._queued_bytes or self._queued_bytes + size <= _QUEUED_BYTES
            )
            self._queued_bytes += size
        await self._queue.put(item)

    async def close(self) -> None:
        await self._queue.put(None)
        await self._task
        if self._error is not None:
            raise self._error

    async def _run(self) -> None:
        closing = False
        while not closing:
            items: list[Progress] = []
            await self._committer.readers_served()  # what arrives meanwhile joins this group
            item = await self._queue.get()
            records = 0
            while item is not None:
                items.append(item)
                records += item.rows.num_rows if isinstance(item, PageRead) else 0
                if self._queue.empty() or records >= _RECORDS_PER_TRANSACTION:
                    break
                item = self._queue.get_nowait()
            closing = item is None
            async with self._room:
                self._queued_bytes -= sum(map(_size_of, items))
                self._room.notify_all()
            if items and self._error is None:
                write = functools.partial(
                    write_progress, items=items, retry_seconds=self._retry_seconds
                )
                try:
                    result, waited = await self._committer.commit(write)
                except Exception as error:  # reported to the producers and the caller
                    self._error = error
                    continue
                result.applied.lock_wait_seconds = waited
                self._report.add(result)


def _size_of(item: Progress) -> int:
    return item.rows.nbytes if isinstance(item, PageRead) else 0
