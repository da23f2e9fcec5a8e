"""The asset checks against real DuckDB files and a real Dagster instance: a healthy file
passes every check, a file corrupted in every way fails each check with metadata that says
what and where, each corruption alone trips only its own check, and the freshness check
warns and fails at its thresholds."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mirror_assets.defs.checks import cursor_fresh
from mirror_assets.defs.definitions import build_definitions
from mirror_assets.defs.resources import ChecksConfig, MirrorResource
from mirror_assets.store.file import FileStore
from tests.support.dagster_helpers import metadata_of
from tests.support.events_factory import CARD, PAGE, account, create, delete, did, uri
from tests.support.store_helpers import apply_events, store_cursor

ALICE, BOB, CAROL, DAVE, FRANK = (did(n) for n in ("alice", "bob", "carol", "dave", "frank"))
GHOST = did("ghost")  # a DID with a backfill row and no account row
NOTE = "com.example.note"  # a collection nobody tracks

INTEGRITY = (
    "uris_match_keys",
    "only_tracked_collections",
    "accounts_shown_as_their_status",
    "one_row_per_uri",
)
BACKFILLS = "few_failed_backfills"
CHECKS = (*INTEGRITY, BACKFILLS)
ERROR = dg.AssetCheckSeverity.ERROR
WARN = dg.AssetCheckSeverity.WARN
BOTH = f"{CARD},{PAGE}"


@dataclass
class Evaluation:
    """One check's outcome, with its metadata as plain values."""

    passed: bool
    severity: dg.AssetCheckSeverity
    metadata: dict[str, Any]

    @property
    def finding(self) -> tuple[int, list[str], dict[str, int]]:
        m = self.metadata
        return m["problems"], m["where"], m["by_kind"]


def _mirror(db: Path, collections: str = BOTH, **limits: Any) -> MirrorResource:
    return MirrorResource(
        db_path=str(db),
        collections=collections,
        jetstream_urls="ws://127.0.0.1:9",
        checks=ChecksConfig(**limits),
    )


def _run(defs: dg.Definitions, job: str) -> dict[str, Evaluation]:
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def(job).execute_in_process(
            instance=instance, raise_on_error=False
        )
    assert result.success, "a failed check is no failed step: the run itself succeeds"
    evaluations = {}
    for e in result.get_asset_check_evaluations():
        assert e.check_name not in evaluations, f"{e.check_name} evaluated twice"
        evaluations[e.check_name] = Evaluation(e.passed, e.severity, metadata_of(e))
    return evaluations


def _run_checks(mirror: MirrorResource) -> dict[str, Evaluation]:
    evaluations = _run(build_definitions(mirror), "checks")
    assert sorted(evaluations) == sorted(CHECKS)
    return evaluations


def _healthy_file(db: Path) -> None:
    """Users on two collections, deletes, a takendown account and a deleted account, all
    through real events."""
    apply_events(
        db,
        [
            create(ALICE, "a0", rev=1, t=0),
            create(ALICE, "a1", rev=2, t=1),
            create(ALICE, "a2", rev=3, t=2),
            create(ALICE, "p0", rev=4, t=3, collection=PAGE),
            create(BOB, "b0", rev=1, t=10),
            create(BOB, "b1", rev=2, t=11),
            create(BOB, "b2", rev=3, t=12),
            create(BOB, "p1", rev=4, t=13, collection=PAGE),
            create(CAROL, "c0", rev=1, t=20),
            create(CAROL, "c1", rev=2, t=21),
            create(CAROL, "c2", rev=3, t=22),
            create(DAVE, "d0", rev=1, t=30),
            create(DAVE, "d1", rev=2, t=31),
            create(FRANK, "f0", rev=1, t=40),
            create(FRANK, "f1", rev=2, t=41),
        ],
    )
    apply_events(
        db,
        [
            delete(ALICE, "a2", rev=5, t=50),
            delete(ALICE, "p0", rev=6, t=51, collection=PAGE),
            delete(CAROL, "c2", rev=4, t=52),
            delete(FRANK, "f2", rev=3, t=53),  # a record made before the mirror saw Frank
            account(CAROL, active=False, status="takendown", t=54),
            account(DAVE, active=False, status="deleted", t=55),
        ],
    )


