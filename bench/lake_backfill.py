"""`bench.lake backfill`: backfill writers on one lake, one process against two.

A child process serves bench/backfill.py's PLC directory and PDS (`--dids` repos of
`--records` records, every answer `--latency-ms` late). For each layout a fresh lake gets
every DID queued, then the writers start together (each a spawned process that has
attached the lake already): one `run_backfill` over every DID, or two over disjoint halves.
Each writer counts its lake transactions and their conflicts in its own process (a
conflict is one retry: `LakeStore.transact` runs the transaction again).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.backfill import COLLECTION, start_stand_in
from bench.lake_common import Steps, counted_conflicts, new_lake, timed_transact
from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.config import LAKE_PREFIX, BackfillLimits, LakeLocation, Settings
from mirror_assets.model.backfills import queue
from mirror_assets.runs.backfill import run_backfill
from mirror_assets.store.lake import LakeStore
from tests.support.events_factory import numbered_did
from tests.support.postgres import PostgresServer

TARGET_RATIO = 1.8


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's live threads (Linux /proc): the event loop's, Python's
    worker threads (the committer's `asyncio.to_thread`, by their Python names), and the
    threads Python does not know (DuckDB's)."""
    ticks = os.sysconf("SC_CLK_TCK")
    names = {
        thread.native_id: thread.name.rstrip("0123456789_-") for thread in threading.enumerate()
    }
    cpu: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        group = names.get(int(task.name), "DuckDB and other native threads")
        cpu[group] = cpu.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return cpu


def with_exited(threads: dict[str, float]) -> dict[str, float]:
    """The threads' CPU, and what threads that have ended used (the process's CPU time less
    the live threads'): the committer's `asyncio.to_thread` workers, gone with their loop."""
    return threads | {
        "ended threads (commit workers; DuckDB's once closed)": time.process_time()
        - sum(threads.values())
    }


def writer(
    catalog: str, data_path: str, plc: str, dids: list[str], run_seconds: float, conn: Connection
) -> None:
    """A writer process: attach the lake, say so, wait for the start, backfill, report."""
    settings = Settings(
        collections=CollectionFilter.parse(COLLECTION),
        store=LAKE_PREFIX + catalog,
        data_path=data_path,
        plc_url=plc,
        handle_resolver_url=plc,
        allow_private_network=True,
        backfill=BackfillLimits(run_seconds=run_seconds),
    )
    store = LakeStore(LakeLocation(catalog, data_path))
    with store.reading():  # attached, the schema there
        pass
    conn.send("ready")
    conn.recv()
    steps = Steps()
    with counted_conflicts() as conflicts, timed_transact(store, steps) as flushes:
        started, cpu = time.time(), time.process_time()
        report = run_backfill(settings, dids, store=store)
        ended, cpu = time.time(), time.process_time() - cpu
    store.close()
    conn.send(
        {
            "started": started,
            "ended": ended,
            "summary": report.summary(),
            "apply_seconds": report.applied.seconds,
            "cpu_seconds": cpu,
            "threads": with_exited(thread_cpu()),
            "transactions_seconds": sum(f.ended - f.started for f in flushes),
            "steps": dict(sorted(steps.seconds.items(), key=lambda item: -item[1])[:8]),
            **conflicts.as_dict(),
        }
    )


