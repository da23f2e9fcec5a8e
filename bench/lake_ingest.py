"""`bench.lake ingest`: catch-up ingest into the lake against the file, end to end.

The stream is bench/ingest.py's (bench/synth.py, served by bench/server.py in a child
process); the client is `run_ingest(settings, store)` with the same settings but the
store: a fresh DuckDB file, or a fresh lake in the bench's Postgres. Both under this
process's DuckDB (1.5.5 in .venv-lake), so the ratio compares the stores, not the DuckDBs.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any

import duckdb

import mirror_assets.runs.ingest as ingest_module
from bench import synth
from bench.ingest import TRACKED, ServerProcess, remove_db
from bench.lake_common import (
    LAKE_OUT,
    BenchLake,
    Flush,
    Steps,
    catalog_bytes,
    catalog_rows,
    counted_conflicts,
    files_on_disk,
    new_lake,
    summarize_catalog,
    timed_transact,
)
from mirror_assets.config import LAKE_PREFIX, IngestLimits, Settings
from mirror_assets.network.jetstream import JetstreamReader
from mirror_assets.runs.ingest import run_ingest
from mirror_assets.store import maintenance
from mirror_assets.store.contract import MirrorStore
from mirror_assets.store.file import FileStore
from mirror_assets.store.lake import LakeStore
from tests.support.postgres import PostgresServer

TARGET_EVENTS_PER_SECOND = 20_000


@dataclass
class IngestRun:
    name: str
    frames: int
    e2e_seconds: float
    read_seconds: float
    flushes: list[Flush]
    steps: dict[str, float]
    cpu_seconds: float
    live: int
    tombstones: int
    verified: str
    after: str  # what the store holds afterwards

    @property
    def events_per_second(self) -> float:
        return self.frames / self.e2e_seconds


@contextlib.contextmanager
def _last_delivery() -> Iterator[list[float]]:
    """When the reader handed over its last event (time.monotonic()), as bench/ingest.py."""
    last = [0.0]

    class TimedReader(JetstreamReader):
        async def deliveries(self) -> AsyncIterator[Any]:
            async for delivery in super().deliveries():
                last[0] = time.monotonic()
                yield delivery

    saved = ingest_module.JetstreamReader
    ingest_module.JetstreamReader = TimedReader  # type: ignore[misc]
    try:
        yield last
    finally:
        ingest_module.JetstreamReader = saved  # type: ignore[misc]


def measure(
    name: str, store: MirrorStore, settings: Settings, expected: tuple[int, int]
) -> IngestRun:
    steps = Steps()
    with timed_transact(store, steps) as flushes, _last_delivery() as last:
        started = time.monotonic()
        cpu = time.process_time()
        report = run_ingest(settings, store)
        cpu = time.process_time() - cpu
    idle = settings.ingest.idle_seconds
    # As bench/ingest.py: start of the cycle until the last commit, less the idle wait when
    # the last flush only began after it.
    last_start, last_end = (flushes[-1].started, flushes[-1].ended) if flushes else (0.0, 0.0)
    tail_after_idle = last_start >= last[0] + idle - 0.05
    e2e = last_end - started - (idle if tail_after_idle else 0.0)
    with store.reading() as con:
        live, tombstones = con.execute(
            "SELECT count(*) FILTER (WHERE NOT deleted), count(*) FILTER (WHERE deleted) "
            "FROM record_versions"
        ).fetchall()[0]
        if isinstance(store, LakeStore):
            held = maintenance.footprint(con, 4 * 1024 * 1024)
            after = (
                f"{held.data_files} data files ({held.data_bytes / 1e6:,.1f} MB), "
                f"{held.delete_files} delete files, {held.snapshots} snapshots"
            )
        else:
            after = ""
    if isinstance(store, FileStore):
        after = f"file {store.path.stat().st_size / 1e6:,.1f} MB"
    verified = "ok" if (live, tombstones) == expected else f"MISMATCH, expected {expected}"
    return IngestRun(
        name,
        report.stats.frames,
        e2e,
        last[0] - started,
        flushes,
        dict(steps.seconds),
        cpu,
        live,
        tombstones,
        verified,
        after,
    )


def print_run(run: IngestRun, flush_events: int) -> None:
    print(f"\n== {run.name}")
    flush_total = sum(f.ended - f.started for f in run.flushes)
    write_total = sum(f.write_seconds for f in run.flushes)
    print(
        f"  {run.frames:,} frames, {len(run.flushes)} flushes of up to {flush_events:,} events; "
        f"end to end {run.e2e_seconds:.2f} s = {run.events_per_second:,.0f} events/s "
        f"({1e6 * run.e2e_seconds / run.frames:.1f} us/event); "
        f"reading done {run.read_seconds:.2f} s"
    )
    print(
        f"  flushes {flush_total:.2f} s in all ({1e6 * flush_total / run.frames:.1f} us/event): "
        f"apply {write_total:.2f} s, the rest (begin, schema check, COMMIT, cursor) "
        f"{flush_total - write_total:.2f} s; process CPU {run.cpu_seconds:.2f} s"
    )
    print(f"  rows: {run.live:,} live, {run.tombstones:,} tombstones ({run.verified}); {run.after}")
    print("  per flush (events in the batch are about the rows; s): ", end="")
    print(
        ", ".join(
            f"{f.ended - f.started:.2f} (apply {f.write_seconds:.2f})" for f in run.flushes[:8]
        )
        + (" ..." if len(run.flushes) > 8 else "")
    )
    print("  apply by statement:")
    for key, seconds in sorted(run.steps.items(), key=lambda item: -item[1]):
        if seconds >= 0.01:
            print(f"    {key:<28} {seconds:7.2f} s  {1e6 * seconds / run.frames:6.1f} us/event")


def run(args: argparse.Namespace, server: PostgresServer) -> None:
    spec = synth.StreamSpec(args.events, seed=args.seed).resolved()
    stream = ServerProcess(spec, "lean")
    info = stream.info
    expected = (info.expected_live, info.expected_tombstones)
    print(
        f"stream: {info.frames:,} frames ({info.bytes / info.frames:.0f} B/frame): "
        f"{info.creates:,} creates, {info.updates:,} updates, {info.deletes:,} deletes, "
        f"{info.identities:,} identity, {info.accounts:,} account; INGEST_FLUSH_EVENTS "
        f"{args.flush_events:,}, idle {args.idle} s; duckdb {duckdb.__version__}",
        flush=True,
    )
    base = Settings(
        collections=TRACKED,
        jetstream_urls=(stream.url,),
        db_path=LAKE_OUT / "ingest.duckdb",
        ingest=IngestLimits(
            idle_seconds=args.idle,
            max_seconds=args.max_seconds,
            max_events=10**12,
            flush_events=args.flush_events,
        ),
    )
    runs: dict[str, list[IngestRun]] = {"file": [], "lake": []}
    try:
        for attempt in range(1, args.repeat + 1):
            for kind in ("file", "lake"):
                label = f"{kind} #{attempt}"
                print(f"\nrunning {label} ...", flush=True)
                if kind == "file":
                    remove_db(base.db_path)
                    store: MirrorStore = FileStore(base.db_path)
                    settings = base
                    lake: BenchLake | None = None
                else:
                    lake = new_lake(server, f"ingest_{attempt}")
                    store = LakeStore(lake.location)
                    settings = replace(
                        base,
                        store=LAKE_PREFIX + lake.location.catalog,
                        data_path=lake.location.data_path,
                    )
                with counted_conflicts() as conflicts:
                    result = measure(label, store, settings, expected)
                runs[kind].append(result)
                print_run(result, args.flush_events)
                if lake is not None:
                    files, size = files_on_disk(lake)
                    print(
                        f"  lake: {files} Parquet files on disk ({size / 1e6:,.1f} MB), catalog "
                        f"{catalog_bytes(lake) / 1e6:,.1f} MB, "
                        f"{summarize_catalog(catalog_rows(lake))}; "
                        f"{conflicts.transactions} transactions, {conflicts.conflicts} conflicts"
                    )
                    assert isinstance(store, LakeStore)
                    store.close()
                remove_db(base.db_path)
    finally:
        stream.stop()
    print("\n== summary (end to end events/s)")
    for kind, results in runs.items():
        rates = ", ".join(f"{r.events_per_second:,.0f}" for r in results)
        print(f"  {kind}: {rates}")
    for file_run, lake_run in zip(runs["file"], runs["lake"], strict=False):
        print(
            f"  lake / file: {lake_run.events_per_second / file_run.events_per_second:.2f} "
            f"({lake_run.name} vs {file_run.name})"
        )
    best = max(r.events_per_second for r in runs["lake"])
    verdict = "met" if best >= TARGET_EVENTS_PER_SECOND else "MISSED"
    print(
        f"  target >= {TARGET_EVENTS_PER_SECOND:,} events/s into the lake: {verdict} "
        f"(best {best:,.0f}; INGEST_FLUSH_EVENTS {args.flush_events:,})"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=1_000_000, help="frames in the stream")
    parser.add_argument(
        "--flush-events", type=int, default=IngestLimits().flush_events, help="INGEST_FLUSH_EVENTS"
    )
    parser.add_argument("--idle", type=float, default=1.0, help="INGEST_IDLE_SECONDS")
    parser.add_argument(
        "--max-seconds", type=float, default=900.0, help="INGEST_MAX_SECONDS: a run's time bound"
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
