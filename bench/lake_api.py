"""`bench.lake api`: the API on a lake of N records, with a writer committing every 5 s.

* The lake is built as bench/api.py builds its file, with the same rows (bench/api.py's
  `_ROWS`: 90 % `app.blento.card`, 200,000 DIDs with a skewed share, 80 % in time order and
  20 % at older random times), generated as Arrow tables by an in-memory DuckDB and
  inserted straight into the lake's `record_versions`, `--chunk` rows per insert and
  `--per-transaction` rows per lake transaction; then accounts, backfills, the cursor and the
  summaries as the ingest job leaves them. Nothing puts the rows in time order: the lake has
  no recluster job.
* A writer process commits 1,000 new records every 5 s through `LakeStore.transact`.
* Uncached costs, in this process: each query of a page on a fresh read of the lake (the
  API keeps answers per snapshot; these are what a snapshot's first asker pays).
* Served: two `mirror api` processes over the lake (replicas, API_CURSOR_KEY shared), driven
  by wrk (bench/api.py's way): one client per endpoint on one replica for latency, then
  `--connections` clients on one replica against half of them on each of the two at once
  for throughput.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import duckdb

from bench.api import _ROWS as ROWS
from bench.api import CARD, PAGE, RECORD, SPAN_US, START_US, USERS, Load, free_port, wait_until_up
from bench.api import _latency as wrk_latency
from bench.api import _match as wrk_match
from bench.lake_common import (
    LAKE_OUT,
    BenchLake,
    catalog_rows,
    counted_conflicts,
    files_on_disk,
    ms,
    new_lake,
    p50,
    percentile,
    summarize_catalog,
)
from mirror_api import queries
from mirror_api.sources.lake import LakeSource
from mirror_assets.analytics.summaries import rebuild_summaries
from mirror_assets.config import LAKE_PREFIX, LakeLocation
from mirror_assets.store import maintenance
from mirror_assets.store.lake import LakeStore
from tests.support.postgres import PostgresServer

WRK = shutil.which("wrk")
WALK = Path(__file__).resolve().parent / "walk.lua"
CURSOR_KEY = "bench-lake-api-cursor-key-" + "0123456789abcdef" * 2
COLUMNS = (
    "uri, uri_hash, did, collection, rkey, cid, record, rev, time_us, deleted, hidden, indexed_at"
)
TARGET_PAGE_MS = 20.0
TARGET_DID_MS = 50.0
TARGET_REPLICAS = 1.8


# -- building ---------------------------------------------------------------------------


def _params(offset: int, count: int, records: int) -> dict[str, Any]:
    return {
        "record": RECORD,
        "users": USERS,
        "offset": offset,
        "count": count,
        "start": START_US,
        "step": SPAN_US / records,
        "span": SPAN_US,
    }


def build(lake: BenchLake, records: int, chunk: int, per_transaction: int) -> None:
    """N records by Arrow inserts into the lake, then what the ingest job leaves beside them."""
    store = LakeStore(lake.location)
    store.init()
    generator = duckdb.connect(":memory:")
    generator.execute("SELECT setseed(0.5)")  # the same rows every time
    started = time.perf_counter()
    generate = insert = 0.0
    offsets = list(range(0, records, chunk))
    per = max(1, per_transaction // chunk)
    for first in range(0, len(offsets), per):
        group = offsets[first : first + per]
        tx_started = time.perf_counter()

        def write(con: duckdb.DuckDBPyConnection, group: list[int] = group) -> None:
            nonlocal generate, insert
            for offset in group:
                t0 = time.perf_counter()
                count = min(chunk, records - offset)
                table = generator.execute(ROWS, _params(offset, count, records)).to_arrow_table()
                t1 = time.perf_counter()
                table = table.rename_columns([name.strip() for name in COLUMNS.split(",")])
                con.register("bench_chunk", table)
                con.execute(f"INSERT INTO record_versions ({COLUMNS}) SELECT * FROM bench_chunk")
                con.unregister("bench_chunk")
                generate += t1 - t0
                insert += time.perf_counter() - t1

        store.transact(write)
        done = min(records, group[-1] + chunk)
        print(
            f"  {done:>11,} records ({time.perf_counter() - started:6.1f} s; this transaction "
            f"{time.perf_counter() - tx_started:.1f} s)",
            flush=True,
        )
    generator.close()
    t0 = time.perf_counter()

    def beside(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(
            """
            INSERT INTO accounts (did, status, hidden, first_seen_us, first_seen_at, updated_at)
            SELECT DISTINCT did, 'active', false, 0, now(), now() FROM record_versions;
            INSERT INTO backfills (did, collection, status, updated_at, completed_at)
            SELECT DISTINCT did, collection, 'complete', now(), now() FROM record_versions;
            INSERT INTO ingest_state (id, cursor_us, endpoint, updated_at)
            VALUES (1, (SELECT max(time_us) FROM record_versions), 'bench', now());
            """
        )

    store.transact(beside)
    store.transact(rebuild_summaries)
    with store.reading() as con:
        held = maintenance.footprint(con, 4 * 1024 * 1024)
    store.close()
    files, size = files_on_disk(lake)
    print(
        f"built: {records:,} records in {time.perf_counter() - started:.0f} s (generate "
        f"{generate:.0f} s, insert {insert:.0f} s, accounts, backfills and summaries "
        f"{time.perf_counter() - t0:.0f} s); {held.data_files} data files, "
        f"{files} on disk, {size / 1e9:.2f} GB; catalog {summarize_catalog(catalog_rows(lake))}",
        flush=True,
    )


# -- the writer -------------------------------------------------------------------------


def write_loop(
    catalog: str, data_path: str, stop_at: float, every: float, conn: Connection
) -> None:
    """The writer process: 1,000 new records every `every` seconds, each one transaction,
    until `stop_at` or until told to stop."""
    store = LakeStore(LakeLocation(catalog, data_path))
    spans: list[float] = []
    offset = 10**9
    with counted_conflicts() as conflicts:
        while time.time() < stop_at and not conn.poll():
            started = time.perf_counter()
            store.transact(
                lambda con, offset=offset: con.execute(
                    f"INSERT INTO record_versions ({COLUMNS}) {ROWS}",
                    {**_params(offset, 1000, 1), "start": START_US + SPAN_US, "step": 1, "span": 1},
                )
            )
            spans.append(time.perf_counter() - started)
            offset += 1000
            conn.poll(max(0.0, min(every, stop_at - time.time())))
    store.close()
    conn.send({"spans": spans, **conflicts.as_dict()})


# -- uncached costs ---------------------------------------------------------------------


def uncached(
    location: LakeLocation, heavy: str, light: str, count: int, max_seconds: float
) -> list[tuple[str, list[float], list[float]]]:
    """Each query on a fresh read of the lake, as the API runs it when nothing is kept: its
    wall time and this process's CPU time (DuckDB's threads included, Postgres not)."""
    source = LakeSource(location)
    results: list[tuple[str, list[float], list[float]]] = []

    def page(did: str | None, after: tuple[int, str] | None) -> list[queries.Record]:
        with source.reading() as read:
            return queries.records_page(read.cursor(), CARD, 51, after, did)

    def measure(name: str, action: Any, walking: bool = False) -> None:
        walls: list[float] = []
        cpus: list[float] = []
        after = None
        deadline = time.monotonic() + max_seconds
        while len(walls) < count and time.monotonic() < deadline:
            started, cpu = time.perf_counter(), time.process_time()
            rows = action(after)
            walls.append(time.perf_counter() - started)
            cpus.append(time.process_time() - cpu)
            if walking:  # the next page of a walk: after this page's last record
                after = (rows[49].time_us, rows[49].uri) if len(rows) > 50 else None
        results.append((name, walls, cpus))

    measure("attach + first snapshot (new reader)", lambda _: source.version(), False)
    results[-1] = (results[-1][0], results[-1][1][:1], results[-1][2][:1])
    measure("snapshot id (every request asks it)", lambda _: source.version())
    measure("/records first page", lambda _: page(None, None))
    measure("/records cursor pages (a walk)", lambda after: page(None, after), True)
    measure("?did= heavy, first page", lambda _: page(heavy, None))
    measure("?did= heavy, cursor pages (a walk)", lambda after: page(heavy, after), True)
    measure("?did= light, first page", lambda _: page(light, None))
    source.close()
    return results


# -- serving ----------------------------------------------------------------------------


def start_api(lake: BenchLake, folder: Path, name: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "MIRROR_STORE": LAKE_PREFIX + lake.location.catalog,
        "MIRROR_DATA_PATH": lake.location.data_path,
        "MIRROR_DB": str(folder / "unused.duckdb"),
        "API_CURSOR_KEY": CURSOR_KEY,
        "API_PORT": str(port),
        "API_WORKERS": "1",
        "COLLECTIONS": f"{CARD},{PAGE}",
        "DAGSTER_URL": f"http://127.0.0.1:{free_port()}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "mirror_assets.ops.cli", "api"],
        env=env,
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=(LAKE_OUT / f"{name}.log").open("w"),
    )
    return process, f"http://127.0.0.1:{port}"


def start_wrk(url: str, connections: int, seconds: float, walk: bool) -> subprocess.Popen[str]:
    command = [WRK or "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    command += ["--timeout", "10s", "-s", str(WALK), url] + (["--", "walk"] if walk else [])
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wrk_result(process: subprocess.Popen[str]) -> Load:
    output, _ = process.communicate(timeout=600)
    errors = sum(
        int(n)
        for n in re.findall(
            r"(?:Non-2xx or 3xx responses|connect|read|write|timeout):? (\d+)", output
        )
    )
    return Load(
        requests_per_second=float(wrk_match(r"Requests/sec:\s+([\d.]+)", output)),
        p50_ms=wrk_latency(wrk_match(r"50%\s+([\d.]+\w+)", output)),
        p99_ms=wrk_latency(wrk_match(r"99%\s+([\d.]+\w+)", output)),
        errors=errors,
    )


def postgres_pids(server: PostgresServer) -> list[int]:
    """The catalog server's postmaster and its backends."""
    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid] + [int(n) for n in children.read_text().split()] if children.exists() else [pid]


