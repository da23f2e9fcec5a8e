"""API benchmark: the real API server over a large file, wrk as the load, and a writer.

    .venv/bin/python -m bench.api [--records 1000000] [--seconds 10] [--connections 1,32]
                                  [--workers 1] [--recluster] [--keep]

* The file (`bench/out/api_<N>.duckdb`, kept between runs, migrated when the schema moves
  on) is built with SQL, summaries included: N records of `app.blento.card` (90 %) and
  `app.blento.page` (10 %) from 200,000 DIDs with a skewed share (a few DIDs hold many
  records, most hold a few: DID = 200,000 * u^3); 80 % of the records arrive in time order
  (live ingest), 20 % with older random times (backfills); every backfill complete; record
  JSON of about 150 bytes.
* `--recluster` serves a copy put in time order by `mirror_assets.analytics.clustering` (as the
  nightly `recluster` job leaves it), made once and kept beside the file.
* The server is `mirror api` (uvicorn, `--workers` processes) on a free port.
* A writer process commits 1,000 new records every 5 seconds through the store's write
  lock, as ingest would, so answers kept by the API are computed again after each write.
* The load is wrk (`apt-get install wrk`), one thread, `--connections` connections, for
  `--seconds` per endpoint: first pages, cursor walks (`bench/walk.lua` follows the
  answers' cursors), `?did=` pages of the heaviest and a light user, /users and its walk,
  /stats. A load generator in Python saturates a core before the server does.

Printed: requests/s, p50 and p99 per endpoint and concurrency, errors (non-2xx answers and
socket errors), and the writer's longest lock wait. Targets (issue 4, at 10,000,000
records): /records p50 <= 5 ms and p99 <= 50 ms; `?did=`, /users and /stats p50 <= 20 ms;
>= 1,000 requests/s on /records.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import httpx

from mirror_assets.analytics.clustering import recluster
from mirror_assets.analytics.summaries import rebuild_summaries
from mirror_assets.store.file import FileStore
from mirror_assets.store.schema import migrate

OUT = Path(__file__).parent / "out"
CARD, PAGE = "app.blento.card", "app.blento.page"
USERS = 200_000
START_US = 1_700_000_000_000_000
SPAN_US = 365 * 86_400 * 1_000_000
WRK = shutil.which("wrk")
RECORD = '{"$type": "app.blento.card", "title": "a card", "text": "lorem ipsum dolor sit amet"}'

_ROWS = """
SELECT uri, md5_number_lower(uri), did, collection, rkey, 'bafyrei' || md5(uri), $record,
    '3kaaaaaaaaaaa', time_us, false, false, now()