def test_a_healthy_file_passes_every_check(tmp_path: Path) -> None:
    db = tmp_path / "mirror.duckdb"
    _healthy_file(db)
    # The file holds what the checks look at: hidden rows, tombstones, closed accounts.
    with FileStore(db).reading() as con:
        assert con.execute(
            "SELECT count(*), count(*) FILTER (WHERE hidden), count(*) FILTER (WHERE deleted) "
            "FROM record_versions"
        ).fetchall() == [(14, 3, 4)]  # Dave's two rows are gone; Carol's three are hidden
        assert con.execute("SELECT did, status, hidden FROM accounts ORDER BY did").fetchall() == [
            (ALICE, "active", False),
            (BOB, "active", False),
            (CAROL, "takendown", True),
            (DAVE, "deleted", True),
            (FRANK, "active", False),
        ]
        assert con.execute("SELECT count(*) FROM backfills").fetchall() == [(6,)]
    evaluations = _run_checks(_mirror(db))
    for name in CHECKS:
        assert evaluations[name].passed, (name, evaluations[name].metadata)
        assert evaluations[name].finding == (0, [], {}), name
    assert evaluations[BACKFILLS].metadata["warn_at"] == 10
    assert evaluations[BACKFILLS].metadata["fail_at"] == 1_000


# -- corruptions, each meant for exactly one check -------------------------------------------

WRONG_URI = f"at://{BOB}/{CARD}/not-b0"


def _uri_off_its_keys(db: Path) -> None:
    with FileStore(db).writing() as tx:
        tx.con.execute(
            "UPDATE record_versions SET uri = ? WHERE uri = ?", [WRONG_URI, uri(BOB, "b0")]
        )


def _untracked_rows(db: Path) -> None:
    """Rows of a collection outside COLLECTIONS (the apply step takes whatever it is given);
    with only CARD tracked, the PAGE rows of the healthy file count too."""
    apply_events(
        db,
        [
            create(BOB, "p9", rev=7, t=60, collection=PAGE),
            create(ALICE, "n0", rev=8, t=61, collection=NOTE),
            delete(ALICE, "n1", rev=9, t=62, collection=NOTE),
        ],
    )


def _misshown_rows(db: Path) -> None:
    with FileStore(db).writing() as tx:
        # Frank is deleted, yet his two records and his tombstone remain.
        tx.con.execute(
            "UPDATE accounts SET status = 'deleted', hidden = true WHERE did = ?", [FRANK]
        )
        # Carol is takendown, yet her records show (her tombstone showing is harmless).
        tx.con.execute("UPDATE record_versions SET hidden = false WHERE did = ?", [CAROL])
        # Alice is active, yet one record and one tombstone are hidden.
        tx.con.execute(
            "UPDATE record_versions SET hidden = true WHERE uri IN (?, ?)",
            [uri(ALICE, "a0"), uri(ALICE, "a2")],
        )


def _uris_stored_twice(db: Path) -> None:
    """b1 stored twice (live and a tombstone copy), b2 three times."""
    with FileStore(db).writing() as tx:
        for rkey in ("b1", "b2", "b2"):
            tx.con.execute(
                "INSERT INTO record_versions SELECT * REPLACE (true AS deleted) "
                "FROM record_versions WHERE uri = ? AND NOT deleted",
                [uri(BOB, rkey)],
            )


def _failed_backfills(db: Path) -> None:
    """Six failed backfills: three on pds.example.com, one on another host, two whose PDS is
    not resolved (Carol's, and a DID without an account row); Bob's page stays pending."""
    failed = [  # oldest first
        (ALICE, CARD, "HTTP 500 from listRecords"),
        (ALICE, PAGE, "HTTP 502 from listRecords"),
        (BOB, CARD, "timed out"),
        (CAROL, CARD, "DID document not found"),
        (FRANK, CARD, "connection refused"),
    ]
    with FileStore(db).writing() as tx:
        con = tx.con
        con.execute(
            "UPDATE accounts SET pds = 'https://pds.example.com' WHERE did IN (?, ?)", [ALICE, BOB]
        )
        con.execute(
            "UPDATE accounts SET pds = 'http://pds2.example.org:2583/' WHERE did = ?", [FRANK]
        )
        for minute, (did_, collection, error) in enumerate(failed):
            con.execute(
                "UPDATE backfills SET status = 'failed', last_error = ?, attempts = 3, "
                "updated_at = TIMESTAMPTZ '2025-01-01 00:00:00+00' + to_minutes(?) "
                "WHERE did = ? AND collection = ?",
                [error, minute, did_, collection],
            )
        con.execute(
            "INSERT INTO backfills (did, collection, status, updated_at) "
            "VALUES (?, ?, 'failed', TIMESTAMPTZ '2025-01-01 01:00:00+00')",
            [GHOST, CARD],
        )


