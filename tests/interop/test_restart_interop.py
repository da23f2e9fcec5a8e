"""A pipeline killed in the middle of a backfill, the network going on without it, and a
restart over the same Dagster instance and file: it ends in the network's state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mirror_assets.store.file import FileStore
from tests.interop.harness import Network
from tests.interop.pipeline import fail_dead_runs, running_pipeline
from tests.interop.records import CARD, PAGE, create_many, record
from tests.interop.truth import assert_mirror_equals_network

PROJECT = Path(__file__).resolve().parent.parent.parent
POLL_SECONDS = 0.01
FIRST_PAGE_SECONDS = 60


def listing_progress(db_path: Path, did: str) -> tuple[str, int] | None:
    """(status, pages) of the DID's card listing, once the backfill has a row for it."""
    with FileStore(db_path).reading() as con:
        rows = con.execute(
            "SELECT status, pages FROM backfills WHERE did = ? AND collection = ?", [did, CARD]
        ).fetchall()
    return (rows[0][0], rows[0][1]) if rows else None


def kill_after_first_page(
    process: subprocess.Popen[bytes], db_path: Path, did: str, log_path: Path
) -> int:
    """SIGKILL the run's process as soon as a page of the listing is committed; the pages."""
    deadline = time.monotonic() + FIRST_PAGE_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        progress = listing_progress(db_path, did)
        if progress is not None and progress[1] > 0:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return progress[1]
        time.sleep(POLL_SECONDS)
    process.kill()
    process.wait()
    output = log_path.read_text(errors="replace")[-3_000:]
    raise AssertionError(f"the backfill run wrote no page to kill it after:\n{output}")


def test_a_pipeline_killed_mid_backfill_resumes_after_a_restart(
    network: Network, mirror_env: Path
) -> None:
    pds = network.pds
    author = pds.create_account("restarted")
    rkeys = create_many(pds, author, CARD, 1_500)
    home = mirror_env / "dagster"
    db_path = mirror_env / "mirror.duckdb"

    with running_pipeline(home) as pipeline:
        network.first_ingest(pipeline)
        assert pipeline.discover()
        [tags] = pipeline.plan_backfills()
        log_path = mirror_env / "killed-run.log"
        with log_path.open("wb") as log:
            run = subprocess.Popen(
                [sys.executable, "-m", "tests.interop.pipeline", str(home), json.dumps(tags)],
                cwd=PROJECT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            pages_at_kill = kill_after_first_page(run, db_path, author.did, log_path)
    assert listing_progress(db_path, author.did) == ("in_progress", pages_at_kill)
    assert pages_at_kill < 15  # killed midway: the listing has 15 pages

    # While the mirror is down: both ends of the half-listed repository change.
    pds.put(author, CARD, rkeys[0], record(CARD, 0, title="changed while down"))
    pds.delete(author, CARD, rkeys[-1])
    pds.delete(author, CARD, rkeys[1])
    pds.create(author, CARD, record(CARD, 1, title="back while down"), rkey=rkeys[1])
    pds.create(author, PAGE, record(PAGE, 2))

    with running_pipeline(home) as pipeline:
        assert fail_dead_runs(pipeline.instance) == 1
        pipeline.catch_up()
        truth = assert_mirror_equals_network(pds, pipeline.settings)
        assert listing_progress(db_path, author.did) == ("complete", 15)
    assert len([r for r in truth.values() if r.did == author.did]) == 1_500
