"""Running `mirror` as an operator does (a real process in a project folder), and a mirror
with known content for the commands to work on: in the project's file, or in a lake the
project's `.env` names.

A test runs on the lake too by parametrizing its `project` fixture indirectly over the
stores: `on_both_stores` for every case, `across_stores` with `lake_too(...)` cases for a
representative few of a long list (each lake case costs a lake and a `mirror` process)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _pytest.mark.structures import ParameterSet
from dotenv import dotenv_values

from mirror_assets.analytics.summaries import rebuild_summaries
from mirror_assets.config import LAKE_PREFIX, LakeLocation
from mirror_assets.model.apply import apply_batch
from mirror_assets.store.contract import MirrorStore
from mirror_assets.store.file import FileStore
from mirror_assets.store.lake import LakeStore
from mirror_assets.store.schema import LAKE_WRITES
from tests.support.events_factory import CARD, PAGE, create, delete, did
from tests.support.lakes import bare_lake
from tests.support.postgres import PostgresServer
from tests.support.store_helpers import Where, batch_of, store_of

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


def make_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lake: LakeLocation | None = None
) -> Path:
    """A working folder like the project root: dagster.yaml and workspace.yaml, no data;
    with a lake, a `.env` that names it, as an operator's would (`mirror` reads it)."""
    for name in ("dagster.yaml", "workspace.yaml"):
        shutil.copyfile(PROJECT / name, tmp_path / name)
    if lake is not None:
        (tmp_path / ".env").write_text(
            f"MIRROR_STORE='{LAKE_PREFIX}{lake.catalog}'\nMIRROR_DATA_PATH='{lake.data_path}'\n"
        )
    for name in ("DAGSTER_HOME", "MIRROR_STORE", "MIRROR_DATA_PATH"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


# --- the store of a project ----------------------------------------------------------------

STORES = ["file", pytest.param("lake", marks=pytest.mark.lake)]

# Runs a test whose `project` is the fixture of tests/ops on the file and on a lake.
on_both_stores = pytest.mark.parametrize("project", STORES, indirect=True)


def lake_if_asked(request: pytest.FixtureRequest, *, bare: bool = False) -> LakeLocation | None:
    """For a `project` fixture: a lake if the test parametrized it with "lake" (the `lake`
    fixture's, with the empty schema; with `bare`, one nothing has made yet)."""
    kind = getattr(request, "param", "file")
    assert kind in ("file", "lake"), kind
    if kind == "file":
        return None
    if bare:
        return bare_lake(request.getfixturevalue("postgres"), request.getfixturevalue("tmp_path"))
    lake: LakeLocation = request.getfixturevalue("lake")
    return lake


@dataclass(frozen=True)
class LakeToo:
    """A case of `across_stores` that runs on a lake as well as on the file."""

    case: Any


def lake_too(*values: Any) -> LakeToo:
    """The case of these values (or the one `pytest.param`) on the file and on a lake."""
    return LakeToo(values if len(values) > 1 else values[0])


def _as_param(case: Any, names: int) -> ParameterSet:
    if isinstance(case, ParameterSet):
        return case
    return pytest.param(*(case if names > 1 else (case,)))


def across_stores(argnames: Sequence[str], cases: Iterable[Any]) -> pytest.MarkDecorator:
    """Parametrize `project` (indirectly) and `argnames`: every case on the file, and those
    wrapped in `lake_too` on a lake too. A case is a tuple of values (one value when there
    is one name) or a `pytest.param`, whose id, if it has one, follows the store's."""
    on_file: list[ParameterSet] = []
    on_lake: list[ParameterSet] = []
    for case in cases:
        also_on_lake = isinstance(case, LakeToo)
        param = _as_param(case.case if also_on_lake else case, len(argnames))
        for store, into in [("file", on_file), ("lake", on_lake)][: 1 + also_on_lake]:
            marks = [*param.marks, *([pytest.mark.lake] if store == "lake" else [])]
            ident = None if param.id is None else f"{store}-{param.id}"
            into.append(pytest.param(store, *param.values, marks=marks, id=ident))
    return pytest.mark.parametrize(("project", *argnames), on_file + on_lake, indirect=["project"])


def store_at(project: Path) -> MirrorStore:
    """The store `mirror` uses when run in the project folder: the lake its `.env` names,
    or its file. A lake's must be closed (`opened_store` does)."""
    env = dotenv_values(project / ".env") if (project / ".env").is_file() else {}
    catalog, data_path = env.get("MIRROR_STORE"), env.get("MIRROR_DATA_PATH")
    if catalog and data_path:
        return LakeStore(LakeLocation(catalog.removeprefix(LAKE_PREFIX), data_path))
    return FileStore(db_of(project))


@contextmanager
def opened_store(project: Path) -> Iterator[MirrorStore]:
    """The store of the project folder, closed again afterwards."""
    store = store_at(project)
    try:
        yield store
    finally:
        if isinstance(store, LakeStore):
            store.close()


def lake_of(project: Path) -> LakeLocation | None:
    """The lake the project's `.env` names, if any."""
    store = store_at(project)
    return store.lake if isinstance(store, LakeStore) else None


def catalog_rows(postgres: PostgresServer, lake: LakeLocation, sql: str) -> list[str]:
    """What a query answers in the lake's Postgres catalog, one line a row (psql's
    unaligned output): to look at the catalog without DuckDB in between."""
    assert lake.catalog.startswith("postgres:"), lake.catalog
    result = subprocess.run(
        [str(postgres.bin_dir / "psql"), "-XAtc", sql, lake.catalog.removeprefix("postgres:")],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout.splitlines()


def fill_mirror(where: Where) -> None:
    """Records of three collections through the real apply path, then summaries, discovery
    state and backfills in chosen states.

    Live records: alice a1, a2 (card); bob b1 (card), p1 (page); carol o1 (OTHER).
    Tombstone: alice a3 (card). Cursor: at(9). Backfills (queued by the apply step, then set):
    (alice, card) failed, (bob, card) complete, (bob, page) in_progress, (carol, OTHER)
    pending.
    """
    events = [
        create(ALICE, "a1", rev=1, t=1),
        create(ALICE, "a2", rev=2, t=2),
        create(ALICE, "a3", rev=3, t=3),
        delete(ALICE, "a3", rev=4, t=4),
        create(BOB, "b1", rev=1, t=5),
        create(BOB, "p1", rev=2, t=6, collection=PAGE),
        create(CAROL, "o1", rev=1, t=7, collection=OTHER),
        create(CAROL, "o2", rev=2, t=9, collection=OTHER),
    ]
    # One transaction: on a lake, each commit is a round of catalog writes.
    with store_of(where).writing() as tx:
        apply_batch(tx.con, batch_of(events))
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


def table_rows(where: Where, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    """Every row a query answers, read through the store (the file's through its lock)."""
    with store_of(where).reading() as con:
        return con.execute(sql, params).fetchall()


def dump(where: Where) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, sorted: to show that a command changed nothing. But for a
    lake's count of its write transactions, which any write moves, if only by one."""
    with store_of(where).reading() as con:
        tables = [row[0] for row in con.execute("SHOW TABLES").fetchall() if row[0] != LAKE_WRITES]
        return {
            table: sorted(con.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
            for table in tables
        }
