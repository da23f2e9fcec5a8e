"""Helpers for the API tests: settings over a temporary file, expected bodies, page walks,
backfill rows, rows stored by SQL, and the writer loop the concurrency test runs in its own
process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
from litestar import Litestar
from litestar.testing import TestClient

from mirror_api.app import create_app
from mirror_api.reader import MirrorReader, ReadSource
from mirror_api.sources.file import FileSource
from mirror_api.sources.lake import LakeSource
from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.config import LAKE_PREFIX, LakeLocation, Settings
from mirror_assets.model.backfills import queue
from mirror_assets.store.contract import MirrorStore
from mirror_assets.store.file import FileStore
from mirror_assets.store.lake import LakeStore
from tests.support.events_factory import CARD, Event, event_uri
from tests.support.ports import free_port
from tests.support.store_helpers import Where, store_of

ROOT = Path(__file__).resolve().parents[2]
TRACKED = "app.blento.card,app.blento.page"
STORED_CID = "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"  # of `store_rows`


def settings_for(
    where: Where, collections: str = TRACKED, backfill_wait_seconds: float = 0.01
) -> Settings:
    """Settings over a store (a path is the file there). `?did=` asks a Dagster that is not
    there (a port nobody listens on: refused at once) and waits only briefly for a backfill,
    so a test of the answer's shape does not wait the production default of 10 s."""
    if isinstance(where, LakeStore):
        lake = where.lake
        settings = settings_for(
            Path(lake.data_path).with_suffix(".duckdb"), collections, backfill_wait_seconds
        )
        # That file is never made: the API keeps only its cursor key beside it.
        return replace(settings, store=LAKE_PREFIX + lake.catalog, data_path=lake.data_path)
    return Settings(
        db_path=where if isinstance(where, Path) else path_of(where),
        collections=CollectionFilter.parse(collections),
        dagster_url=f"http://127.0.0.1:{free_port()}",
        backfill_wait_seconds=backfill_wait_seconds,
    )


@contextmanager
def api_client(settings: Settings) -> Iterator[TestClient[Litestar]]:
    with TestClient(app=create_app(settings)) as client:
        yield client


def record_json(event: Event) -> dict[str, Any]:
    """The `/records` item a create or update event leaves behind."""
    commit = event["commit"]
    assert commit["operation"] in ("create", "update"), event
    return {
        "uri": event_uri(event),
        "did": event["did"],
        "collection": commit["collection"],
        "rkey": commit["rkey"],
        "cid": commit["cid"],
        "record": commit["record"],
        "time_us": event["time_us"],
    }


