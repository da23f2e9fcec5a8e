"""Crash safety of the ingest (docs/architecture.md, invariant 1), with a real process and SIGKILL.

"A real ingest process is killed with SIGKILL in the middle of a batch; the next run ends in
exactly the state a run without the crash reaches, with no duplicates and no lost events."

The test serves a few thousand Jetstream events (creates, updates, deletes, late replays,
account lifecycle and identity events over many DIDs) from the websocket stand-in, runs the
ingest as a child process (`python -c`, settings in environment variables, small flushes so
there are many write transactions), and kills it several times *while it holds the write
lock*: it watches `/proc/locks` until the child holds the writer's flock on `<db>.rw`, stops
the child with SIGSTOP, checks that the frozen child still holds the lock and has the DuckDB
file open, and only then sends SIGKILL. Some kills land before COMMIT, some while DuckDB's WAL
file exists (the commit written, not yet checkpointed); the first lands in the transaction
that creates the schema of a new file.

After each kill the file must open and hold exactly the batches committed before it (its
cursor is the end of one of them). After the kills, one more run goes to the end, and its
file must match, row for row, the file of one uninterrupted run over the same stream.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from mirror_assets.store.file import FileStore
from mirror_assets.store.lock import read_lock
from mirror_assets.store.schema import current_version
from tests.support.events_factory import did, numbered_did
from tests.support.jetstream_server import JetstreamServer
from tests.support.proc_locks import flock_holders

COLLECTIONS = ("app.blento.card", "app.blento.page")
UNTRACKED = "app.bsky.feed.like"
FLUSH_EVENTS = 300
REWIND_SECONDS = 2.0
STEP_US = 10_000  # 10 ms between events: the rewind re-reads about 200 of them
# Run k is killed inside its KILL_PLAN[k][0]-th write transaction, in phase KILL_PLAN[k][1].
# Run 0's first transaction creates the schema of a new file.
KILL_PLAN = ((1, "apply"), (3, "commit"), (7, "apply"), (2, "commit"))
PAYLOAD_CHARS = 3_000  # big records make each transaction long enough to land a kill in

CHILD = """
import json
from mirror_assets.config import Settings
from mirror_assets.runs.ingest import run_ingest
report = run_ingest(Settings.from_env(env_file=None))
print(json.dumps(report.summary()))
"""

_B32 = "234567abcdefghijklmnopqrstuvwxyz"


# -- the stream ---------------------------------------------------------------------------------


def _tid(time_us: int, clock: int) -> str:
    """A TID: 53 bits of microseconds and 10 bits of clock id, base32-sortable, 13 chars."""
    value = (time_us << 10) | (clock & 0x3FF)
    return "".join(_B32[(value >> (5 * i)) & 31] for i in reversed(range(13)))


def _iso(time_us: int) -> str:
    return datetime.fromtimestamp(time_us / 1e6, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


Action = tuple[Any, ...]


def _did_script(rng: random.Random, index: int, n_commits: int) -> list[Action]:
    """What one account does, in order; times and revs are assigned when interleaving."""
    script: list[Action] = []
    # A new account: its account event and handle come before any commit (events the
    # mirror ignores, as they precede the DID's first live commit), and a handle again
    # right after the first one.
    new_account = rng.random() < 0.5
    if new_account:
        script.append(("account", True, None))
        script.append(("identity", f"new{index}.test"))
    live: list[tuple[str, str]] = []
    past: list[int] = []  # positions of earlier creates/updates, for late replays

    def commits(n: int) -> None:
        for _ in range(n):
            roll = rng.random()
            if live and roll < 0.25:
                past.append(len(script))
                script.append(("update", *rng.choice(live)))
            elif live and roll < 0.37:
                key = live.pop(rng.randrange(len(live)))
                script.append(("delete", *key))
            elif roll < 0.42:
                script.append(("create", UNTRACKED, f"u{len(script)}"))
            else:
                key = (rng.choice(COLLECTIONS), _tid(1_600_000_000_000_000 + len(script), index))
                live.append(key)
                past.append(len(script))
                script.append(("create", *key))
                if new_account and sum(a[0] == "identity" for a in script) == 1:
                    script.append(("identity", f"user{index}.test"))

    def replay(n: int) -> None:
        for _ in range(n):
            if past:
                script.append(("replay", rng.choice(past)))

    fate = rng.random()
    commits(n_commits // 2)
    if fate < 0.15:  # deactivates for a while, then comes back
        script += [("account", False, "deactivated"), ("account", True, None)]
    elif fate < 0.25:
        script.append(("account", False, "throttled"))  # changes nothing
    if rng.random() < 0.3:
        script.append(("identity", f"renamed{index}.test"))
    commits(n_commits - n_commits // 2)
    replay(2)
    if 0.25 <= fate < 0.35:
        script += [("account", False, "takendown")]
        replay(1)
    elif 0.35 <= fate < 0.45:
        script.append(("account", False, "suspended"))
    elif 0.45 <= fate < 0.55:
        script.append(("account", False, "deleted"))
        replay(3)  # old events after the deletion must not bring rows back
    return script


def build_stream(seed: int = 20240607, n_dids: int = 140, commits_per_did: int = 22) -> list[str]:
    """The stream as Jetstream JSON frames, in time order."""
    rng = random.Random(seed)
    scripts = [_did_script(rng, i, commits_per_did) for i in range(n_dids)]
    positions = [0] * n_dids
    emitted: list[dict[int, dict[str, Any]]] = [{} for _ in range(n_dids)]
    frames: list[str] = []
    time_us = int(time.time() * 1e6) - 3 * 3600 * 1_000_000  # well before "now"
    seq = 0
    last_did = -1
    while True:
        pending = [i for i in range(n_dids) if positions[i] < len(scripts[i])]
        if not pending:
            break
        i = rng.choice(pending)
        action = scripts[i][positions[i]]
        # Now and then two events share a time_us (never two of one account).
        if not (i != last_did and rng.random() < 0.05):
            time_us += STEP_US
        author = numbered_did(i)
        seq += 1
        event: dict[str, Any] = {"did": author, "time_us": time_us}
        kind = action[0]
        if kind == "identity":
            event |= {
                "kind": "identity",
                "identity": {
                    "did": author,
                    "handle": action[1],
                    "seq": seq,
                    "time": _iso(time_us),
                },
            }
        elif kind == "account":
            info: dict[str, Any] = {"active": action[1], "did": author, "seq": seq}
            info["time"] = _iso(time_us)
            if action[2] is not None:
                info["status"] = action[2]
            event |= {"kind": "account", "account": info}
        elif kind == "replay":
            # A late copy of an earlier commit: old rev, new arrival time. It must lose.
            event |= {"kind": "commit", "commit": emitted[i][action[1]]["commit"]}
        else:
            operation, collection, rkey = action
            commit: dict[str, Any] = {
                "rev": _tid(time_us, i),
                "operation": operation,
                "collection": collection,
                "rkey": rkey,
            }
            if operation != "delete":
                text = "".join(rng.choices(string.ascii_letters + " ", k=PAYLOAD_CHARS))
                record = {"$type": collection, "text": text, "createdAt": _iso(time_us)}
                commit["record"] = record
                commit["cid"] = "bafyrei" + hashlib.sha256(text.encode()).hexdigest()[:40]
            event |= {"kind": "commit", "commit": commit}
        emitted[i][positions[i]] = event
        frames.append(json.dumps(event))
        if rng.random() < 0.02:
            frames.append(frames[-1])  # delivered twice
        positions[i] += 1
        last_did = i
    return frames


# -- processes and locks -------------------------------------------------------------------------


def _wait_stopped(pid: int) -> None:
    """Until the kernel reports the process as stopped (SIGSTOP is delivered asynchronously)."""
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(0.0005)


def _has_open(pid: int, path: Path) -> bool:
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            if fd.readlink() == path:
                return True
        except OSError:
            continue
    return False


@dataclass
class Kill:
    transaction: int  # which write transaction of the run (1 = first) was interrupted
    phase: str  # "apply" (before COMMIT) or "commit" (WAL written, not yet checkpointed)
    lock_held: bool  # the frozen child held the write flock on <db>.rw
    db_open: bool  # ... and had the DuckDB file open
    wal_present: bool  # ... and DuckDB's write-ahead log existed
    after_ms: float  # how long after the lock was first seen held the child was frozen


class IngestProcess:
    """One ingest cycle in a child process."""

    def __init__(self, db: Path, url: str, workdir: Path, name: str) -> None:
        env = dict(os.environ)
        env.update(
            MIRROR_DB=str(db),
            JETSTREAM_URLS=url,
            COLLECTIONS=",".join(COLLECTIONS),
            INGEST_FLUSH_EVENTS=str(FLUSH_EVENTS),
            INGEST_IDLE_SECONDS="0.5",
            INGEST_REWIND_SECONDS=str(REWIND_SECONDS),
            INGEST_MAX_SECONDS="60",
        )
        self.stdout = workdir / f"{name}.out"
        self.stderr = workdir / f"{name}.err"
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-c", CHILD], cwd=workdir, env=env, stdout=out, stderr=err
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def finish(self, timeout: float = 60) -> dict[str, Any]:
        """Wait for a normal end; the ingest report the child printed."""
        code = self.process.wait(timeout)
        assert code == 0, f"ingest failed ({code}):\n{self.stderr.read_text()[-3000:]}"
        return dict(json.loads(self.stdout.read_text().strip().splitlines()[-1]))

    def kill_inside(self, db: Path, nth: int, phase: str, rng: random.Random) -> Kill | None:
        """SIGKILL the child inside its nth (or, if that one is missed, a later) transaction.

        phase "apply": early in the transaction, before COMMIT writes DuckDB's WAL file;
        phase "commit": while the WAL file exists (committed, not yet checkpointed).
        """
        rw = db.with_name(db.name + ".rw")
        wal = db.with_name(db.name + ".wal")
        transactions, was_held, held_at = 0, False, 0.0
        deadline = time.monotonic() + 60
        while self.process.poll() is None:
            assert time.monotonic() < deadline, "the ingest never reached the transaction"
            held = flock_holders(rw).get(self.pid) == "WRITE"
            if held and not was_held:
                transactions += 1
                held_at = time.monotonic()
            was_held = held
            if not held or transactions < nth or (phase == "commit" and not wal.exists()):
                time.sleep(0.0002)
                continue
            if phase == "apply":
                time.sleep(rng.uniform(0, 0.01))
            os.kill(self.pid, signal.SIGSTOP)
            _wait_stopped(self.pid)
            inside = flock_holders(rw).get(self.pid) == "WRITE"
            db_open = _has_open(self.pid, db)
            wal_present = wal.exists()
            if inside and db_open and wal_present == (phase == "commit"):
                after_ms = (time.monotonic() - held_at) * 1000
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(10)
                return Kill(transactions, phase, inside, db_open, wal_present, after_ms)
            os.kill(self.pid, signal.SIGCONT)
            if not inside or (phase == "apply" and wal_present):
                nth = transactions + 1  # missed this one (over, or committing): the next one
        return None

    def ensure_dead(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def children() -> Iterator[list[IngestProcess]]:
    started: list[IngestProcess] = []
    yield started
    for child in started:
        child.ensure_dead()


# -- the state compared -------------------------------------------------------------------------


@dataclass
class State:
    records: list[tuple[Any, ...]]
    accounts: list[tuple[Any, ...]]
    backfills: list[tuple[Any, ...]]
    cursor_us: int | None


def _state(db: Path) -> State | None:
    """What the file holds; None if it has no schema. Reads only: it never repairs the file."""
    if not db.exists():
        return None
    with read_lock(db, timeout=10):
        con = duckdb.connect(str(db), read_only=True)
        try:
            if current_version(con) == 0:
                return None
            records = con.execute(
                "SELECT uri, rev, cid, record::VARCHAR, deleted, hidden FROM record_versions "
                "ORDER BY uri"
            ).fetchall()
            accounts = con.execute(
                "SELECT did, status, handle, hidden, identity_stale FROM accounts ORDER BY did"
            ).fetchall()
            backfills = con.execute(
                "SELECT did, collection, status FROM backfills ORDER BY did, collection"
            ).fetchall()
            cursor = con.execute("SELECT cursor_us FROM ingest_state").fetchall()
            newest = con.execute("SELECT max(time_us) FROM record_versions").fetchall()[0][0]
        finally:
            con.close()
    cursor_us = int(cursor[0][0]) if cursor else None
    # Invariant 1 seen from the file: no row is newer than the cursor that covers it.
    if newest is not None:
        assert cursor_us is not None and newest <= cursor_us, (
            f"rows up to {newest} committed, but the cursor says {cursor_us}"
        )
    return State(records, accounts, backfills, cursor_us)


def _batch_ends(server: JetstreamServer, cursor_us: int | None) -> list[int]:
    """The cursor after each flush of a cycle that starts at `cursor_us`: the time of every
    FLUSH_EVENTS-th frame the server sends it (every frame here is an event to apply)."""
    start = None if cursor_us is None else cursor_us - int(REWIND_SECONDS * 1e6)
    sent = [
        frame.time_us
        for frame in sorted(server.frames, key=lambda f: f.time_us)
        if (start is None or frame.time_us >= start)
        and (frame.collection is None or frame.collection in COLLECTIONS)
    ]
    return sent[FLUSH_EVENTS - 1 :: FLUSH_EVENTS]


def _differences(name: str, got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> str | None:
    """None if equal; else a short account of extra and missing rows."""
    if got == want:
        return None
    got_set, want_set = set(got), set(want)
    extra = sorted(got_set - want_set, key=repr)
    missing = sorted(want_set - got_set, key=repr)
    short = [tuple(str(v)[:60] for v in row) for row in extra[:3] + missing[:3]]
    return (
        f"{name}: {len(got)} rows against {len(want)} in the reference; {len(extra)} extra, "
        f"{len(missing)} missing, e.g. {short}"
    )


# -- the test -------------------------------------------------------------------------------------


def test_sigkill_inside_write_transactions_changes_nothing(
    tmp_path: Path, children: list[IngestProcess]
) -> None:
    frames = build_stream()
    server = JetstreamServer()
    for frame in frames:
        server.add(json.loads(frame))
    rng = random.Random(1)
    with server:
        # One run without a crash: the state every crashed sequence must reach.
        reference_db = tmp_path / "reference.duckdb"
        reference = IngestProcess(reference_db, server.url, tmp_path, "reference")
        children.append(reference)
        report = reference.finish()
        assert report["stop_reason"] == "idle"
        assert report["flushes"] >= 10, report
        want = _state(reference_db)
        assert want is not None

        db = tmp_path / "mirror.duckdb"
        wal = db.with_name(db.name + ".wal")
        kills: list[Kill] = []
        outcomes: list[str] = []
        states: list[State | None] = []
        for run, (nth, phase) in enumerate(KILL_PLAN):
            before = states[-1] if states else None
            cursor_before = None if before is None else before.cursor_us
            requests_before = len(server.requests)
            child = IngestProcess(db, server.url, tmp_path, f"run{run}")
            children.append(child)
            kill = child.kill_inside(db, nth, phase, rng)
            assert kill is not None, (
                f"run {run} ended before transaction {nth} ({phase}):\n{child.stderr.read_text()}"
            )
            kills.append(kill)
            if phase == "commit":
                assert wal.exists(), "the WAL was gone after the kill: nothing left to recover"
            state = _state(db)  # the file opens after every kill ...
            states.append(state)
            if run > 0:
                # ... and each run resumed from the stored cursor, minus the rewind.
                asked = server.requests[requests_before].cursor
                rewound = (
                    None if cursor_before is None else cursor_before - int(REWIND_SECONDS * 1e6)
                )
                assert asked == rewound, (asked, cursor_before)
            # Exactly the batches committed before the kill are in the file: none of the batch
            # cut short (or, killed in its commit, all of it), nothing of a later one.
            # Transaction 1 of a run on a file without schema creates the schema.
            batch = kill.transaction - (1 if before is None else 0)
            ends = [cursor_before, *_batch_ends(server, cursor_before)]
            allowed = {ends[batch - 1] if batch > 0 else None}
            if phase == "commit":
                allowed.add(ends[batch] if batch > 0 else None)
            cursor_after = None if state is None else state.cursor_us
            assert cursor_after in allowed, (run, kill, cursor_before, cursor_after, allowed)
            outcomes.append(
                "no schema yet"
                if state is None
                else "schema committed"
                if batch == 0
                else "interrupted batch kept"
                if batch > 0 and cursor_after == ends[batch] != ends[batch - 1]
                else "interrupted batch gone"
            )

        final = IngestProcess(db, server.url, tmp_path, "final")
        children.append(final)
        report = final.finish()
        assert report["stop_reason"] == "idle"
        got = _state(db)
        assert got is not None

    summary = "; ".join(
        f"transaction {k.transaction} ({k.phase}, {k.after_ms:.0f} ms in): lock held "
        f"{k.lock_held}, db open {k.db_open}, wal {k.wal_present} -> {outcome}"
        for k, outcome in zip(kills, outcomes, strict=True)
    )
    cursors = [None if s is None else s.cursor_us for s in states]
    print(f"\n{len(frames)} frames; kills: {summary}; cursors after the kills: {cursors}")
    landed = [k for k in kills if k.lock_held and k.db_open]
    assert len(landed) == len(KILL_PLAN), f"kills outside a write transaction: {summary}"
    assert any(k.wal_present for k in kills), "no kill between COMMIT and checkpoint"
    # The kills cut the work short: the crashed runs had not reached the end.
    assert all(c is None or c < (want.cursor_us or 0) for c in cursors), cursors

    # The reference is a real workload, not an empty file.
    assert sum(1 for r in want.records if r[4]) > 50, "few tombstones"
    assert sum(1 for r in want.records if r[5]) > 20, "few hidden rows"
    assert sum(1 for r in want.records if not r[4] and not r[5]) > 1000, "few live rows"
    assert {a[1] for a in want.accounts} >= {"active", "deleted", "takendown", "suspended"}

    assert got.cursor_us == want.cursor_us
    problems = [
        _differences("record_versions", got.records, want.records),
        _differences("accounts", got.accounts, want.accounts),
        _differences("backfills", got.backfills, want.backfills),
    ]
    assert not any(problems), "\n".join(p for p in problems if p)


def test_restart_between_a_new_accounts_handle_and_first_commit_changes_nothing(
    tmp_path: Path, children: list[IngestProcess]
) -> None:
    """The identity event of a new account, then its first commit, with a (crash) restart."""
    base = int(time.time() * 1e6) - 3600 * 1_000_000
    filler, newcomer = did("filler"), did("newcomer")
    events: list[dict[str, Any]] = []
    for i in range(2 * FLUSH_EVENTS):
        time_us = base + i * STEP_US
        if i == FLUSH_EVENTS - 10:  # the last batch before the restart
            identity = {"did": newcomer, "handle": "new.test", "seq": i, "time": _iso(time_us)}
            events.append(
                {"did": newcomer, "time_us": time_us, "kind": "identity", "identity": identity}
            )
            continue
        author = newcomer if i == FLUSH_EVENTS + 10 else filler
        commit = {
            "rev": _tid(time_us, 0),
            "operation": "create",
            "collection": COLLECTIONS[0],
            "rkey": _tid(time_us, 1),
            "record": {"$type": COLLECTIONS[0], "text": str(i)},
            "cid": f"bafyrei{i:040d}",
        }
        events.append({"did": author, "time_us": time_us, "kind": "commit", "commit": commit})

    def handles(db: Path) -> list[tuple[Any, ...]]:
        with FileStore(db).reading() as con:
            return con.execute(
                "SELECT did, handle, identity_stale FROM accounts ORDER BY did"
            ).fetchall()

    server = JetstreamServer()
    with server:
        for event in events[:FLUSH_EVENTS]:
            server.add(event)
        # A cycle that ends (or dies) right after the batch holding the identity event ...
        restarted, reference = tmp_path / "restarted.duckdb", tmp_path / "reference.duckdb"
        children.append(IngestProcess(restarted, server.url, tmp_path, "first"))
        children[-1].finish()
        for event in events[FLUSH_EVENTS:]:
            server.add(event)
        # ... and the next one, against one cycle over the whole stream.
        children.append(IngestProcess(restarted, server.url, tmp_path, "second"))
        children[-1].finish()
        children.append(IngestProcess(reference, server.url, tmp_path, "reference"))
        children[-1].finish()
    assert handles(restarted) == handles(reference)


def test_a_file_cut_short_while_being_made_is_made_again(tmp_path: Path) -> None:
    """A process killed while DuckDB writes a new file's headers leaves only the file beside
    it (`.new`), never a mirror file that cannot be opened: the next writer makes it anew."""
    db = tmp_path / "mirror.duckdb"
    cut_short = db.with_name(db.name + ".new")
    cut_short.write_bytes(b"DUCK" + bytes(100))  # the first bytes of a header, then nothing
    with pytest.raises(duckdb.Error):
        duckdb.connect(str(cut_short)).close()

    store = FileStore(db)
    store.init()

    assert not cut_short.exists()
    with store.reading() as con:
        assert current_version(con) > 0
