"""Helpers for the API tests: settings over a temporary file, expected bodies, page walks,
backfill rows, and the writer loop the concurrency test runs in its own process."""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from litestar import Litestar
from litestar.testing import TestClient

from mirror_api.app import create_app
from mirror_assets.backfill_queue import queue
from mirror_assets.config import Settings
from mirror_assets.nsids import CollectionFilter
from mirror_assets.store import Store
from tests.events_factory import Event, event_uri

TRACKED = "app.blento.card,app.blento.page"


def settings_for(
    db_path: Path, collections: str = TRACKED, backfill_wait_seconds: float = 0.01
) -> Settings:
    """Settings over `db_path`. `?did=` asks a Dagster that is not there (a port nobody
    listens on: refused at once) and waits only briefly for a backfill, so a test of the
    answer's shape does not wait the production default of 10 s."""
    return Settings(
        db_path=db_path,
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


def set_backfill(db_path: Path, did: str, collection: str, status: str) -> None:
    """Give (did, collection) a backfill row in the given status, through the write path."""
    with Store(db_path).writing() as tx:
        queue(tx.con, [(did, collection)])
        tx.con.execute(
            "UPDATE backfills SET status = ? WHERE did = ? AND collection = ?",
            [status, did, collection],
        )


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- the writer process of the concurrency test ------------------------------------------


def run_writer(db_path: str, out_path: str, seconds: float) -> None:
    """Commit small batches (creates, an update, a delete) in a loop for `seconds`, as a
    Dagster run would: one short transaction each, then the file left free for readers for
    READER_WINDOW_SECONDS (as the ingest and backfill writers do). Each transaction's lock
    wait goes to `out_path` as one JSON line, flushed at once."""
    from mirror_assets.apply import apply_batch
    from mirror_assets.lock import READER_WINDOW_SECONDS
    from tests.events_factory import CARD, create, delete, did, update
    from tests.store_helpers import batch_of

    store = Store(Path(db_path), lock_timeout=30.0)
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