def newest_first(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """`/records` order: time_us descending, then uri descending (byte order, as DuckDB)."""
    return sorted(items, key=lambda r: (r["time_us"], r["uri"].encode()), reverse=True)


def walk(
    client: TestClient[Litestar], path: str, key: str, limit: int | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Follow `cursor` from the first page to the last; return the items and the page count.

    Every page but the last must be full and carry a cursor; the last must not carry one.
    """
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    size = limit if limit is not None else 50
    while True:
        params: dict[str, str | int] = {}
        if limit is not None:
            params["limit"] = limit
        if cursor is not None:
            params["cursor"] = cursor
        response = client.get(path, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        pages += 1
        assert set(body) <= {key, "cursor"}, body.keys()
        items.extend(body[key])
        if "cursor" not in body:
            assert len(body[key]) <= size
            return items, pages
        assert len(body[key]) == size, f"page {pages} has {len(body[key])} rows and a cursor"
        assert isinstance(body["cursor"], str) and body["cursor"]
        cursor = body["cursor"]
        assert pages < 10_000, "the walk does not end"


def set_backfill(
    where: Where, did: str, collection: str, status: str, error: str | None = None
) -> None:
    """Give (did, collection) a backfill row in the given status (and last error), through
    the write path."""
    with store_of(where).writing() as tx:
        queue(tx.con, [(did, collection)])
        tx.con.execute(
            "UPDATE backfills SET status = ?, last_error = ? WHERE did = ? AND collection = ?",
            [status, error, did, collection],
        )


def set_handle(where: Where, did: str, handle: str) -> None:
    """Give a known account its handle, as the identity check stores one it has verified
    both ways (the only handles `accounts.handle` holds)."""
    with store_of(where).writing() as tx:
        updated = tx.con.execute(
            "UPDATE accounts SET handle = ? WHERE did = ?", [handle, did]
        ).fetchall()
    assert updated == [(1,)], f"no account {did} to give a handle"


def store_rows(
    where: Where,
    dids: list[str],
    records: list[str],
    times: list[int],
    collection: str = CARD,
    compressed: bool = True,
    rkeys: list[str] | None = None,
) -> list[str]:
    """Live rows straight into `record_versions` by SQL, as a file written by an older
    version of the mirror may hold them: the record JSON is stored as given, unchecked.
    Record keys are `r<n>` unless given. Returns the rows' URIs.

    `compressed=False` stores the columns uncompressed: DuckDB decompresses a whole vector
    of long strings (2,048 records) to read any one of them, 30 ms for 2,000 records of
    20 KB, which a test that reads thousands of pages cannot afford."""
    rkeys = rkeys or [f"r{n}" for n in range(len(dids))]
    uris = [f"at://{did}/{collection}/{rkey}" for did, rkey in zip(dids, rkeys, strict=True)]
    rows = pa.table(
        {
            "uri": uris,
            "did": dids,
            "rkey": rkeys,
            "record": records,
            "time_us": pa.array(times, pa.int64()),
        }
    )
    with store_of(where).writing() as tx:
        if not compressed:  # applies when the transaction's changes are checkpointed
            tx.con.execute("SET force_compression = 'uncompressed'")
        tx.con.register("stored_rows", rows)
        tx.con.execute(
            "INSERT INTO record_versions (uri, uri_hash, did, collection, rkey, cid, record, "
            "rev, time_us, deleted, hidden, indexed_at) "
            "SELECT uri, md5_number_lower(uri), did, $collection, rkey, $cid, record::JSON, "
            "'3kaaaaaaaaaa2', time_us, false, false, now() FROM stored_rows",
            {"collection": collection, "cid": STORED_CID},
        )
        tx.con.unregister("stored_rows")
    return uris


def open_files_of(path: Path) -> list[str]:
    """Paths this process holds open that are the DuckDB file or its WAL (Linux)."""
    names = {str(path), str(path) + ".wal"}
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
        if target in names:
            held.append(target)
    return held


@dataclass(frozen=True)
class ApiProcess:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path


@contextmanager
def serve_api(db_path: Path, log_path: Path, **env: str) -> Iterator[ApiProcess]:
    """`mirror api` (uvicorn) over `db_path` on a free port, as a process of its own, until
    the block ends; it runs the code of this work tree, from a folder with no `.env`."""
    port = free_port()
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MIRROR_DB": str(db_path),
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "COLLECTIONS": TRACKED,
        "DAGSTER_URL": f"http://127.0.0.1:{free_port()}",
        **env,
    }
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mirror_assets.ops.cli", "api"],
            env=environment,
            cwd=log_path.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            api = ApiProcess(f"http://127.0.0.1:{port}", process, log_path)
            _wait_until_up(api)
            yield api
        finally:
            _stop(process)


def _wait_until_up(api: ApiProcess, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert api.process.poll() is None, api.log_path.read_text()
        try:
            if httpx.get(f"{api.base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the API did not come up"
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def resident_bytes(pid: int) -> int:
    """The process's resident set now (VmRSS, Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


# --- the writer process of the concurrency test ------------------------------------------


def run_writer(db_path: str, out_path: str, seconds: float) -> None:
    """Commit small batches (creates, an update, a delete) in a loop for `seconds`, as a
    Dagster run would: one short transaction each, then the file left free for readers for
    READER_WINDOW_SECONDS (as the ingest and backfill writers do). Each transaction's lock
    wait goes to `out_path` as one JSON line, flushed at once."""
    from mirror_assets.model.apply import apply_batch
    from mirror_assets.store.lock import READER_WINDOW_SECONDS
    from tests.support.events_factory import CARD, create, delete, did, update
    from tests.support.store_helpers import batch_of

    store = FileStore(Path(db_path), lock_timeout=30.0)
    deadline = time.monotonic() + seconds
    n = 0
    with Path(out_path).open("a") as out:
        while time.monotonic() < deadline:
            author = did(f"writer{n % 7}")
            t = 100_000 + n
            events = [
                create(author, f"w{n}-{i}", rev=10 * n + i, t=t + i / 10, collection=CARD)
                for i in range(5)
            ]
            events.append(update(author, f"w{n}-0", rev=10 * n + 6, t=t + 0.6))
            events.append(delete(author, f"w{n}-1", rev=10 * n + 7, t=t + 0.7))
            started = time.monotonic()
            with store.writing() as tx:
                apply_batch(tx.con, batch_of(events))
                wait = tx.lock_wait.seconds
            held = time.monotonic() - started - wait
            out.write(json.dumps({"wait": wait, "held": held, "live": 4}) + "\n")
            out.flush()
            n += 1
            time.sleep(READER_WINDOW_SECONDS)


if __name__ == "__main__":
    if sys.argv[1:2] == ["writer"]:
        run_writer(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        sys.exit(f"usage: {sys.argv[0]} writer DB OUT SECONDS")


def reader_of(store: MirrorStore, cache_bytes: int = Settings.api_cache_bytes) -> MirrorReader:
    """The API's reader of a store: the file's through its lock, the lake's snapshots."""
    source: ReadSource = (
        FileSource(store.path) if isinstance(store, FileStore) else LakeSource(lake_of(store))
    )
    return MirrorReader(source, cache_bytes=cache_bytes)


def lake_of(store: MirrorStore) -> LakeLocation:
    assert isinstance(store, LakeStore), store
    return store.lake


def path_of(store: MirrorStore) -> Path:
    assert isinstance(store, FileStore), store
    return store.path
