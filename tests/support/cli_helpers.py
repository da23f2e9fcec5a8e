"""Running `mirror` as an operator does (a real process in a project folder), and a mirror
file with known content for the commands to work on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from mirror_assets.analytics.summaries import rebuild_summaries
from mirror_assets.store.file import FileStore
from tests.support.events_factory import CARD, PAGE, create, delete, did
from tests.support.store_helpers import apply_events

PROJECT = Path(__file__).resolve().parents[2]
MIRROR = str(Path(sys.executable).parent / "mirror")
OTHER = "app.other.thing"  # not tracked under the default COLLECTIONS
ALICE, BOB, CAROL = did("alice"), did("bob"), did("carol")


def mirror(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MIRROR, *args],
        cwd=cwd,
        env=mirror_env(cwd, **env),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def mirror_env(cwd: Path, **env: str) -> dict[str, str]:
    return {**os.environ, "MIRROR_DB": str(db_of(cwd)), **env}


def db_of(project: Path) -> Path:
    """The mirror file of a project folder, where `mirror` run in it keeps it (MIRROR_DB)."""
    return project / "data" / "mirror.duckdb"


def make_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder like the project root: dagster.yaml and workspace.yaml, no data."""
    for name in ("dagster.yaml", "workspace.yaml"):
        shutil.copyfile(PROJECT / name, tmp_path / name)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return tmp_path


def fill_mirror(db: Path) -> None:
    """Records of three collections through the real apply path, then summaries, discovery
    state and backfills in chosen states.

    Live records: alice a1, a2 (card); bob b1 (card), p1 (page); carol o1 (OTHER).
    Tombstone: alice a3 (card). Cursor: at(9). Backfills (queued by the apply step, then set):
    (alice, card) failed, (bob, card) complete, (bob, page) in_progress, (carol, OTHER)
    pending.
    """
    apply_events(
        db,
        [
            create(ALICE, "a1", rev=1, t=1),
            create(ALICE, "a2", rev=2, t=2),
            create(ALICE, "a3", rev=3, t=3),
            delete(ALICE, "a3", rev=4, t=4),
            create(BOB, "b1", rev=1, t=5),
            create(BOB, "p1", rev=2, t=6, collection=PAGE),
            create(CAROL, "o1", rev=1, t=7, collection=OTHER),
            create(CAROL, "o2", rev=2, t=9, collection=OTHER),
        ],
    )
    with FileStore(db).writing() as tx:
        rebuild_summaries(tx.con)
        tx.con.execute(
            "INSERT INTO discovery_state VALUES (?, 'https://relay.test', NULL, 3, 1, now(), "
            "now(), now())",
            [CARD],
        )
        tx.con.execute(
            "INSERT INTO discovery_state VALUES (?, 'https://relay.test', 'c1', 7, 2, now(), "
            "NULL, now())",
            [PAGE],
        )
        for values in BACKFILL_STATES:
            tx.con.execute(
                "UPDATE backfills SET status = $status, pds_cursor = $pds_cursor, "
                "repo_rev = $repo_rev, pages = $pages, records = $records, "
                "attempts = $attempts, last_error = $last_error, "
                "next_attempt_at = now() + INTERVAL 1 HOUR * $retry_hours "
                "WHERE did = $did AND collection = $collection",
                values,
            )


BACKFILL_STATES: list[dict[str, Any]] = [
    {
        "did": ALICE,
        "collection": CARD,
        "status": "failed",
        "pds_cursor": "a-page-2",
        "repo_rev": "3kaaaaaaaaaa2",
        "pages": 2,
        "records": 150,
        "attempts": 3,
        "last_error": "server error 503",
        "retry_hours": 2,  # not due before the reset
    },
    {
        "did": BOB,
        "collection": CARD,
        "status": "complete",
        "pds_cursor": None,
        "repo_rev": "3kbbbbbbbbbb2",
        "pages": 1,
        "records": 1,
        "attempts": 0,
        "last_error": None,
        "retry_hours": None,
    },
    {
        "did": BOB,
        "collection": PAGE,
        "status": "in_progress",
        "pds_cursor": "b-page-1",
        "repo_rev": "3kcccccccccc2",
        "pages": 1,
        "records": 100,
        "attempts": 1,
        "last_error": "timed out",
        "retry_hours": None,
    },
    {
        "did": CAROL,
        "collection": OTHER,
        "status": "pending",
        "pds_cursor": None,
        "repo_rev": None,
        "pages": 0,
        "records": 0,
        "attempts": 0,
        "last_error": None,
        "retry_hours": None,
    },
]


def table_rows(db: Path, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    """Every row a query answers, read through the lock."""
    with FileStore(db).reading() as con:
        return con.execute(sql, params).fetchall()


def dump(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, sorted: to show that a command changed nothing."""
    with FileStore(db).reading() as con:
        tables = [row[0] for row in con.execute("SHOW TABLES").fetchall()]
        return {
            table: sorted(con.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
            for table in tables
        }