@dataclass(frozen=True)
class Corruption:
    check: str
    apply: Callable[[Path], None]
    collections: str = BOTH


CORRUPTIONS = [
    Corruption("uris_match_keys", _uri_off_its_keys),
    Corruption("only_tracked_collections", _untracked_rows, collections=CARD),
    Corruption("accounts_shown_as_their_status", _misshown_rows),
    Corruption("one_row_per_uri", _uris_stored_twice),
    Corruption(BACKFILLS, _failed_backfills),
]

# What the metadata of each check says about the file with every corruption, tracking CARD.
EXPECTED: dict[str, tuple[int, list[str], dict[str, int]]] = {
    "uris_match_keys": (1, [WRONG_URI], {}),
    "only_tracked_collections": (5, [PAGE, NOTE], {PAGE: 3, NOTE: 2}),
    "accounts_shown_as_their_status": (
        7,
        [ALICE, CAROL, FRANK],
        {
            "rows of deleted accounts": 3,
            "visible rows of hidden accounts": 2,
            "hidden rows of active accounts": 2,
        },
    ),
    "one_row_per_uri": (2, [uri(BOB, "b1"), uri(BOB, "b2")], {"rows": 5}),
    BACKFILLS: (
        6,
        [  # newest failure first
            f"{GHOST} {CARD}: ?",
            f"{FRANK} {CARD}: connection refused",
            f"{CAROL} {CARD}: DID document not found",
            f"{BOB} {CARD}: timed out",
            f"{ALICE} {PAGE}: HTTP 502 from listRecords",
            f"{ALICE} {CARD}: HTTP 500 from listRecords",
        ],
        {"pds.example.com": 3, "PDS not resolved": 2, "pds2.example.org:2583": 1},
    ),
}


@pytest.mark.parametrize(
    ("warn", "fail", "severity"),
    [(3, 7, WARN), (6, 7, WARN), (3, 6, ERROR), (1, 2, ERROR)],
    ids=["warns", "warns-at-the-warn-threshold", "fails-at-the-fail-threshold", "fails-above"],
)
def test_a_file_corrupted_every_way_fails_every_check_and_says_where(
    tmp_path: Path, warn: int, fail: int, severity: dg.AssetCheckSeverity
) -> None:
    db = tmp_path / "mirror.duckdb"
    _healthy_file(db)
    for corruption in CORRUPTIONS:
        corruption.apply(db)
    mirror = _mirror(db, CARD, failed_backfills_warn=warn, failed_backfills_fail=fail)
    evaluations = _run_checks(mirror)
    for name in INTEGRITY:
        assert not evaluations[name].passed, name
        assert evaluations[name].severity == ERROR, name
    backfills = evaluations[BACKFILLS]
    assert not backfills.passed
    assert backfills.severity == severity
    assert (backfills.metadata["warn_at"], backfills.metadata["fail_at"]) == (warn, fail)
    assert {name: evaluations[name].finding for name in CHECKS} == EXPECTED
    # The hosts come most failures first.
    assert list(backfills.finding[2]) == list(EXPECTED[BACKFILLS][2])


