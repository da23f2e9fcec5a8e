"""`bench.lake day`: a day of minute ingests into a lake, with and without housekeeping.

The frames of bench/synth.py's stream (over `--dids` DIDs: a modest collection) are decoded
and checked as the reader does (`decode_frame`) and cut into `--batches` batches of
`--events-per-batch` events, each built by the ingest's `BatchBuilder` and committed
through `apply_batch` in one `LakeStore.transact`, one after another: the writes a day of
minute ingest runs makes, without the minutes in between. With housekeeping, the four steps
of the hourly job (store/maintenance.py: flush inlined rows, compact, expire snapshots,
delete unreferenced files) run after every `--every` batches, each in its own transaction,
as the `lake_maintenance` assets run them (through the store's `housekeep` where it has one,
else `transact`). `--compact-alone` runs the compaction on a connection of its own instead,
each DuckLake call committing by itself (its time then includes attaching the lake): for code
whose `transact` cannot commit a compaction.

Expiry keeps `--keep-hours` of simulated time (a batch is a minute): snapshots older than
the commit of the batch that many hours back expire. The default is LAKE_KEEP_SNAPSHOT_HOURS
(24): in the first day nothing is old enough, as in a real first day.

Afterwards: what the lake holds (its footprint, Parquet files on disk, every ducklake_*
table's rows in the Postgres catalog), and what a first `/records` page costs then, each
on a fresh read (what the first asker after each minute's commit pays), against the same
day without housekeeping.
"""

from __future__ import annotations

import argparse
import functools
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import duckdb

from bench import synth
from bench.lake_common import (
    BenchLake,
    Steps,
    catalog_bytes,
    catalog_rows,
    files_on_disk,
    ms,
    new_lake,
    p50,
    percentile,
    summarize_catalog,
    timed_runs,
    timed_transact,
)
from mirror_api import queries
from mirror_api.sources.lake import LakeSource
from mirror_assets.atproto.events import BadFrame, decode_frame
from mirror_assets.config import LakeLimits, LakeLocation
from mirror_assets.model.apply import ApplyResult, apply_batch
from mirror_assets.model.batch import BatchBuilder, EventBatch
from mirror_assets.store import extensions, maintenance
from mirror_assets.store.lake import CATALOG, LakeStore, attach
from tests.support.events_factory import latest_us
from tests.support.postgres import PostgresServer

ENDPOINT = "ws://jetstream.bench"
COLLECTION = synth.COLLECTIONS[0]


def day_batches(args: argparse.Namespace) -> tuple[list[EventBatch], synth.StreamInfo]:
    spec = synth.StreamSpec(args.batches * args.events_per_batch, dids=args.dids, seed=args.seed)
    frames, _, info = synth.build_stream(spec.resolved())
    newest = latest_us()
    builder = BatchBuilder()
    batches = []
    for n, text in enumerate(frames, 1):
        event = decode_frame(text, newest)
        assert not isinstance(event, BadFrame), event
        builder.add(event)
        builder.advance(event.time_us, ENDPOINT)
        if n % args.events_per_batch == 0:
            batches.append(builder.build())
    return batches, info


@dataclass
class Day:
    name: str
    spans: list[float] = field(default_factory=list)  # each batch's transaction, seconds
    housekeeping: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = ""


def _compact_alone(location: LakeLocation) -> Any:
    """`maintenance.compact` on a connection of its own, each DuckLake call committing by
    itself, instead of inside `LakeStore.transact` (whose transactions also update
    `lake_writes`: DuckLake refuses to commit one that both changes data and compacts)."""

    def compact(_: duckdb.DuckDBPyConnection) -> int:
        con = duckdb.connect(":memory:", config=extensions.NO_DOWNLOADS)
        try:
            attach(con, location)
            con.execute(f"USE {CATALOG}")
            return maintenance.compact(con)
        finally:
            con.close()

    return compact


def _housekeeping(
    store: LakeStore, done: int, commits: list[float], keep_hours: float, compact_alone: bool
) -> dict:
    """The hourly job's four steps, each one transaction; counts and seconds of each."""
    keep_batches = int(keep_hours * 60)
    if done > keep_batches:
        # Older than the commit of the batch `keep_hours` of simulated minutes back.
        keep = timedelta(seconds=time.time() - commits[done - keep_batches - 1] + 0.001)
    else:
        keep = timedelta(hours=keep_hours)
    compact = _compact_alone(store.lake) if compact_alone else maintenance.compact
    steps = {
        "flush_inlined": maintenance.flush_inlined,
        "compact": compact,
        "expire_snapshots": lambda con: maintenance.expire_snapshots(con, keep),
        "delete_unreferenced": maintenance.delete_unreferenced,
    }
    result: dict[str, Any] = {}
    for name, step in steps.items():
        started = time.perf_counter()
        try:
            if step is compact and compact_alone:
                count = step(None)
            else:
                # The store's own way to run a housekeeping call, where it has one.
                count = getattr(store, "housekeep", store.transact)(step)[0]
        except duckdb.Error as error:  # reported, and the day goes on as the schedule would
            message = " ".join(str(error).split())
            print(f"  housekeeping after batch {done}: {name} FAILED: {message}", flush=True)
            count = -1
        result[name] = (count, time.perf_counter() - started)
    return result


