"""`mirror migrate-to-lake`: a mirror file copied into a lake by the real command, whole,
going on after a kill, and refused where a copy would be wrong."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from mirror_assets.config import LAKE_PREFIX, LakeLocation
from mirror_assets.model.apply import apply_batch
from mirror_assets.store.file import FileStore
from mirror_assets.store.lake import LakeStore
from tests.support.cli_helpers import MIRROR
from tests.support.events_factory import PAGE, account, at, create, delete, did
from tests.support.store_helpers import apply_events, batch_of, snapshot, store_cursor

pytestmark = pytest.mark.lake


def _fill(db: Path, users: int) -> None:
    """Live records, edits, deletes and a hidden account, through the real apply path."""
    events = [create(did(f"user{n}"), f"r{n}", rev=1, t=n + 1) for n in range(users)]
    events += [create(did("user0"), "p1", rev=2, t=users + 1, collection=PAGE)]
    apply_events(db, events)
    apply_events(
        db,
        [
            delete(did("user1"), "r1", rev=3, t=users + 2),
            account(did("user2"), active=False, status="takendown", t=users + 3),
        ],
    )
    store_cursor(db, at(users + 10))


def _migrate(db: Path, lake: LakeLocation, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "MIRROR_DB": str(db),
        "MIRROR_STORE": LAKE_PREFIX + lake.catalog,
        "MIRROR_DATA_PATH": lake.data_path,
    }
    return subprocess.Popen(
        [MIRROR, "migrate-to-lake", *args],
        env=env,
        cwd=db.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finished(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def test_the_lake_holds_what_the_file_held(db: Path, lake: LakeLocation) -> None:
    _fill(db, 40)
    code, out, err = _finished(_migrate(db, lake))
    assert code == 0, err
    assert f"copied into the lake at {lake.data_path}" in out
    copied = LakeStore(lake)
    assert snapshot(copied) == snapshot(db)
    assert snapshot(copied).cursor == at(50)
    copied.close()


def test_a_killed_copy_goes_on_where_it_stopped(db: Path, lake: LakeLocation) -> None:
    _fill(db, 600)
    process = _migrate(db, lake, "--chunk-rows", "40")
    assert process.stdout is not None
    for line in process.stdout:  # the third chunk of record_versions is committed
        if line.strip().startswith("record_versions: 120 rows"):
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    partial = LakeStore(lake)
    state = snapshot(partial)
    assert 120 <= len(state.versions) < 600, "the kill came after the whole copy"
    assert state.cursor is None  # the cursor comes last
    partial.close()

    code, out, err = _finished(_migrate(db, lake, "--chunk-rows", "40"))
    assert code == 0, err
    assert "went on with" in out and "record_versions" in out
    copied = LakeStore(lake)
    assert snapshot(copied) == snapshot(db)  # every row once: no chunk twice, none lost
    copied.close()


def test_a_copy_is_refused_where_it_would_be_wrong(db: Path, lake: LakeLocation) -> None:
    code, _, err = _finished(_migrate(db, lake))
    assert (code, f"no mirror file at {db}" in err) == (2, True)

    _fill(db, 5)
    own = LakeStore(lake)
    own.transact(lambda con: apply_batch(con, batch_of([create(did("other"), "x", rev=1, t=1)])))
    own.close()
    code, _, err = _finished(_migrate(db, lake))
    assert code == 2 and "the lake already holds 1 record versions of its own" in err

    file_only = subprocess.run(
        [MIRROR, "migrate-to-lake"],
        env={**os.environ, "MIRROR_DB": str(db), "MIRROR_STORE": ""},
        cwd=db.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert file_only.returncode == 2 and "MIRROR_STORE names no lake" in file_only.stderr


def test_a_file_that_changed_since_the_copy_began_is_refused(db: Path, lake: LakeLocation) -> None:
    _fill(db, 5)
    assert _finished(_migrate(db, lake))[0] == 0
    FileStore(db).transact(
        lambda con: apply_batch(con, batch_of([create(did("late"), "x", rev=1, t=99)]))
    )
    code, _, err = _finished(_migrate(db, lake))
    assert code == 2 and "the file's cursor moved since this copy began" in err
