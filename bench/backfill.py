"""Backfill benchmark: the real backfill run against a local PDS stand-in in another process.

    .venv/bin/python -m bench.backfill [--dids 200] [--records 500] [--repeat 2]
                                       [--latency-ms 0] [--keep]

A child process serves a PLC directory and a PDS (`tests/support/atproto_server.py`, real HTTP, on
two ports as they are two hosts on the network) holding `--dids` repos of `--records`
records each (about 330 bytes of JSON per record, TID rkeys); `--latency-ms` delays every
answer, as a PDS across a network does. Two clients page the same data, alternately,
`--repeat` times each:

* bare: an httpx loop that pages `listRecords` for every DID with the mirror's per-host
  limit (BACKFILL_PER_HOST, default 4) and decodes each page, storing nothing: the rate
  the PDS and the network allow;
* mirror: `mirror_assets.runs.backfill.run_backfill` on a fresh DuckDB file with every DID
  queued: DID resolution, the handle check (HANDLE_RESOLVER_URL is the PLC stand-in),
  `getLatestCommit`, paging, checking, and the writes (each page with its cursor) in a
  worker thread.

Printed: records/s of each, and mirror / bare (the target is at least 0.8: fetching and
writing overlap, and the lock is never the bottleneck), with the mirror's transactions,
apply time and longest lock wait.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import shutil
import statistics
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import httpx
import msgspec

from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.config import BackfillLimits, Settings
from mirror_assets.model.backfills import queue
from mirror_assets.runs.backfill import run_backfill
from mirror_assets.store.file import FileStore
from tests.support.events_factory import numbered_did, tid

OUT = Path(__file__).parent / "out"
COLLECTION = "app.blento.card"
START_US = 1_725_000_000_000_000


def serve(dids: int, records: int, latency: float, ready: Connection) -> None:
    """The child: a PLC directory and a PDS (two hosts, as on the network) with the
    benchmark's repos, each answer `latency` seconds late, until terminated."""
    from tests.support.atproto_server import AtprotoStandIn

    plc, net = AtprotoStandIn().start(), AtprotoStandIn().start()
    plc.latency_seconds = net.latency_seconds = latency
    for d in range(dids):
        did = numbered_did(d)
        plc.add_account(did, handle=f"user{d}.test", pds_url=net.url)
        net.add_account(did, handle=f"user{d}.test")
        for i in range(records):
            time_us = START_US + d * records + i
            value = {
                "$type": COLLECTION,
                "title": f"card {i} of user {d}",
                "text": "lorem ipsum dolor sit amet " * 8,
                "url": f"https://example.com/{d}/{i}",
                "createdAt": "2024-08-30T06:40:00.000Z",
            }
            net.put_record(did, COLLECTION, tid(time_us), value)
    ready.send((plc.url, net.url))
    while True:
        time.sleep(3600)


async def bare(url: str, dids: int, per_host: int) -> int:
    """Page every DID's collection, decode each page, keep nothing; return records seen."""
    gate = asyncio.Semaphore(per_host)
    seen = 0
    async with httpx.AsyncClient(timeout=30) as client:

        async def page_all(did: str) -> None:
            nonlocal seen
            cursor: str | None = None
            while True:
                params = {"repo": did, "collection": COLLECTION, "limit": 100}
                if cursor:
                    params["cursor"] = cursor
                async with gate:
                    response = await client.get(
                        f"{url}/xrpc/com.atproto.repo.listRecords", params=params
                    )
                page = msgspec.json.decode(response.content)
                if not page["records"]:
                    return
                seen += len(page["records"])
                cursor = page.get("cursor")

        await asyncio.gather(*(page_all(numbered_did(d)) for d in range(dids)))
    return seen


def mirror(plc: str, dids: int, db: Path) -> tuple[int, float, dict[str, int | float]]:
    shutil.rmtree(db.parent, ignore_errors=True)
    settings = Settings(
        collections=CollectionFilter.parse(COLLECTION),
        db_path=db,
        plc_url=plc,
        # Handles are checked by the PLC stand-in's resolveHandle, not by this machine's DNS
        # and HTTPS: the bench measures the mirror, not the resolver of wherever it runs.
        handle_resolver_url=plc,
        allow_private_network=True,
        backfill=BackfillLimits(run_seconds=3600),
    )
    store = FileStore(db)
    everyone = [numbered_did(d) for d in range(dids)]
    with store.writing() as tx:
        queue(tx.con, [(did, COLLECTION) for did in everyone])
    started = time.perf_counter()
    report = run_backfill(settings, everyone, store=store)
    seconds = time.perf_counter() - started
    with store.reading() as con:
        rows = con.execute("SELECT count(*) FROM records").fetchall()[0][0]
    summary = report.summary()
    summary["apply_seconds"] = round(report.applied.seconds, 3)
    return rows, seconds, summary


def start_stand_in(dids: int, records: int, latency_ms: float) -> tuple[BaseProcess, str, str]:
    """The PLC and PDS stand-in in a child process: the process, the PLC's URL and the
    PDS's; says what it holds and how long it took to build."""
    receive, send = mp.get_context("spawn").Pipe(duplex=False)
    server = mp.get_context("spawn").Process(
        target=serve, args=(dids, records, latency_ms / 1000, send), daemon=True
    )
    built = time.perf_counter()
    server.start()
    plc, url = receive.recv()
    print(
        f"PDS stand-in: {dids} DIDs x {records} records, built in "
        f"{time.perf_counter() - built:.1f} s, per-host limit {BackfillLimits().per_host} "
        f"(per writer process), latency {latency_ms:g} ms",
        flush=True,
    )
    return server, plc, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dids", type=int, default=200)
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="added to every answer (default 0)"
    )
    parser.add_argument("--keep", action="store_true", help="keep bench/out/backfill/")
    args = parser.parse_args()
    expected = args.dids * args.records
    per_host = BackfillLimits().per_host

    server, plc, url = start_stand_in(args.dids, args.records, args.latency_ms)
    bare_rates, mirror_rates = [], []
    try:
        for round_ in range(args.repeat):
            started = time.perf_counter()
            seen = asyncio.run(bare(url, args.dids, per_host))
            bare_seconds = time.perf_counter() - started
            assert seen == expected, f"bare loop saw {seen} records, expected {expected}"
            bare_rates.append(seen / bare_seconds)
            print(
                f"round {round_ + 1} bare:   {seen} records in {bare_seconds:.2f} s "
                f"= {bare_rates[-1]:,.0f} records/s"
            )

            rows, seconds, summary = mirror(plc, args.dids, OUT / "backfill" / "mirror.duckdb")
            ok = "ok" if rows == expected else f"MISMATCH ({rows} rows, expected {expected})"
            mirror_rates.append(rows / seconds)
            print(
                f"round {round_ + 1} mirror: {rows} records in {seconds:.2f} s "
                f"= {mirror_rates[-1]:,.0f} records/s ({ok}); "
                f"{summary['transactions']} transactions, apply {summary['apply_seconds']} s, "
                f"max lock wait {summary['max_lock_wait_seconds']} s"
            )
    finally:
        server.terminate()
        if not args.keep:
            shutil.rmtree(OUT / "backfill", ignore_errors=True)
    bare_rate, mirror_rate = statistics.median(bare_rates), statistics.median(mirror_rates)
    print(
        f"median: bare {bare_rate:,.0f} records/s, mirror {mirror_rate:,.0f} records/s, "
        f"mirror / bare = {mirror_rate / bare_rate:.2f} (target >= 0.80)"
    )


if __name__ == "__main__":
    main()