def one_day(
    server: PostgresServer,
    name: str,
    batches: list[EventBatch],
    housekeeping: bool,
    args: argparse.Namespace,
    expected: tuple[int, int],
) -> None:
    lake = new_lake(server, name)
    store = LakeStore(lake.location)
    store.init()
    day = Day(name)
    commits: list[float] = []
    deadline = time.monotonic() + 60 * args.max_minutes
    started = time.perf_counter()
    steps = Steps()
    with timed_transact(store, steps) as flushes:
        _batches(store, batches, day, commits, housekeeping, deadline, args)
    seconds = time.perf_counter() - started
    applied = [f for f in flushes if isinstance(f.result, ApplyResult)]
    spent = sum(f.ended - f.started for f in applied)
    applying = sum(f.write_seconds for f in applied)
    print(
        f"  {name}: the batches' transactions {spent:.0f} s, of which the apply "
        f"{applying:.0f} s and the rest (BEGIN, schema check, lake_writes, COMMIT) "
        f"{spent - applying:.0f} s; by statement (all transactions, housekeeping's included):"
    )
    for key, total in sorted(steps.seconds.items(), key=lambda item: -item[1])[:12]:
        print(
            f"    {key:<28} {total:7.1f} s  {1000 * total / max(1, len(day.spans)):7.1f} ms/batch"
        )
    done = len(day.spans)
    _report(server, lake, store, day, done, seconds, batches, args, expected)


def _batches(
    store: LakeStore,
    batches: list[EventBatch],
    day: Day,
    commits: list[float],
    housekeeping: bool,
    deadline: float,
    args: argparse.Namespace,
) -> None:
    started = time.perf_counter()
    for n, batch in enumerate(batches, 1):
        if time.monotonic() > deadline:
            day.stopped = f"stopped by the time bound after {n - 1} batches"
            break
        began = time.perf_counter()
        store.transact(functools.partial(apply_batch, batch=batch))
        day.spans.append(time.perf_counter() - began)
        commits.append(time.time())
        if housekeeping and n % args.every == 0:
            day.housekeeping.append(
                _housekeeping(store, n, commits, args.keep_hours, args.compact_alone)
            )
        if n % 240 == 0:
            print(
                f"  {day.name}: {n} batches, {time.perf_counter() - started:.0f} s; last 60 "
                f"commits p50 {ms(p50(day.spans[-60:]))}",
                flush=True,
            )