def test_failed_backfills_below_the_warn_threshold_pass(tmp_path: Path) -> None:
    db = tmp_path / "mirror.duckdb"
    _healthy_file(db)
    _failed_backfills(db)
    evaluations = _run_checks(_mirror(db, failed_backfills_warn=7, failed_backfills_fail=8))
    assert evaluations[BACKFILLS].passed
    # Passing, it still says what failed.
    assert evaluations[BACKFILLS].finding == EXPECTED[BACKFILLS]


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=[c.check for c in CORRUPTIONS])
def test_each_corruption_fails_only_its_own_check(tmp_path: Path, corruption: Corruption) -> None:
    db = tmp_path / "mirror.duckdb"
    _healthy_file(db)
    corruption.apply(db)
    mirror = _mirror(db, corruption.collections, failed_backfills_warn=3)
    evaluations = _run_checks(mirror)
    assert {name for name, e in evaluations.items() if not e.passed} == {corruption.check}
    problems = {name: e.metadata["problems"] for name, e in evaluations.items()}
    assert problems == {
        name: (EXPECTED[name][0] if name == corruption.check else 0) for name in CHECKS
    }


def test_the_sample_names_every_offending_account_of_a_kind(tmp_path: Path) -> None:
    """An account with many misshown rows must not crowd the others out of `where`."""
    db = tmp_path / "mirror.duckdb"
    many = did("aaa-many")  # sorts before Carol
    apply_events(
        db,
        [
            *(create(many, f"m{i}", rev=i + 1, t=i) for i in range(12)),
            create(CAROL, "c0", rev=1, t=20),
        ],
    )
    apply_events(
        db,
        [
            account(many, active=False, status="takendown", t=30),
            account(CAROL, active=False, status="takendown", t=31),
        ],
    )
    with FileStore(db).writing() as tx:
        tx.con.execute("UPDATE record_versions SET hidden = false")
    evaluation = _run_checks(_mirror(db))["accounts_shown_as_their_status"]
    assert evaluation.finding == (13, [many, CAROL], {"visible rows of hidden accounts": 13})


# -- freshness -------------------------------------------------------------------------------

WARN_SECONDS, FAIL_SECONDS = 300.0, 3_600.0


def _run_fresh(db: Path) -> tuple[Evaluation, float, float]:
    """Run `cursor_fresh` alone; with the clock just before and just after the run."""
    mirror = _mirror(db, lag_warn_seconds=WARN_SECONDS, lag_fail_seconds=FAIL_SECONDS)
    defs = dg.Definitions.merge(
        build_definitions(mirror),
        dg.Definitions(
            jobs=[dg.define_asset_job("fresh", selection=dg.AssetSelection.checks(cursor_fresh))]
        ),
    )
    started = time.time()
    evaluations = _run(defs, "fresh")
    finished = time.time()
    assert list(evaluations) == ["cursor_fresh"]
    return evaluations["cursor_fresh"], started, finished


def test_no_cursor_yet_warns(tmp_path: Path) -> None:
    evaluation, _, _ = _run_fresh(tmp_path / "mirror.duckdb")
    assert not evaluation.passed
    assert evaluation.severity == WARN
    assert evaluation.metadata == {"cursor": "none: no ingest has run yet"}


@pytest.mark.parametrize(
    ("behind", "passed", "severity"),
    [
        (0.0, True, None),
        (-60.0, True, None),  # a cursor ahead of this clock is no lag
        (WARN_SECONDS + 60, False, WARN),
        (FAIL_SECONDS - 60, False, WARN),
        (FAIL_SECONDS + 60, False, ERROR),
        (86_400.0, False, ERROR),
    ],
    ids=["now", "ahead", "past-warn", "just-under-fail", "past-fail", "a-day-behind"],
)
def test_the_cursor_lag_warns_then_fails(
    tmp_path: Path, behind: float, passed: bool, severity: dg.AssetCheckSeverity | None
) -> None:
    db = tmp_path / "mirror.duckdb"
    cursor_us = int((time.time() - behind) * 1e6)
    store_cursor(db, cursor_us)
    evaluation, started, finished = _run_fresh(db)
    assert evaluation.passed is passed
    if severity is not None:
        assert evaluation.severity == severity
    metadata = evaluation.metadata
    assert metadata["cursor"] == datetime.fromtimestamp(cursor_us / 1e6, tz=UTC).isoformat()
    assert (metadata["warn_seconds"], metadata["fail_seconds"]) == (WARN_SECONDS, FAIL_SECONDS)
    # The lag is the clock during the run minus the cursor (never negative), to 0.1 s.
    low = max(0.0, started - cursor_us / 1e6)
    high = max(0.0, finished - cursor_us / 1e6)
    assert low - 0.05 <= metadata["lag_seconds"] <= high + 0.05