def _process_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    """CPU seconds the whole machine spent busy since boot (every process, others' too)."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by groups of processes (and the whole machine) since it was made;
    a backend that exits meanwhile is not counted."""

    def __init__(self, groups: dict[str, Any]) -> None:
        self.groups = groups
        self.start = {pid: _process_cpu(pid) for pids in groups.values() for pid in pids()}
        self.machine = _machine_busy()

    def read(self) -> dict[str, float]:
        used = {
            name: sum(_process_cpu(pid) - self.start.get(pid, 0.0) for pid in pids())
            for name, pids in self.groups.items()
        }
        used["whole machine"] = _machine_busy() - self.machine
        return used


def run(args: argparse.Namespace, server: PostgresServer) -> None:
    if WRK is None:
        sys.exit("bench.lake api drives the API with wrk: install it (apt-get install wrk)")
    lake = new_lake(server, f"api_{args.records}")
    print(
        f"building {args.records:,} records ({args.chunk:,} per Arrow insert, "
        f"{args.per_transaction:,} per transaction) ...",
        flush=True,
    )
    build(lake, args.records, args.chunk, args.per_transaction)
    store = LakeStore(lake.location)
    with store.reading() as con:
        heavy, heavy_count = con.execute(
            "SELECT did, record_count FROM user_counts WHERE collection = ? "
            "ORDER BY record_count DESC LIMIT 1",
            [CARD],
        ).fetchall()[0]
        light, light_count = con.execute(
            "SELECT did, record_count FROM user_counts WHERE collection = ? "
            "ORDER BY record_count, did LIMIT 1",
            [CARD],
        ).fetchall()[0]
    store.close()
    print(f"heavy user {heavy} ({heavy_count:,} records), light {light} ({light_count:,})")

    folder = LAKE_OUT / "api_run"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    plan_latency = [
        ("records", f"/records/{CARD}", False),
        ("records?cursor", f"/records/{CARD}", True),
        ("?did= heavy", f"/records/{CARD}?did={heavy}", False),
        ("?did= heavy ?cursor", f"/records/{CARD}?did={heavy}", True),
        ("?did= light", f"/records/{CARD}?did={light}", False),
    ]
    plan_throughput = [
        ("records", f"/records/{CARD}", False),
        ("records?cursor", f"/records/{CARD}", True),
        ("?did= heavy ?cursor", f"/records/{CARD}?did={heavy}", True),
    ]
    duration = (
        args.seconds * (len(plan_latency) + 2 * len(plan_throughput)) + args.uncached_seconds + 120
    )
    reply, send = mp.get_context("spawn").Pipe()
    writer = mp.get_context("spawn").Process(
        target=write_loop,
        args=(lake.location.catalog, lake.location.data_path, time.time() + duration, 5.0, send),
        daemon=True,
    )
    writer.start()
    replicas = [start_api(lake, folder, "api_a"), start_api(lake, folder, "api_b")]
    try:
        print(
            "\n== uncached, in this process (each on a fresh read of the lake): wall p50 / "
            "p90, CPU of this process p50, n"
        )
        for name, times, cpus in uncached(
            lake.location, heavy, light, args.uncached_count, args.uncached_seconds / 6
        ):
            print(
                f"  {name:40s} {ms(p50(times)):>10s} {ms(percentile(times, 0.9)):>10s} "
                f"{ms(p50(cpus)):>10s} {len(times):4d}",
                flush=True,
            )
        for process, base in replicas:
            wait_until_up(base)
            assert process.poll() is None
        base_a, base_b = replicas[0][1], replicas[1][1]
        print(f"\n== served, 1 client, one replica, wrk {args.seconds:g} s per line")
        print(f"  {'endpoint':22s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} errors")
        latency: dict[str, Load] = {}
        for name, path, walk in plan_latency:
            load = wrk_result(start_wrk(base_a + path, 1, args.seconds, walk))
            latency[name] = load
            print(
                f"  {name:22s} {load.requests_per_second:8.0f} {load.p50_ms:8.2f} "
                f"{load.p99_ms:8.2f} {load.errors:6d}",
                flush=True,
            )
        print(
            f"\n== throughput, {args.connections} clients: one replica, then "
            f"{args.connections // 2} on each of two at once"
        )
        ratios = []
        watched = {
            "replica A": lambda: [replicas[0][0].pid],
            "replica B": lambda: [replicas[1][0].pid],
            "Postgres": lambda: postgres_pids(server),
        }
        for name, path, walk in plan_throughput:
            cpu = CpuMeter(watched)
            one = wrk_result(start_wrk(base_a + path, args.connections, args.seconds, walk))
            cpu_one = cpu.read()
            cpu = CpuMeter(watched)
            both = [
                start_wrk(base + path, args.connections // 2, args.seconds, walk)
                for base in (base_a, base_b)
            ]
            two = [wrk_result(process) for process in both]
            cpu_two = cpu.read()
            total = sum(load.requests_per_second for load in two)
            ratios.append((name, total / one.requests_per_second))
            print(
                f"  {name:22s} one: {one.requests_per_second:7.0f} req/s (p50 {one.p50_ms:.1f} ms, "
                f"errors {one.errors}); two: {total:7.0f} req/s (p50 "
                f"{two[0].p50_ms:.1f} / {two[1].p50_ms:.1f} ms, errors "
                f"{sum(load.errors for load in two)}); "
                f"two / one = {total / one.requests_per_second:.2f}",
                flush=True,
            )
            for label, used, rate in (
                ("one", cpu_one, one.requests_per_second),
                ("two", cpu_two, total),
            ):
                requests = max(1.0, rate * args.seconds)
                print(
                    f"    CPU, {label}: "
                    + ", ".join(
                        f"{who} {seconds / args.seconds:.2f} cores"
                        f" ({1000 * seconds / requests:.1f} ms/request)"
                        for who, seconds in used.items()
                    )
                )
        reply.send("stop")
        writer.join(timeout=duration + 60)
        report = reply.recv() if reply.poll(5) else {"spans": [], "transactions": 0, "conflicts": 0}
        spans = report["spans"]
        print(
            f"\nwriter: {len(spans)} transactions of 1,000 records, p50 {ms(p50(spans))}, "
            f"longest {ms(max(spans, default=0))}; {report['conflicts']} conflicts"
        )
        print("\n== against the targets")
        pages = max(latency["records"].p50_ms, latency["records?cursor"].p50_ms)
        dids = max(latency["?did= heavy"].p50_ms, latency["?did= light"].p50_ms)
        print(f"  /records pages p50 (served) {pages:.2f} ms: target <= {TARGET_PAGE_MS} ms")
        print(f"  ?did= p50 (served) {dids:.2f} ms: target <= {TARGET_DID_MS} ms")
        for name, ratio in ratios:
            print(f"  two replicas / one, {name}: {ratio:.2f}: target >= {TARGET_REPLICAS}")
        print(f"  load average at the end: {json.dumps(os.getloadavg())}")
    finally:
        for process, _ in replicas:
            process.terminate()
            process.wait(timeout=30)
        if writer.is_alive():
            writer.terminate()
        shutil.rmtree(folder, ignore_errors=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--chunk", type=int, default=1_000_000, help="rows per Arrow insert")
    parser.add_argument(
        "--per-transaction", type=int, default=2_000_000, help="rows per lake transaction"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="wrk seconds per line")
    parser.add_argument("--connections", type=int, default=32, help="clients for throughput")
    parser.add_argument("--uncached-count", type=int, default=30, help="runs per uncached query")
    parser.add_argument(
        "--uncached-seconds", type=float, default=180.0, help="time bound of the uncached part"
    )