def one_layout(
    server: PostgresServer,
    name: str,
    plc: str,
    dids: list[str],
    writers: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    lake = new_lake(server, name)
    store = LakeStore(lake.location)
    store.transact(lambda con: queue(con, [(did, COLLECTION) for did in dids]))
    context = mp.get_context("spawn")
    halves = [dids[i::writers] for i in range(writers)]
    processes, pipes = [], []
    for part in halves:
        parent, child = context.Pipe()
        process = context.Process(
            target=writer,
            args=(
                lake.location.catalog,
                lake.location.data_path,
                plc,
                part,
                args.run_seconds,
                child,
            ),
            daemon=True,
        )
        process.start()
        processes.append(process)
        pipes.append(parent)
    try:
        for pipe in pipes:
            if not pipe.poll(120):
                raise RuntimeError("a writer did not attach the lake within 120 s")
            assert pipe.recv() == "ready"
        go = time.time()
        for pipe in pipes:
            pipe.send("go")
        reports = []
        for pipe in pipes:
            if not pipe.poll(args.run_seconds + 120):
                raise RuntimeError("a writer did not finish in time")
            reports.append(pipe.recv())
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
    seconds = max(r["ended"] for r in reports) - go
    with store.reading() as con:
        rows = con.execute("SELECT count(*) FROM records").fetchall()[0][0]
        snapshots = con.execute("SELECT count(*) FROM ducklake_snapshots('mirror')").fetchall()[0][
            0
        ]
    store.close()
    return {
        "writers": writers,
        "rows": rows,
        "seconds": seconds,
        "rate": rows / seconds,
        "snapshots": snapshots,
        "reports": reports,
    }


def print_layout(result: dict[str, Any], expected: int) -> None:
    ok = "ok" if result["rows"] == expected else f"MISMATCH, expected {expected:,}"
    print(
        f"  {result['writers']} writer(s): {result['rows']:,} records ({ok}) in "
        f"{result['seconds']:.2f} s = {result['rate']:,.0f} records/s; "
        f"{result['snapshots']} snapshots"
    )
    for n, report in enumerate(result["reports"], 1):
        summary = report["summary"]
        own = report["ended"] - report["started"]
        print(
            f"    writer {n}: {summary['dids']} DIDs, {summary['pages']} pages in {own:.2f} s; "
            f"{report['transactions']} transactions, {report['conflicts']} conflicted and "
            f"were retried, {report['waited_seconds']:.2f} s waited for conflicts (longest "
            f"{report['longest_wait_seconds']:.2f} s); apply {report['apply_seconds']:.2f} s, "
            f"process CPU {report['cpu_seconds']:.2f} s"
        )
        threads = sorted(report["threads"].items(), key=lambda item: -item[1])
        print(
            "      CPU by thread (whole process life): "
            + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in threads if seconds >= 0.05)
        )
        print(
            f"      its transactions {report['transactions_seconds']:.2f} s (wall, retries "
            "included); by statement: "
            + ", ".join(f"{key} {seconds:.2f} s" for key, seconds in report["steps"].items())
        )
        for message, count in report["messages"].items():
            print(f"      {count} x {message}")


def run(args: argparse.Namespace, server: PostgresServer) -> None:
    expected = args.dids * args.records
    stand_in, plc, _ = start_stand_in(args.dids, args.records, args.latency_ms)
    dids = [numbered_did(d) for d in range(args.dids)]
    results: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    try:
        for attempt in range(1, args.repeat + 1):
            for writers in (1, 2):
                print(f"\nround {attempt}, {writers} writer(s) ...", flush=True)
                result = one_layout(
                    server, f"backfill_{writers}_{attempt}", plc, dids, writers, args
                )
                results[writers].append(result)
                print_layout(result, expected)
    finally:
        stand_in.terminate()
    one = statistics.median(r["rate"] for r in results[1])
    two = statistics.median(r["rate"] for r in results[2])
    print(
        f"\nmedian: 1 writer {one:,.0f} records/s, 2 writers {two:,.0f} records/s, "
        f"2 / 1 = {two / one:.2f} (target >= {TARGET_RATIO}: "
        f"{'met' if two / one >= TARGET_RATIO else 'MISSED'})"
    )
    for writers, layout in results.items():
        transactions = sum(r["transactions"] for res in layout for r in res["reports"])
        conflicts = sum(r["conflicts"] for res in layout for r in res["reports"])
        print(
            f"  {writers} writer(s): {transactions} lake transactions, {conflicts} conflicted "
            f"and were retried (all rounds)"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dids", type=int, default=200)
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--run-seconds", type=float, default=600.0, help="BACKFILL_RUN_SECONDS: a run's time bound"
    )