def _report(
    server: PostgresServer,
    lake: BenchLake,
    store: LakeStore,
    day: Day,
    done: int,
    seconds: float,
    batches: list[EventBatch],
    args: argparse.Namespace,
    expected: tuple[int, int],
) -> None:
    name = day.name
    with store.reading() as con:
        held = maintenance.footprint(con, LakeLimits().small_file_bytes)
        live, tombstones = con.execute(
            "SELECT count(*) FILTER (WHERE NOT deleted), count(*) FILTER (WHERE deleted) "
            "FROM record_versions"
        ).fetchall()[0]
    store.close()
    rows = catalog_rows(lake)
    files, size = files_on_disk(lake)
    verified = (
        ("ok" if (live, tombstones) == expected else f"MISMATCH, expected {expected}")
        if done == len(batches)
        else "not checked: the day was cut short"
    )
    print(f"\n== {name}: {done} batches in {seconds:.0f} s {day.stopped}")
    first, last = day.spans[: args.every], day.spans[-args.every :]
    print(
        f"  batch commit p50: first {len(first)} {ms(p50(first))}, last {len(last)} "
        f"{ms(p50(last))} (p90 {ms(percentile(last, 0.9))})"
    )
    if day.housekeeping:
        totals: dict[str, list[float]] = {}
        for run in day.housekeeping:
            for step, (_, spent) in run.items():
                totals.setdefault(step, []).append(spent)
        print(
            f"  housekeeping: {len(day.housekeeping)} runs; per run p50 / max: "
            + ", ".join(f"{s} {ms(p50(t))} / {ms(max(t))}" for s, t in totals.items())
        )
        final = day.housekeeping[-1]
        print("  last run's counts: " + ", ".join(f"{s} {c}" for s, (c, _) in final.items()))
        failed = [
            (step, n)
            for n, run in enumerate(day.housekeeping, 1)
            for step, (count, _) in run.items()
            if count < 0
        ]
        if failed:
            print(f"  FAILED steps (step, housekeeping run): {failed}")
    print(f"  rows: {live:,} live, {tombstones:,} tombstones ({verified})")
    print(
        f"  footprint: {held.data_files:,} data files ({held.data_bytes / 1e6:,.1f} MB, "
        f"{held.small_files:,} small), {held.delete_files:,} delete files, "
        f"{held.snapshots:,} snapshots; on disk {files:,} Parquet files ({size / 1e6:,.1f} MB)"
    )
    print(f"  catalog: {catalog_bytes(lake) / 1e6:,.1f} MB, {summarize_catalog(rows)}")
    # What a first page costs now: a new reader (attach), then fresh reads.
    source = LakeSource(lake.location)
    began = time.perf_counter()
    with source.reading() as read:
        queries.records_page(read.cursor(), COLLECTION, 51, None, None)
    cold = time.perf_counter() - began

    def page() -> None:
        with source.reading() as read:
            queries.records_page(read.cursor(), COLLECTION, 51, None, None)

    times, _ = timed_runs(page, args.page_count, 120)
    versions, _ = timed_runs(source.version, args.page_count, 60)
    source.close()
    print(
        f"  first /records page: new reader {ms(cold)}; then on a fresh read p50 "
        f"{ms(p50(times))}, p90 {ms(percentile(times, 0.9))} (n={len(times)}); the snapshot "
        f"id every request asks p50 {ms(p50(versions))}",
        flush=True,
    )
    day_result = {
        "name": name,
        "batches": done,
        "seconds": seconds,
        "commit_first": p50(first),
        "commit_last": p50(last),
        "data_files": held.data_files,
        "delete_files": held.delete_files,
        "snapshots": held.snapshots,
        "files_on_disk": files,
        "catalog_rows": sum(rows.values()),
        "page_cold": cold,
        "page_p50": p50(times),
    }
    args.results.append(day_result)


def run(args: argparse.Namespace, server: PostgresServer) -> None:
    started = time.perf_counter()
    batches, info = day_batches(args)
    print(
        f"{len(batches)} batches of {args.events_per_batch} events ({info.creates:,} creates, "
        f"{info.updates:,} updates, {info.deletes:,} deletes, {info.identities:,} identity, "
        f"{info.accounts:,} account events over {args.dids:,} DIDs), decoded in "
        f"{time.perf_counter() - started:.0f} s; housekeeping every {args.every} batches, "
        f"snapshots kept {args.keep_hours:g} simulated hours"
        + (", compaction on a connection of its own" if args.compact_alone else ""),
        flush=True,
    )
    expected = (info.expected_live, info.expected_tombstones)
    args.results = []
    layouts = {"with": [True], "without": [False], "both": [True, False]}[args.housekeeping]
    for housekeeping in layouts:
        name = "day_with_housekeeping" if housekeeping else "day_without_housekeeping"
        if housekeeping and args.compact_alone:
            name += "_compact_alone"
        one_day(server, name, batches, housekeeping, args, expected)
    if len(args.results) == 2:
        with_, without = args.results
        print("\n== with / without housekeeping")
        for key in (
            "data_files",
            "delete_files",
            "snapshots",
            "files_on_disk",
            "catalog_rows",
            "commit_last",
            "page_cold",
            "page_p50",
        ):
            a, b = with_[key], without[key]
            ratio = f"{a / b:.2f}" if b else "-"
            print(f"  {key:14s} {a:>12,.4g} {b:>12,.4g}  ratio {ratio}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", type=int, default=1440, help="minute ingests in the day")
    parser.add_argument("--events-per-batch", type=int, default=300)
    parser.add_argument("--dids", type=int, default=2_000, help="users of the collection")
    parser.add_argument("--every", type=int, default=60, help="batches between housekeeping")
    parser.add_argument(
        "--keep-hours",
        type=float,
        default=LakeLimits().keep_snapshot_hours,
        help="LAKE_KEEP_SNAPSHOT_HOURS, in simulated hours",
    )
    parser.add_argument("--housekeeping", choices=("both", "with", "without"), default="both")
    parser.add_argument(
        "--compact-alone",
        action="store_true",
        help="compact on a connection of its own, not in LakeStore.transact (see README)",
    )
    parser.add_argument("--page-count", type=int, default=30, help="first pages timed")
    parser.add_argument("--max-minutes", type=float, default=30.0, help="time bound of each day")
    parser.add_argument("--seed", type=int, default=1)
