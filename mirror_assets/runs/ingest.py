"""One ingest cycle: read Jetstream from the stored cursor until caught up, apply in batches.

Reading happens outside the lock; each flush is one write transaction holding the batch's
rows and the cursor they bring the mirror to (docs/architecture.md, invariant 1), committed in
a worker thread while the next batch is read.
A crash at any point leaves the file at the last committed flush, and the next cycle
re-reads from there.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field

from mirror_assets.atproto.cursor_time import cursor_iso, cursor_lag_seconds
from mirror_assets.config import Settings
from mirror_assets.model.apply import ApplyResult, apply_batch
from mirror_assets.model.batch import BatchBuilder, EventBatch
from mirror_assets.network.jetstream import JetstreamReader, JetstreamUnavailableError, ReadStats
from mirror_assets.store.choice import open_store
from mirror_assets.store.committer import Committer
from mirror_assets.store.contract import MirrorStore

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    """What one cycle read and what it changed."""

    stats: ReadStats
    applied: ApplyResult
    cursor_before: int | None
    cursor_after: int | None
    flushes: int = 0
    seconds: float = 0.0
    finished_at: float = field(default_factory=time.time)

    @property
    def lag_seconds(self) -> float | None:
        """How far the mirror's cursor trails the wall clock at the end of the cycle."""
        return cursor_lag_seconds(self.cursor_after, self.finished_at)

    def summary(self) -> dict[str, int | float | str | None]:
        """Flat numbers for run metadata and the CLI."""
        applied, stats = self.applied, self.stats
        summary: dict[str, int | float | str | None] = {
            "frames": stats.frames,
            **{f"events_{kind.replace(':', '_')}": n for kind, n in sorted(stats.events.items())},
            **{f"skipped_{reason}": n for reason, n in sorted(stats.skipped.items())},
            "refused": len(stats.refused),
            **stats.refused.summary(),
            "rows_upserted": applied.upserted,
            "rows_tombstoned": applied.tombstoned,
            "rows_stale": applied.stale,
            "rows_purged": applied.purged,
            "rows_hidden_changed": applied.hidden_changed,
            "accounts_changed": applied.accounts_changed,
            "identities_changed": applied.identities_changed,
            "new_dids": len(applied.new_dids),
            "cursor_gaps": applied.gaps,
            "cursor_before": self.cursor_before,
            "cursor_after": self.cursor_after,
            "cursor_after_iso": cursor_iso(self.cursor_after),
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "endpoint": stats.endpoint,
            "connections": stats.connections,
            "connection_failures": len(stats.failures),
            "stop_reason": None if stats.stop_reason is None else str(stats.stop_reason),
            "flushes": self.flushes,
            "apply_seconds": round(applied.seconds, 3),
            "max_lock_wait_seconds": round(applied.lock_wait_seconds, 3),
            "seconds": round(self.seconds, 3),
        }
        return summary


def run_ingest(settings: Settings, store: MirrorStore | None = None) -> IngestReport:
    """Run one ingest cycle to completion (blocking)."""
    return asyncio.run(ingest(settings, store or open_store(settings)))


class BatchWriter:
    """Commits batches while the event loop reads the next one.

    Batches still commit one at a time and in order, each with the cursor it brings the
    mirror to, so a crash leaves the file at the end of some batch.
    """

    def __init__(self, store: MirrorStore, report: IngestReport) -> None:
        self._committer = Committer(store)
        self._report = report
        self._in_flight: asyncio.Future[tuple[ApplyResult, float]] | None = None

    async def submit(self, batch: EventBatch) -> None:
        await self.drain()
        write = functools.partial(apply_batch, batch=batch)
        self._in_flight = asyncio.ensure_future(self._committer.commit(write))

    async def finish(self, last: EventBatch | None) -> None:
        """Write the last batch, if any, and wait until everything submitted is committed."""
        try:
            if last is not None:
                await self.submit(last)
        finally:
            await self.drain()

    async def drain(self) -> None:
        """Wait for the batch in flight, if any, and add its result to the report."""
        if self._in_flight is None:
            return
        future, self._in_flight = self._in_flight, None
        result, waited = await future
        result.lock_wait_seconds = waited
        report = self._report
        report.applied.add(result)
        report.flushes += 1
        if result.cursor_us is not None:
            report.cursor_after = max(report.cursor_after or 0, result.cursor_us)


async def ingest(settings: Settings, store: MirrorStore) -> IngestReport:
    started = time.monotonic()
    started_us = time.time_ns() // 1000
    cursor_before = await asyncio.to_thread(store.cursor_us)
    reader = JetstreamReader(
        settings.jetstream_urls, settings.collections, settings.ingest, cursor_before
    )
    report = IngestReport(reader.stats, ApplyResult(), cursor_before, cursor_before)
    builder = BatchBuilder()
    writer = BatchWriter(store, report)
    try:
        try:
            read_anything = False
            async for delivery in reader.deliveries():
                read_anything = True
                if delivery.gap is not None:
                    builder.note_gap(delivery.gap)
                if delivery.event is not None:
                    builder.add(delivery.event)
                builder.advance(delivery.time_us, delivery.endpoint)
                if (
                    len(builder) >= settings.ingest.flush_events
                    or builder.record_bytes >= settings.ingest.flush_bytes
                ):
                    await writer.submit(builder.build())
            if cursor_before is None and not read_anything:
                # A first cycle on a quiet stream read nothing: without a cursor, the next one
                # would start at the live edge again and never read what happened in between.
                # The local clock stands in for the stream's; the rewind covers the difference.
                builder.advance(started_us, reader.stats.endpoint or settings.jetstream_urls[0])
        finally:
            # What was read before an error is applied: it is valid, and the cursor says so.
            await writer.finish(builder.build() if builder.has_pending else None)
            report.seconds = time.monotonic() - started
            report.finished_at = time.time()
    except JetstreamUnavailableError as error:
        error.add_note(f"committed before the failure: {report.summary()}")
        raise
    log.info("ingest cycle done: %s", report.summary())
    return report
