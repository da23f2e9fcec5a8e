"""Ingest benchmark: the real ingest cycle against a local Jetstream in another process.

    .venv/bin/python -m bench.ingest [--events N] [--preload M] [--repeat R] [--breakdown]
                                     [--cprofile] [--server lean|tests] [--keep]

A child process replays N synthetic events (bench/synth.py) as fast as the client takes
them; the client is `mirror_assets.runs.ingest.run_ingest(Settings(...))` on a fresh DuckDB file
under bench/out/. Reported per run:

* end to end events/s: frames / (time from the start of the cycle (cursor read, connect)
  until the last batch is committed). The cycle only ends after idle_seconds without a
  frame; if the last flush started after that wait (the tail of the stream), the wait is
  subtracted. A flush that runs during the wait (an ingest that writes one batch while it
  reads the next) counts as it ran. report.seconds - idle_seconds is printed beside it;
* apply rows/s: commit rows / report.applied.seconds (apply_batch alone), and the whole
  flush (lock, connect, migrate check, apply, COMMIT, close) per event;
* where the time goes: flush wall time split by statement, Arrow batch build, and the
  rest of the event loop (websocket receive, decode, batching);
* bytes per stored record: file size after CHECKPOINT / live rows of record_versions.

With `--preload M` it runs a "touch" stream (half new records, half updates/deletes of
preloaded records) twice on the same frames: once on an empty table and once after M
records were bulk-loaded into record_versions, and prints both per-event costs and their
ratio. Accounts and backfills for the DIDs are preloaded in both runs, so the only
difference is the size of record_versions.

`--breakdown` also measures the ceiling of each client stage on its own (websocket receive,
receive under a per-frame timer, the Jetstream reader with decoding, reader plus batching)
and in-process decode/batch costs. `--cprofile` profiles the event loop thread of one
extra run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import multiprocessing as mp
import pstats
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import pyarrow as pa
import websockets

import mirror_assets.runs.ingest as ingest_module
import mirror_assets.store.file as store_module
from bench import synth
from bench.server import serve
from mirror_assets.atproto.events import decode_frame
from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.config import IngestLimits, Settings
from mirror_assets.model import accounts, backfills, cursor, records
from mirror_assets.model.batch import BatchBuilder
from mirror_assets.network.jetstream import JetstreamReader
from mirror_assets.runs.ingest import run_ingest
from mirror_assets.store.file import FileStore

OUT = Path(__file__).resolve().parent / "out"
TRACKED = CollectionFilter.parse(synth.TRACKED)


# -- the Jetstream child process --------------------------------------------------------


class ServerProcess:
    """The stream's server in a child process (spawned: no DuckDB state is forked)."""

    def __init__(self, spec: synth.StreamSpec, kind: str) -> None:
        context = mp.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child, spec, kind), daemon=True)
        started = time.perf_counter()
        self.process.start()
        tag, info = self.conn.recv()
        assert tag == "info"
        self.info = synth.StreamInfo(**info)
        tag, port = self.conn.recv()
        assert tag == "ready"
        self.url = f"ws://127.0.0.1:{port}"
        self.startup_seconds = time.perf_counter() - started

    def send_stats(self) -> list[dict[str, Any]]:
        self.conn.send("stats")
        stats: list[dict[str, Any]] = self.conn.recv()
        return stats

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("stop")
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)


# -- instrumentation --------------------------------------------------------------------


def _statement_names() -> dict[str, str]:
    names = {
        value: name.strip("_").lower()
        for module in (accounts, backfills, cursor, records)
        for name, value in vars(module).items()
        if name.startswith("_") and isinstance(value, str) and len(value) > 30
    }
    names.update({"BEGIN TRANSACTION": "begin", "COMMIT": "commit", "ROLLBACK": "rollback"})
    return names


