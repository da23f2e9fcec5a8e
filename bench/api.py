"""API benchmark: the real API server over a large file, a load generator, and a writer.

    .venv/bin/python -m bench.api [--records 1000000] [--seconds 20] [--clients 32] [--keep]

* The file (`bench/out/api_<N>.duckdb`, kept between runs; delete it after a schema change)
  is built with SQL, summaries included: N records of
  `app.blento.card` (90 %) and `app.blento.page` (10 %) from 200,000 DIDs with a skewed
  share (a few DIDs hold many records, most hold a few: DID = 200,000 * u^3); 80 % of the
  records arrive in time order (live ingest), 20 % with older random times (backfills);
  every backfill complete; record JSON of about 150 bytes.
* The server is `mirror api` (uvicorn, one process) on a free port.
* A writer process commits 1,000 new records every 5 seconds through the store's write
  lock, as ingest would.
* The load generator (another process, asyncio + httpx) runs `--clients` concurrent loops
  for `--seconds` per phase: a mixed phase (first pages, cursor pages, `?did=` pages of
  heavy and light users, /users, /stats) and a /records-only phase for throughput.

Printed: p50, p99 and requests/s per endpoint, errors, and the writer's longest lock wait.
Targets (issue 4, at 10,000,000 records): /records p50 <= 5 ms and p99 <= 50 ms;
`?did=`, /users and /stats p50 <= 20 ms; >= 1,000 requests/s on /records.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import duckdb
import httpx

from mirror_assets.schema import migrate
from mirror_assets.store import Store
from mirror_assets.summaries import rebuild_summaries

OUT = Path(__file__).parent / "out"
CARD, PAGE = "app.blento.card", "app.blento.page"
USERS = 200_000
START_US = 1_700_000_000_000_000
SPAN_US = 365 * 86_400 * 1_000_000
RECORD = '{"$type": "app.blento.card", "title": "a card", "text": "lorem ipsum dolor sit amet"}'

_ROWS = """
SELECT uri, md5_number_lower(uri), did, collection, rkey, 'bafyrei' || md5(uri), $record,
    '3kaaaaaaaaaaa', time_us, false, false, now()
FROM (
    SELECT did, collection, rkey, time_us,
        'at://' || did || '/' || collection || '/' || rkey AS uri
    FROM (
        SELECT 'did:plc:' || lpad(floor($users * pow(random(), 3))::BIGINT::VARCHAR, 24, 'a')
                AS did,
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
    store, waits, offset = Store(Path(path)), [], 10**9
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


def targets(dids: tuple[str, str], mixed: bool) -> list[tuple[str, str, dict[str, str]]]:
    """(name, path, params) of the requests a loop cycles through."""
    heavy, light = dids
    if not mixed:
        return [("records", f"/records/{CARD}", {})]
    return [
        ("records", f"/records/{CARD}", {}),
        ("records?cursor", f"/records/{CARD}", {"cursor": "walk"}),
        ("records?did= heavy", f"/records/{CARD}", {"did": heavy}),
        ("records?did= light", f"/records/{CARD}", {"did": light}),
        ("users", f"/users/{CARD}", {}),
        ("users?cursor", f"/users/{CARD}", {"cursor": "walk"}),
        ("stats", f"/stats/{CARD}", {}),
    ]


Latencies = dict[str, list[float]]


async def load(
    base: str, clients: int, seconds: float, plan: list[tuple[str, str, dict[str, str]]]
) -> tuple[Latencies, dict[str, int]]:
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def loop(k: int) -> None:
            cursors: dict[str, str | None] = {}
            i = k
            while time.monotonic() < deadline:
                name, path, params = plan[i % len(plan)]
                i += 1
                query = dict(params)
                if query.get("cursor") == "walk":
                    query.pop("cursor")
                    if cursors.get(name):
                        query["cursor"] = cursors[name] or ""
                started = time.perf_counter()
                try:
                    response = await client.get(path, params=query)
                except httpx.HTTPError as error:
                    errors[name] += 1
                    print(f"{name}: {type(error).__name__}: {error}", file=sys.stderr)
                    continue
                latencies[name].append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors[name] += 1
                    print(f"{name}: {response.status_code} {response.text[:200]}", file=sys.stderr)
                elif "cursor" in params:
                    cursors[name] = response.json().get("cursor")

        await asyncio.gather(*(loop(k) for k in range(clients)))
    return latencies, errors


def run_load(
    base: str, clients: int, seconds: float, dids: tuple[str, str], mixed: bool, out: str
) -> None:
    latencies, errors = asyncio.run(load(base, clients, seconds, targets(dids, mixed)))
    Path(out).write_text(json.dumps({"latencies": latencies, "errors": errors}))


def report(title: str, result: dict[str, dict[str, list[float]]], seconds: float) -> None:
    print(title)
    for name, values in sorted(result["latencies"].items()):
        ms = sorted(v * 1000 for v in values)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        print(
            f"  {name:20s} {len(ms) / seconds:8.0f} req/s  p50 {statistics.median(ms):7.1f} ms"
            f"  p99 {p99:7.1f} ms  errors {result['errors'].get(name, 0)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--keep", action="store_true", help="keep the working copy")
    args = parser.parse_args()
    source = OUT / f"api_{args.records}.duckdb"
    build(source, args.records)
    work = OUT / "api_run" / "mirror.duckdb"
    shutil.rmtree(work.parent, ignore_errors=True)
    work.parent.mkdir(parents=True)
    shutil.copyfile(source, work)
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
        "COLLECTIONS": f"{CARD},{PAGE}",
        "DAGSTER_URL": f"http://127.0.0.1:{free_port()}",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "mirror_assets.cli", "api"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(work.parent / "server.log").open("w"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        phases = (("mixed", True), ("records only", False))
        spawn = mp.get_context("spawn")
        writer_report = str(work.parent / "writer.json")
        writer = spawn.Process(
            target=write_loop,
            args=(str(work), time.time() + args.seconds * len(phases), writer_report),
        )
        writer.start()
        for title, mixed in phases:
            out = str(work.parent / "load.json")
            loader = spawn.Process(
                target=run_load, args=(base, args.clients, args.seconds, (heavy, light), mixed, out)
            )
            loader.start()
            loader.join()
            report(
                f"{title}: {args.records:,} records, {args.clients} clients, {args.seconds:g} s",
                json.loads(Path(out).read_text()),
                args.seconds,
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


if __name__ == "__main__":
    main()
