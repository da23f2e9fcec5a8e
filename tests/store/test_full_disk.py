"""A full disk, for real: the DuckDB file, or DAGSTER_HOME, on a size-limited tmpfs that the
test fills (mounting one needs root, as this suite runs; the test fails, not skips, where it
cannot). Ingest and backfill fail with a clear error and move nothing; the API serves what
the file holds; once space returns, the next runs finish with nothing lost.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.config import BackfillLimits, IngestLimits, Settings
from mirror_assets.defs.definitions import build_definitions
from mirror_assets.defs.resources import MirrorResource
from mirror_assets.model.backfills import queue
from mirror_assets.names import INGEST_JOB
from mirror_assets.runs.backfill import run_backfill
from mirror_assets.runs.ingest import run_ingest
from mirror_assets.store.file import DiskFullError, FileStore
from tests.support.api_helpers import api_client, settings_for
from tests.support.atproto_server import AtprotoStandIn
from tests.support.events_factory import CARD, create, did
from tests.support.jetstream_server import JetstreamServer

DISK_BYTES = 24 * 1024 * 1024


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A filesystem of DISK_BYTES, mounted for the test and removed after it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@contextlib.contextmanager
def full(disk: Path) -> Iterator[None]:
    """The disk filled to its last byte while inside; its space back after."""
    filler = disk / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(bytes(1 << 16))
    assert _free_bytes(disk) < 1 << 16
    try:
        yield
    finally:
        filler.unlink()


def _free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def _rows(db: Path) -> int:
    with FileStore(db).reading() as con:
        return int(con.execute("SELECT count(*) FROM records").fetchall()[0][0])


def _cards(count: int, first: int = 0) -> list[dict[str, object]]:
    """Creates of `count` cards by five users, about 400 bytes of record each."""
    return [
        create(did(f"writer{n % 5}"), f"c{n}", rev=n + 1, t=n, text="x" * 300)
        for n in range(first, first + count)
    ]


def test_ingest_on_a_full_disk_moves_nothing_and_resumes_when_space_returns(disk: Path) -> None:
    db = disk / "mirror.duckdb"
    with JetstreamServer() as stream:
        settings = Settings(
            collections=CollectionFilter.parse(CARD),
            jetstream_urls=(stream.url,),
            db_path=db,
            ingest=IngestLimits(idle_seconds=0.5, max_seconds=20),
        )
        for event in _cards(50):
            stream.add(event)
        before = run_ingest(settings).cursor_after
        for event in _cards(3_000, first=50):
            stream.add(event)

        with full(disk):
            with pytest.raises(DiskFullError, match=r"its disk is full .*nothing was lost"):
                run_ingest(settings)
            assert FileStore(db).cursor_us() == before  # the cursor moved with nothing
            assert _rows(db) == 50
            # The API reads the file as it is.
            with api_client(settings_for(db, CARD)) as client:
                page = client.get(f"/records/{CARD}", params={"limit": 100})
                assert page.status_code == 200
                assert len(page.json()["records"]) == 50

        report = run_ingest(settings)
    assert _rows(db) == 3_050
    assert report.cursor_after is not None and report.cursor_after > (before or 0)


def test_a_backfill_on_a_full_disk_loses_no_page(disk: Path) -> None:
    db = disk / "mirror.duckdb"
    user = did("history")
    with AtprotoStandIn() as net:
        net.add_account(user)
        net.create_records(user, CARD, 2_000)
        settings = Settings(
            db_path=db,
            plc_url=net.url,
            allow_private_network=True,
            collections=CollectionFilter.parse(CARD),
            backfill=BackfillLimits(http_backoff_seconds=0.01, http_attempts=2),
        )
        with FileStore(db).writing() as tx:
            queue(tx.con, [(user, CARD)])

        with full(disk), pytest.raises(Exception) as failed:
            run_backfill(settings, [user])
        chain = [failed.value, failed.value.__cause__, failed.value.__context__]
        assert any(isinstance(error, DiskFullError) for error in chain), failed.value
        with FileStore(db).reading() as con:
            [(status,)] = con.execute("SELECT status FROM backfills").fetchall()
        assert status != "complete"

        report = run_backfill(settings, [user])
    assert report.done_dids == [user]
    assert _rows(db) == 2_000


def test_a_full_dagster_home_fails_the_run_and_the_next_one_loses_nothing(
    disk: Path, tmp_path: Path
) -> None:
    home = disk / "dagster"
    home.mkdir()
    db = tmp_path / "mirror.duckdb"  # the data's disk has room: only Dagster's is full
    with JetstreamServer() as stream:
        for event in _cards(500):
            stream.add(event)
        mirror = MirrorResource(db_path=str(db), collections=CARD, jetstream_urls=stream.url)
        job = build_definitions(mirror).resolve_job_def(INGEST_JOB)
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        with dg.DagsterInstance.from_config(str(home)) as instance:
            job.execute_in_process(instance=instance)  # the instance's storage exists
            for event in _cards(500, first=500):
                stream.add(event)
            with full(disk):
                # Dagster cannot record the run, so it never starts: nothing is read.
                with pytest.raises(Exception, match=r"disk I/O error|database or disk is full"):
                    job.execute_in_process(instance=instance, raise_on_error=False)
                assert _rows(db) == 500
            result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert result.success
    assert _rows(db) == 1_000