@dataclass
class Probe:
    """Timers around the ingest cycle's flushes; patched in for one run, then removed."""

    statements: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    flushes: list[tuple[float, float, int, float]] = field(default_factory=list)
    commits: list[float] = field(default_factory=list)  # COMMIT seconds per flush
    last_delivery: float = 0.0  # time.monotonic() when the reader yielded its last event
    build_seconds: float = 0.0
    names: dict[str, str] = field(default_factory=_statement_names)

    def timed_execute(self, con: duckdb.DuckDBPyConnection, sql: str, *args: Any) -> Any:
        started = time.perf_counter()
        con.execute(sql, *args)
        # Statements made from a template at call time are named by their first words.
        key = self.names.get(sql) or " ".join(sql.split()[:3]).lower()
        self.statements[key] += time.perf_counter() - started
        return con

    @contextlib.contextmanager
    def installed(self) -> Iterator[Probe]:
        probe = self

        class TimedConnection:
            def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
                self._con = con

            def execute(self, sql: str, *args: Any) -> Any:
                probe.timed_execute(self._con, sql, *args)
                return self

            def close(self) -> None:
                started = time.perf_counter()
                self._con.close()
                probe.statements["close (checkpoint)"] += time.perf_counter() - started

            def __getattr__(self, name: str) -> Any:
                return getattr(self._con, name)

        def connect(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            con = duckdb.connect(*args, **kwargs)
            probe.statements["connect"] += time.perf_counter() - started
            return TimedConnection(con)

        real_transact = FileStore.transact

        def transact(store: FileStore, write: Any) -> Any:
            started = time.monotonic()
            commit_before = probe.statements["commit"]
            result, waited = real_transact(store, write)
            ended = time.monotonic()
            rows = result.upserted + result.tombstoned + result.stale  # the batch's commits
            probe.flushes.append((started, ended, rows, result.seconds))
            probe.commits.append(probe.statements["commit"] - commit_before)
            return result, waited

        class TimedBuilder(BatchBuilder):
            def build(self) -> Any:
                started = time.perf_counter()
                batch = super().build()
                probe.build_seconds += time.perf_counter() - started
                return batch

        class TimedReader(JetstreamReader):
            async def deliveries(self) -> AsyncIterator[Any]:
                async for delivery in super().deliveries():
                    probe.last_delivery = time.monotonic()
                    yield delivery

        shim = SimpleNamespace(connect=connect, DuckDBPyConnection=duckdb.DuckDBPyConnection)
        saved = (
            store_module.duckdb,
            FileStore.transact,
            ingest_module.BatchBuilder,
            ingest_module.JetstreamReader,
        )
        store_module.duckdb = shim  # type: ignore[assignment]
        FileStore.transact = transact  # type: ignore[method-assign]
        ingest_module.BatchBuilder = TimedBuilder  # type: ignore[misc]
        ingest_module.JetstreamReader = TimedReader  # type: ignore[misc]
        try:
            yield self
        finally:
            (
                store_module.duckdb,
                FileStore.transact,  # type: ignore[method-assign]
                ingest_module.BatchBuilder,
                ingest_module.JetstreamReader,
            ) = saved


# -- one measured run ---------------------------------------------------------------------


def remove_db(path: Path) -> None:
    for suffix in ("", ".wal", ".gate", ".rw", ".tmp"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def settings_for(url: str, db: Path, args: argparse.Namespace) -> Settings:
    return Settings(
        collections=TRACKED,
        jetstream_urls=(url,),
        db_path=db,
        ingest=IngestLimits(
            idle_seconds=args.idle,
            max_seconds=3600.0,
            max_events=10**12,
            flush_events=args.flush_events,
        ),
    )


@dataclass
class RunResult:
    name: str
    frames: int
    seconds: float  # report.seconds
    e2e_seconds: float  # start -> last commit, less the idle wait if the last flush followed it
    report_e2e_seconds: float  # report.seconds - idle_seconds
    read_seconds: float  # start -> last event handed over by the reader
    apply_seconds: float
    commit_rows: int
    flush_seconds: float
    build_seconds: float
    flushes: int
    loop_cpu_seconds: float  # CPU of the event loop thread: receive, decode, batch
    other_cpu_seconds: float  # CPU of every other thread: DuckDB, the flush worker
    statements: dict[str, float]
    per_flush: list[tuple[int, float, float, float]]  # rows, apply s, COMMIT s, wall s
    rows_written: int
    live_rows: int
    tombstones: int
    file_bytes: int
    used_bytes: int
    free_bytes: int
    checkpoint_seconds: float
    verified: str
    stop_reason: str | None
    server_send_seconds: float | None
    server_cpu_seconds: float | None

    @property
    def events_per_second(self) -> float:
        return self.frames / self.e2e_seconds

    @property
    def us_per_event(self) -> float:
        return 1e6 * self.e2e_seconds / self.frames

    @property
    def loop_seconds(self) -> float:
        return self.e2e_seconds - self.flush_seconds - self.build_seconds


def measure(
    name: str,
    server: ServerProcess,
    db: Path,
    args: argparse.Namespace,
    expected: tuple[int, int],
) -> RunResult:
    probe = Probe()
    settings = settings_for(server.url, db, args)
    sent_before = len(server.send_stats())
    with probe.installed():
        started = time.monotonic()
        cpu_started, thread_started = time.process_time(), time.thread_time()
        report = run_ingest(settings)
        loop_cpu = time.thread_time() - thread_started
        process_cpu = time.process_time() - cpu_started
    sent = server.send_stats()[sent_before:]
    idle = settings.ingest.idle_seconds
    # End to end: from the start of the cycle until the last row is committed. A flush that
    # only started after the idle wait (the tail of the stream) waited idle_seconds for
    # nothing: that wait is subtracted. A flush already running during the idle wait (the
    # ingest writes one batch while it reads the next) is counted as it ran.
    last_start, last_end = (probe.flushes[-1][0], probe.flushes[-1][1]) if probe.flushes else (0, 0)
    tail_after_idle = last_start >= probe.last_delivery + idle - 0.05
    e2e = last_end - started - (idle if tail_after_idle else 0.0)

    check_started = time.perf_counter()
    con = duckdb.connect(str(db))
    try:
        con.execute("CHECKPOINT")
        checkpoint_seconds = time.perf_counter() - check_started
        size = con.execute(
            "SELECT block_size, used_blocks, free_blocks FROM pragma_database_size()"
        ).fetchall()[0]
        live, tombstones = con.execute(
            "SELECT count(*) FILTER (WHERE NOT deleted), count(*) FILTER (WHERE deleted) "
            "FROM record_versions"
        ).fetchall()[0]
    finally:
        con.close()
    verified = "ok" if (live, tombstones) == expected else f"MISMATCH, expected {expected}"
    if report.stats.skipped:
        verified += f" skipped={dict(report.stats.skipped)}"
    if report.stats.refused:
        verified += f" refused={dict(report.stats.refused.counts)}"
    applied = report.applied
    return RunResult(
        name=name,
        frames=report.stats.frames,
        seconds=report.seconds,
        e2e_seconds=e2e,
        report_e2e_seconds=report.seconds - idle,
        read_seconds=probe.last_delivery - started,
        apply_seconds=applied.seconds,
        commit_rows=sum(f[2] for f in probe.flushes),
        flush_seconds=sum(end - start for start, end, _, _ in probe.flushes),
        build_seconds=probe.build_seconds,
        flushes=report.flushes,
        loop_cpu_seconds=loop_cpu,
        other_cpu_seconds=process_cpu - loop_cpu,
        statements=dict(probe.statements),
        per_flush=[
            (rows, apply_s, commit_s, end - start)
            for (start, end, rows, apply_s), commit_s in zip(
                probe.flushes, probe.commits, strict=True
            )
        ],
        rows_written=applied.upserted + applied.tombstoned,
        live_rows=live,
        tombstones=tombstones,
        file_bytes=db.stat().st_size,
        used_bytes=size[0] * size[1],
        free_bytes=size[0] * size[2],
        checkpoint_seconds=checkpoint_seconds,
        verified=verified,
        stop_reason=None if report.stats.stop_reason is None else str(report.stats.stop_reason),
        server_send_seconds=sent[0]["seconds"] if sent else None,
        server_cpu_seconds=sent[0]["cpu_seconds"] if sent else None,
    )


# -- preloading -------------------------------------------------------------------------


def preload(
    db: Path, spec: synth.StreamSpec, records: int, chunk: int = 1_000_000
) -> dict[str, float]:
    """Schema, accounts and backfills for every DID, then `records` rows by Arrow INSERT."""
    remove_db(db)
    FileStore(db).init()
    started = time.perf_counter()
    dids = synth.make_dids(spec.dids, spec.seed)
    con = duckdb.connect(str(db))
    try:
        accounts = pa.table({"did": dids})
        con.register("preload_accounts", accounts)
        columns = {
            row[0]
            for row in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = 'accounts'"
            ).fetchall()
        }
        # Seen before the stream starts (schemas that track a DID's first live commit).
        first_seen = (
            ("first_seen_us, ", f"{spec.preload_base_us}, ")
            if "first_seen_us" in columns
            else ("", "")
        )
        con.execute(
            f"INSERT INTO accounts (did, status, hidden, {first_seen[0]}first_seen_at, "
            f"updated_at) SELECT did, 'active', false, {first_seen[1]}now(), now() "
            "FROM preload_accounts"
        )
        con.execute(
            "INSERT INTO backfills (did, collection, status, updated_at) "
            "SELECT did, c.collection, 'done', now() FROM preload_accounts, "
            f"(SELECT unnest({list(synth.COLLECTIONS)}) AS collection) c"
        )
        con.unregister("preload_accounts")
        generate = insert = 0.0
        if records:
            insert_sql = _preload_insert(con)
            pools = synth.PreloadPools(spec.seed)
            did_array = pa.array(dids)
            for start in range(0, records, chunk):
                t0 = time.perf_counter()
                table = synth.preload_chunk(
                    start, min(records, start + chunk), spec, did_array, pools
                )
                t1 = time.perf_counter()
                con.register("preload_chunk", table)
                con.execute(insert_sql)
                con.unregister("preload_chunk")
                insert += time.perf_counter() - t1
                generate += t1 - t0
                print(
                    f"  preloaded {min(records, start + chunk):>11,} rows "
                    f"({time.perf_counter() - started:6.1f} s)",
                    flush=True,
                )
        t0 = time.perf_counter()
        con.execute("CHECKPOINT")
        checkpoint = time.perf_counter() - t0
    finally:
        con.close()
    return {
        "seconds": time.perf_counter() - started,
        "generate_seconds": generate,
        "insert_seconds": insert,
        "checkpoint_seconds": checkpoint,
        "file_bytes": db.stat().st_size,
    }


# How each column of record_versions is filled from a preload chunk; the statement follows
# the table's actual columns, so it keeps working as the schema changes.
_PRELOAD_COLUMNS = {
    "record": "record::JSON",
    "indexed_at": "now()",
    "uri_hash": "md5_number_lower(uri)",
}


def _preload_insert(con: duckdb.DuckDBPyConnection) -> str:
    columns = [
        row[0]
        for row in con.execute(
            "SELECT column_name FROM duckdb_columns() "
            "WHERE table_name = 'record_versions' ORDER BY column_index"
        ).fetchall()
    ]
    known = {*synth.PRELOAD_FIELDS, *_PRELOAD_COLUMNS}
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise SystemExit(f"preload does not know how to fill record_versions.{unknown}")
    select = ", ".join(_PRELOAD_COLUMNS.get(c, c) for c in columns)
    return f"INSERT INTO record_versions ({', '.join(columns)}) SELECT {select} FROM preload_chunk"


# -- stage ceilings ---------------------------------------------------------------------


async def _drain(url: str, frames: int, mode: str, args: argparse.Namespace) -> float:
    """Seconds to take `frames` frames off the socket in one of several client modes."""
    settings = settings_for(url, OUT / "unused.duckdb", args)
    if mode in ("recv", "timeout", "wait_for"):
        async with websockets.connect(
            url + "/subscribe", max_size=4 * 1024 * 1024, compression=None
        ) as ws:
            started = time.perf_counter()
            for _ in range(frames):
                if mode == "recv":
                    await ws.recv()
                elif mode == "timeout":
                    async with asyncio.timeout(args.idle):
                        await ws.recv()
                else:
                    await asyncio.wait_for(ws.recv(), timeout=args.idle)
            return time.perf_counter() - started
    reader = JetstreamReader(settings.jetstream_urls, TRACKED, settings.ingest, None)
    builder = BatchBuilder()
    started = time.perf_counter()
    last = started
    count = 0
    async with contextlib.aclosing(reader.deliveries()) as deliveries:
        async for delivery in deliveries:
            if mode == "reader+builder":
                if delivery.event is not None:
                    builder.add(delivery.event)
                builder.advance(delivery.time_us, delivery.endpoint)
                if len(builder) >= args.flush_events:
                    builder.build()
            count += 1
            last = time.perf_counter()
            if count >= frames:
                break
    if mode == "reader+builder" and builder.has_pending:
        builder.build()
        last = time.perf_counter()
    return last - started


def breakdown(server: ServerProcess, args: argparse.Namespace) -> list[tuple[str, float, str]]:
    rows: list[tuple[str, float, str]] = []
    frames = server.info.frames
    for mode, what in (
        ("recv", "websocket recv() alone (websockets, asyncio)"),
        ("timeout", "recv() under a per-frame asyncio.timeout"),
        ("wait_for", "recv() under a per-frame asyncio.wait_for (a task each)"),
        ("reader", "JetstreamReader.deliveries(): + decode, filter, stats"),
        ("reader+builder", "reader + BatchBuilder.add/advance + build() per flush"),
    ):
        seconds = asyncio.run(_drain(server.url, frames, mode, args))
        rows.append((mode, 1e6 * seconds / frames, what))
    # In-process costs on a sample of the same kind of stream, without any socket.
    sample_spec = synth.StreamSpec(min(frames, 200_000), shape="fresh").resolved()
    texts, _, _ = synth.build_stream(sample_spec)
    latest_us = time.time_ns() // 1000 + 600_000_000
    started = time.perf_counter()
    events = [decode_frame(text, latest_us) for text in texts]
    decode_us = 1e6 * (time.perf_counter() - started) / len(texts)
    builder = BatchBuilder()
    add_seconds = build_seconds = 0.0
    for offset in range(0, len(events), args.flush_events):
        started = time.perf_counter()
        for event in events[offset : offset + args.flush_events]:
            builder.add(event)  # type: ignore[arg-type]
            builder.advance(1, "x")
        mid = time.perf_counter()
        builder.build()
        add_seconds += mid - started
        build_seconds += time.perf_counter() - mid
    rows.append(("decode_frame", decode_us, "decode and check one frame (in process)"))
    rows.append(("builder.add", 1e6 * add_seconds / len(events), "add + advance (in process)"))
    rows.append(("builder.build", 1e6 * build_seconds / len(events), "Arrow tables (in process)"))
    return rows


def profile_run(server: ServerProcess, args: argparse.Namespace, expected: tuple[int, int]) -> str:
    db = OUT / "profile.duckdb"
    remove_db(db)
    profiler = cProfile.Profile()
    profiler.enable()
    result = measure("cprofile", server, db, args, expected)
    profiler.disable()
    remove_db(db)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(25)
    return (
        f"(event loop thread only; apply runs in a worker thread and is not in here; "
        f"profiled run: {result.events_per_second:,.0f} events/s)\n" + text.getvalue()
    )


# -- printing -----------------------------------------------------------------------------


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def print_run(r: RunResult) -> None:
    print(f"\n== {r.name}")
    rows = [
        ("frames", f"{r.frames:,}  (stop: {r.stop_reason}, {r.flushes} flushes)"),
        ("report.seconds (incl. idle wait)", f"{r.seconds:.2f} s"),
        (
            "end to end (start -> last commit)",
            f"{r.e2e_seconds:.2f} s  (report.seconds - idle: {r.report_e2e_seconds:.2f} s)",
        ),
        ("END TO END events/s", f"{r.events_per_second:,.0f}  ({r.us_per_event:.1f} us/event)"),
        ("  reading done (last event handed over)", f"{r.read_seconds:.2f} s"),
    ]
    if r.server_send_seconds is not None:
        rows.append(
            (
                "  server: all bytes handed to kernel",
                f"{r.server_send_seconds:.2f} s (server CPU {r.server_cpu_seconds:.2f} s)",
            )
        )
    rows += [
        (
            "APPLY rows/s (apply_batch alone)",
            f"{r.commit_rows / r.apply_seconds:,.0f}  ({r.commit_rows:,} commit rows in "
            f"{r.apply_seconds:.2f} s; {r.rows_written:,} written)",
        ),
        (
            "flush (lock+open+apply+COMMIT+close)",
            f"{r.flush_seconds:.2f} s = {1e6 * r.flush_seconds / r.frames:.1f} us/event "
            f"({100 * r.flush_seconds / r.e2e_seconds:.0f} %)",
        ),
        (
            "Arrow batch build (event loop)",
            f"{r.build_seconds:.2f} s = {1e6 * r.build_seconds / r.frames:.1f} us/event "
            f"({100 * r.build_seconds / r.e2e_seconds:.0f} %)",
        ),
        (
            "rest of loop (e2e - flush - build)",
            f"{r.loop_seconds:.2f} s = {1e6 * r.loop_seconds / r.frames:.1f} us/event "
            f"({100 * r.loop_seconds / r.e2e_seconds:.0f} %; < 0: flushes overlap reading)",
        ),
        (
            "CPU: event loop thread",
            f"{r.loop_cpu_seconds:.2f} s = {1e6 * r.loop_cpu_seconds / r.frames:.1f} us/event "
            "(recv, decode, batch, build)",
        ),
        (
            "CPU: other threads (DuckDB...)",
            f"{r.other_cpu_seconds:.2f} s = {1e6 * r.other_cpu_seconds / r.frames:.1f} us/event",
        ),
        ("live rows / tombstones", f"{r.live_rows:,} / {r.tombstones:,}  ({r.verified})"),
        (
            "BYTES per live record",
            f"{r.file_bytes / max(1, r.live_rows):,.0f}  (file {_mb(r.file_bytes)} after "
            f"CHECKPOINT, {r.file_bytes / max(1, r.live_rows + r.tombstones):,.0f} per row incl. "
            f"tombstones)",
        ),
        (
            "  blocks in use / free",
            f"{_mb(r.used_bytes)} = {r.used_bytes / max(1, r.live_rows):,.0f} B/live record / "
            f"{_mb(r.free_bytes)} free",
        ),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    if len(r.per_flush) >= 4:
        print("  per flush, first 2 / middle / last 2 (us per commit row):")
        picks = [0, 1, len(r.per_flush) // 2, len(r.per_flush) - 2, len(r.per_flush) - 1]
        for i in picks:
            rows, apply_s, commit_s, wall_s = r.per_flush[i]
            n = max(1, rows)
            print(
                f"    #{i + 1:<3} {rows:>7,} rows  apply {1e6 * apply_s / n:6.1f}  "
                f"COMMIT {1e6 * commit_s / n:6.1f}  whole flush {1e6 * wall_s / n:6.1f}"
            )
    print("  flush time by step:")
    for key, seconds in sorted(r.statements.items(), key=lambda item: -item[1]):
        if seconds >= 0.005:
            print(f"    {key:<24} {seconds:8.2f} s  {1e6 * seconds / r.frames:6.1f} us/event")


def print_summary(results: list[RunResult], args: argparse.Namespace) -> None:
    print("\n== summary")
    header = (
        f"  {'run':<22}{'frames':>11}{'e2e s':>8}{'events/s':>10}{'us/ev':>7}"
        f"{'apply rows/s':>13}{'flush us/ev':>12}{'loopCPU/ev':>11}{'B/record':>9}"
    )
    print(header)
    for r in results:
        print(
            f"  {r.name:<22}{r.frames:>11,}{r.e2e_seconds:>8.2f}{r.events_per_second:>10,.0f}"
            f"{r.us_per_event:>7.1f}{r.commit_rows / r.apply_seconds:>13,.0f}"
            f"{1e6 * r.flush_seconds / r.frames:>12.1f}"
            f"{1e6 * r.loop_cpu_seconds / r.frames:>11.1f}"
            f"{r.file_bytes / max(1, r.live_rows):>9,.0f}"
        )
    target = 50_000
    best = max(r.events_per_second for r in results)
    print(
        f"  target {target:,} events/s end to end: "
        f"{'met' if best >= target else 'MISSED'} (best {best:,.0f})"
    )
    empty = [r for r in results if r.name.startswith("empty")]
    loaded = [r for r in results if r.name.startswith("preloaded")]
    if empty and loaded:
        print(f"\n== flatness: per-event cost with {args.preload:,} preloaded records vs empty")
        for a, b in zip(empty, loaded, strict=False):
            print(
                f"  end to end : {a.us_per_event:6.1f} -> {b.us_per_event:6.1f} us/event  "
                f"ratio {b.us_per_event / a.us_per_event:.2f}"
            )
            ea, eb = 1e6 * a.apply_seconds / a.frames, 1e6 * b.apply_seconds / b.frames
            print(f"  apply only : {ea:6.1f} -> {eb:6.1f} us/event  ratio {eb / ea:.2f}")
            fa, fb = 1e6 * a.flush_seconds / a.frames, 1e6 * b.flush_seconds / b.frames
            print(f"  whole flush: {fa:6.1f} -> {fb:6.1f} us/event  ratio {fb / fa:.2f}")


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="events to replay (N)")
    parser.add_argument(
        "--preload", type=int, default=0, help="records to preload (M); runs empty vs preloaded"
    )
    parser.add_argument("--repeat", type=int, default=1, help="measure each run this many times")
    parser.add_argument("--idle", type=float, default=1.0, help="INGEST_IDLE_SECONDS")
    parser.add_argument(
        "--flush-events", type=int, default=IngestLimits().flush_events, help="INGEST_FLUSH_EVENTS"
    )
    parser.add_argument("--server", choices=("lean", "tests"), default="lean")
    parser.add_argument("--breakdown", action="store_true", help="measure each client stage")
    parser.add_argument("--cprofile", action="store_true", help="profile the event loop thread")
    parser.add_argument("--keep", action="store_true", help="keep the DuckDB files in bench/out")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    shape = "touch" if args.preload else "fresh"
    spec = synth.StreamSpec(args.events, shape=shape, preload=args.preload, seed=args.seed)
    spec = spec.resolved()
    print(
        f"ingest benchmark: {args.events:,} events ({shape} stream), preload {args.preload:,}, "
        f"flush_events {args.flush_events:,}, idle {args.idle} s, server {args.server}, "
        f"duckdb {duckdb.__version__}, python {sys.version.split()[0]}",
        flush=True,
    )
    server = ServerProcess(spec, args.server)
    info = server.info
    print(
        f"stream: {info.frames:,} frames, {_mb(info.bytes)} "
        f"({info.bytes / info.frames:.0f} B/frame, "
        f"records {info.record_bytes} B): {info.creates:,} creates, {info.updates:,} updates, "
        f"{info.deletes:,} deletes, {info.identities:,} identity, {info.accounts:,} account; "
        f"built in {info.build_seconds:.1f} s, server ready in {server.startup_seconds:.1f} s",
        flush=True,
    )
    results: list[RunResult] = []
    created: list[Path] = []
    try:
        if args.preload:
            empty_template = OUT / "empty-template.duckdb"
            loaded_template = OUT / f"preload-{args.preload}.duckdb"
            created += [empty_template, loaded_template]
            preload(empty_template, spec, 0)
            print(f"preloading {args.preload:,} records into {loaded_template} ...", flush=True)
            loaded = preload(loaded_template, spec, args.preload)
            print(
                f"preload: {loaded['seconds']:.1f} s (generate {loaded['generate_seconds']:.1f}, "
                f"insert {loaded['insert_seconds']:.1f}, checkpoint "
                f"{loaded['checkpoint_seconds']:.1f}); file {_mb(loaded['file_bytes'])} = "
                f"{loaded['file_bytes'] / max(1, args.preload):.0f} B/record",
                flush=True,
            )
            plan = [
                ("empty", empty_template, (info.expected_live, info.expected_tombstones)),
                (
                    "preloaded",
                    loaded_template,
                    (info.expected_live_preloaded, info.expected_tombstones_preloaded),
                ),
            ]
        else:
            plan = [("empty", None, (info.expected_live, info.expected_tombstones))]
        for attempt in range(1, args.repeat + 1):
            for name, template, expected in plan:
                db = OUT / f"run-{name}.duckdb"
                created.append(db)
                remove_db(db)
                if template is not None:
                    shutil.copyfile(template, db)
                label = f"{name} #{attempt}" if args.repeat > 1 else name
                print(f"\nrunning {label} ...", flush=True)
                result = measure(label, server, db, args, expected)
                results.append(result)
                print_run(result)
        print_summary(results, args)
        if args.breakdown:
            print("\n== client stages on their own (us/frame; 1e6 / value = frames/s)")
            for mode, us, what in breakdown(server, args):
                print(f"  {mode:<16}{us:7.2f} us  {1e6 / us:>11,.0f}/s  {what}")
        if args.cprofile:
            expected = plan[0][2]
            print("\n== cProfile of one run, by own time")
            print(profile_run(server, args, expected))
    finally:
        server.stop()
        if not args.keep:
            for path in created:
                remove_db(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