FROM (
    SELECT did, collection, rkey, time_us,
        'at://' || did || '/' || collection || '/' || rkey AS uri
    FROM (
        -- did:plc identifiers are base32 (a-z, 2-7): the digits 0, 1, 8 and 9 become w-z,
        -- or the door refuses `?did=` with a 400.
        SELECT 'did:plc:' || translate(
                lpad(floor($users * pow(random(), 3))::BIGINT::VARCHAR, 24, 'a'), '0189', 'wxyz'
            ) AS did,
            CASE WHEN random() < 0.9 THEN 'app.blento.card' ELSE 'app.blento.page' END
                AS collection,
            'r' || ($offset + i)::VARCHAR AS rkey,
            CASE WHEN random() < 0.8 THEN $start + (($offset + i) * $step)::BIGINT
                 ELSE $start + (random() * $span)::BIGINT END AS time_us
        FROM range($count) t(i)
    )
)
"""


def build(path: Path, records: int) -> None:
    """The benchmark's file, made once per size with bulk SQL, with its summaries built as
    the ingest job builds them."""
    if path.exists():
        return
    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    con.execute("SELECT setseed(0.5)")  # the same file every time
    con.execute("BEGIN")
    migrate(con)
    step = SPAN_US / records
    for offset in range(0, records, 1_000_000):
        count = min(1_000_000, records - offset)
        con.execute(
            f"INSERT INTO record_versions {_ROWS}",
            {
                "record": RECORD,
                "users": USERS,
                "offset": offset,
                "count": count,
                "start": START_US,
                "step": step,
                "span": SPAN_US,
            },
        )
    con.execute(
        """
        INSERT INTO accounts (did, status, hidden, first_seen_us, first_seen_at, updated_at)
        SELECT DISTINCT did, 'active', false, 0, now(), now() FROM record_versions;
        INSERT INTO backfills (did, collection, status, updated_at, completed_at)
        SELECT DISTINCT did, collection, 'complete', now(), now() FROM record_versions;
        INSERT INTO ingest_state VALUES (1, (SELECT max(time_us) FROM record_versions),
            'bench', now());
        """
    )
    rebuild_summaries(con)
    con.execute("COMMIT")
    con.execute("CHECKPOINT")
    con.close()
    print(f"built {path.name}: {records:,} records in {time.perf_counter() - started:.0f} s")


def write_loop(path: str, stop_at: float, report: str) -> None:
    """The writer process: 1,000 new records every 5 seconds, each batch one transaction."""
    store, waits, offset = FileStore(Path(path)), [], 10**9
    while time.time() < stop_at:
        with store.writing() as tx:
            tx.con.execute(
                f"INSERT INTO record_versions {_ROWS}",
                {
                    "record": RECORD,
                    "users": USERS,
                    "offset": offset,
                    "count": 1000,
                    "start": START_US + SPAN_US,
                    "step": 1,
                    "span": 1,
                },
            )
        waits.append(tx.lock_wait.seconds)
        offset += 1000
        time.sleep(5)
    Path(report).write_text(json.dumps(waits))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def targets(heavy: str, light: str) -> list[tuple[str, str, bool]]:
    """(name, path and query, walk the cursor) of each endpoint measured."""
    return [
        ("records", f"/records/{CARD}", False),
        ("records?cursor", f"/records/{CARD}", True),
        ("records?did= heavy", f"/records/{CARD}?did={heavy}", False),
        ("records?did= light", f"/records/{CARD}?did={light}", False),
        ("users", f"/users/{CARD}", False),
        ("users?cursor", f"/users/{CARD}", True),
        ("stats", f"/stats/{CARD}", False),
    ]


@dataclass
class Load:
    """What wrk measured for one endpoint at one concurrency."""

    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


_ERRORS = r"(?:Non-2xx or 3xx responses|connect|read|write|timeout):? (\d+)"
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, connections: int, seconds: float, walk: bool) -> Load:
    """One wrk run (one thread: the other core is the server's) and its numbers."""
    command = [WRK or "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    command += ["-s", str(Path(__file__).parent / "walk.lua"), url]
    if walk:
        command += ["--", "walk"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return Load(
        requests_per_second=float(_match(r"Requests/sec:\s+([\d.]+)", output)),
        p50_ms=_latency(_match(r"50%\s+([\d.]+\w+)", output)),
        p99_ms=_latency(_match(r"99%\s+([\d.]+\w+)", output)),
        errors=sum(
            int(n)
            for n in re.findall(
                r"(?:Non-2xx or 3xx responses|connect|read|write|timeout):? (\d+)", output
            )
        ),
    )


def _match(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    if found is None:
        raise RuntimeError(f"wrk printed no {pattern!r}:\n{text}")
    return found.group(1)


def _latency(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNIT_MS[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10, help="per endpoint and concurrency")
    parser.add_argument(
        "--connections", default="1,32", help="comma-separated concurrencies (default 1,32)"
    )
    parser.add_argument("--workers", type=int, default=1, help="API server processes")
    parser.add_argument(
        "--recluster", action="store_true", help="serve the file put in time order first"
    )
    parser.add_argument("--keep", action="store_true", help="keep the working copy")
    args = parser.parse_args()
    if WRK is None:
        sys.exit("bench/api.py drives the server with wrk: install it (apt-get install wrk)")
    connections = [int(n) for n in args.connections.split(",")]
    source = OUT / f"api_{args.records}.duckdb"
    build(source, args.records)
    if args.recluster:
        source = reclustered(source)
    work = OUT / "api_run" / "mirror.duckdb"
    shutil.rmtree(work.parent, ignore_errors=True)
    work.parent.mkdir(parents=True)
    shutil.copyfile(source, work)
    # As the ingest job leaves it: migrated to this schema, summaries current.
    with FileStore(work).writing() as tx:
        rebuild_summaries(tx.con)
    with duckdb.connect(str(work), read_only=True) as con:
        heavy = con.execute(
            f"SELECT did FROM records WHERE collection = '{CARD}' GROUP BY did "
            "ORDER BY count(*) DESC LIMIT 1"
        ).fetchall()[0][0]
        light = con.execute(
            f"SELECT did FROM records WHERE collection = '{CARD}' GROUP BY did "
            "ORDER BY count(*), did LIMIT 1"
        ).fetchall()[0][0]

    port = free_port()
    env = {
        **os.environ,
        "MIRROR_DB": str(work),
        "API_PORT": str(port),
        "API_WORKERS": str(args.workers),
        "COLLECTIONS": f"{CARD},{PAGE}",
        "DAGSTER_URL": f"http://127.0.0.1:{free_port()}",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "mirror_assets.ops.cli", "api"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(work.parent / "server.log").open("w"),
    )
    base = f"http://127.0.0.1:{port}"
    plan = targets(heavy, light)
    try:
        wait_until_up(base)
        writer_report = str(work.parent / "writer.json")
        duration = args.seconds * len(plan) * len(connections)
        writer = mp.get_context("spawn").Process(
            target=write_loop, args=(str(work), time.time() + duration, writer_report)
        )
        writer.start()
        print(
            f"{args.records:,} records, {args.workers} server process(es), a writer every 5 s, "
            f"wrk for {args.seconds:g} s per line"
        )
        print(
            f"  {'endpoint':20s} {'conns':>5s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} errors"
        )
        for count in connections:
            for name, path, walk in plan:
                load = run_wrk(base + path, count, args.seconds, walk)
                print(
                    f"  {name:20s} {count:5d} {load.requests_per_second:8.0f} "
                    f"{load.p50_ms:8.2f} {load.p99_ms:8.2f} {load.errors:6d}",
                    flush=True,
                )
        writer.join()
        waits = json.loads(Path(writer_report).read_text())
        print(
            f"writer: {len(waits)} transactions, longest lock wait {max(waits) * 1000:.0f} ms, "
            f"p50 {statistics.median(waits) * 1000:.0f} ms"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        if not args.keep:
            shutil.rmtree(work.parent, ignore_errors=True)


def reclustered(source: Path) -> Path:
    """A copy of the file put in time order (clustering.py), made once and kept."""
    target = source.with_name(source.stem + "_clustered.duckdb")
    if not target.exists():
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(source, partial)
        report = recluster(FileStore(partial))
        partial.rename(target)
        print(
            f"reclustered {source.name}: {report.rows_moved:,} rows in {report.slices_moved} "
            f"slices, {report.seconds:.0f} s, longest transaction "
            f"{report.longest_transaction_seconds:.1f} s"
        )
    return target


def wait_until_up(base: str) -> None:
    for _ in range(100):
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"the API at {base} did not come up")


if __name__ == "__main__":
    main()
