"""The single-writer lock (docs/ingest.md, the file lock) with real processes, real flocks
and real DuckDB files.

Every worker below runs in its own process started with the `spawn` context, so nothing is
shared with the test process but the lock files, a few multiprocessing events and queues,
and append-only log files. Log lines carry `time.monotonic_ns()`, which is one system-wide
clock on Linux, so intervals from different processes can be compared.

Where a test needs to know that a process *holds* a flock (and not just that it was told to
take it), it reads `/proc/locks`, which names the holder's pid without touching the lock.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import stat
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from itertools import pairwise
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any
from unittest.mock import patch

import duckdb
import pytest

from mirror_assets.store.file import FileStore
from mirror_assets.store.lock import LockTimeoutError, LockWait, read_lock, write_lock
from tests.support.proc_locks import flock_holders

SPAWN = mp.get_context("spawn")
WAIT = 30.0  # how long a worker or the test waits for something that must happen
STARVED = 10.0  # a writer still waiting after this long under reader load is starved


# -- helpers shared by the workers and the tests --------------------------------------------


def _lock(mode: str, db: Path, timeout: float) -> AbstractContextManager[LockWait]:
    return write_lock(db, timeout) if mode == "write" else read_lock(db, timeout)


def _mark(log: str, kind: str) -> None:
    """Append `kind pid time_ns` to the log in one write (O_APPEND: lines never interleave)."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{kind} {os.getpid()} {time.monotonic_ns()}\n".encode())
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Mark:
    kind: str
    pid: int
    ns: int


def _read_marks(log: Path) -> list[Mark]:
    if not log.exists():
        return []
    marks = []
    for line in log.read_text().splitlines():
        kind, pid, ns = line.split()
        marks.append(Mark(kind, int(pid), int(ns)))
    return marks


def _intervals(marks: list[Mark], enter: str, leave: str) -> list[tuple[int, int, int]]:
    """(pid, enter_ns, leave_ns) for every enter mark matched with the same pid's next leave."""
    open_at: dict[int, int] = {}
    spans = []
    for mark in marks:
        if mark.kind == enter:
            assert mark.pid not in open_at, f"{mark.pid} entered twice without leaving"
            open_at[mark.pid] = mark.ns
        elif mark.kind == leave:
            spans.append((mark.pid, open_at.pop(mark.pid), mark.ns))
    assert not open_at, f"entered but never left: {open_at}"
    return spans


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.001)


def _gate(db: Path) -> Path:
    return db.with_name(db.name + ".gate")


def _rw(db: Path) -> Path:
    return db.with_name(db.name + ".rw")


@pytest.fixture
def spawn() -> Iterator[Callable[..., BaseProcess]]:
    """Start worker processes; whatever is still running at the end is SIGKILLed."""
    started: list[BaseProcess] = []

    def start(target: Callable[..., None], *args: Any) -> BaseProcess:
        process = SPAWN.Process(target=target, args=args, daemon=True)
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(10)


def _join_ok(process: BaseProcess, timeout: float = WAIT) -> None:
    process.join(timeout)
    assert not process.is_alive(), f"worker {process.pid} still running after {timeout} s"
    assert process.exitcode == 0, f"worker {process.pid} failed with exit code {process.exitcode}"


# -- workers (module level, so `spawn` can import them) --------------------------------------


def _writer_rounds(db: str, log: str, rounds: int, ready: Barrier) -> None:
    ready.wait(WAIT)  # all writers start together, or they might just take turns
    for _ in range(rounds):
        _mark(log, "want")
        with write_lock(Path(db), timeout=WAIT):
            _mark(log, "enter")
            time.sleep(0.002)
            _mark(log, "leave")


def _reader_meets(db: str, inside: Event, other_inside: Event, results: Queue[bool]) -> None:
    with read_lock(Path(db), timeout=WAIT):
        inside.set()
        # Only true if the other reader gets in while this one is still inside.
        results.put(other_inside.wait(10))


def _hold(db: str, mode: str, log: str, holding: Event, release: Event) -> None:
    with _lock(mode, Path(db), WAIT):
        _mark(log, "holder-enter")
        holding.set()
        release.wait(WAIT)
        _mark(log, "holder-leave")


def _hold_forever(db: str, mode: str, holding: Event) -> None:
    with _lock(mode, Path(db), WAIT):
        holding.set()
        time.sleep(3600)


def _enter_once(
    db: str, mode: str, log: str, trying: Event, entered: Event, waits: Queue[float]
) -> None:
    trying.set()
    with _lock(mode, Path(db), WAIT) as wait:
        _mark(log, "waiter-enter")
        entered.set()
        waits.put(wait.seconds)


def _reader_load(db: str, log: str, stop: Event, hold: float) -> None:
    """Enter and leave as a reader in a tight loop until told to stop."""
    while not stop.is_set():
        with read_lock(Path(db), timeout=WAIT):
            _mark(log, "r-enter")
            time.sleep(hold)
            _mark(log, "r-leave")


def _writer_under_load(db: str, log: str, rounds: int, go: Event, waits: Queue[float]) -> None:
    go.wait(WAIT)
    for _ in range(rounds):
        _mark(log, "w-want")
        try:
            with write_lock(Path(db), timeout=STARVED) as wait:
                _mark(log, "w-enter")
                time.sleep(0.05)
                _mark(log, "w-leave")
        except LockTimeoutError:
            _mark(log, "w-starved")
            waits.put(float("inf"))
            return
        waits.put(wait.seconds)
        time.sleep(0.1)  # let the readers back in before the next round


@contextmanager
def _logging_duckdb_conflicts(log: str) -> Iterator[None]:
    """Log every failed `duckdb.connect` of this process.

    `FileStore` retries a DuckDB "Could not set lock" (for outside processes such as an
    analyst's shell), which would hide a broken protocol; our own processes must never see it.
    """
    connect = duckdb.connect

    def logging_connect(*args: Any, **kwargs: Any) -> duckdb.DuckDBPyConnection:
        try:
            return connect(*args, **kwargs)
        except duckdb.Error:
            _mark(log, "duckdb-conflict")
            raise

    with patch.object(duckdb, "connect", logging_connect):
        yield


def _duckdb_writer(db: str, log: str, iterations: int, go: Event, errors: Queue[str]) -> None:
    store = FileStore(Path(db), lock_timeout=WAIT)
    go.wait(WAIT)
    try:
        with _logging_duckdb_conflicts(log):
            for i in range(iterations):
                _mark(log, "w-want")
                with store.writing() as tx:
                    _mark(log, "w-enter")
                    tx.con.execute("INSERT INTO counter VALUES (?)", [i])
                _mark(log, "w-leave")  # committed, closed and unlocked
                # Ingest reads the network between flushes; back-to-back writes would starve
                # the reader, whose polling backs off to 20 ms (writer preference, by design).
                time.sleep(0.01)
    except Exception:
        errors.put(traceback.format_exc())
        raise


def _duckdb_reader(db: str, log: str, stop: Event, go: Event, results: Queue[Any]) -> None:
    """Read until told to stop; report every (count, max) seen, or the first error."""
    store = FileStore(Path(db), lock_timeout=WAIT)
    seen: list[tuple[int, int]] = []
    go.wait(WAIT)
    try:
        with _logging_duckdb_conflicts(log):
            while not stop.is_set():
                _mark(log, "r-want")
                with store.reading() as con:
                    _mark(log, "r-enter")
                    row = con.execute(
                        "SELECT count(*), coalesce(max(i), -1) FROM counter"
                    ).fetchone()
                    assert row is not None
                    seen.append((int(row[0]), int(row[1])))
                _mark(log, "r-leave")
    except Exception:
        results.put(("error", traceback.format_exc()))
        raise
    results.put(("ok", seen))


# -- tests ------------------------------------------------------------------------------------


def test_writers_never_overlap(db: Path, tmp_path: Path, spawn: Callable[..., BaseProcess]) -> None:
    log = tmp_path / "log"
    writers, rounds = 4, 20
    ready = SPAWN.Barrier(writers)
    processes = [spawn(_writer_rounds, str(db), str(log), rounds, ready) for _ in range(writers)]
    for process in processes:
        _join_ok(process)

    marks = _read_marks(log)
    inside = [m for m in marks if m.kind != "want"]
    assert len(inside) == 2 * writers * rounds
    # Exclusive: the log reads enter, leave, enter, leave, ... each pair from one process.
    for enter, leave in zip(inside[::2], inside[1::2], strict=True):
        assert (enter.kind, leave.kind) == ("enter", "leave"), f"overlap at {enter}, {leave}"
        assert enter.pid == leave.pid, f"{leave.pid} left while {enter.pid} was inside"
    spans = sorted(_intervals(marks, "enter", "leave"), key=lambda span: span[1])
    for (_, _, left), (_, entered, _) in pairwise(spans):
        assert left <= entered
    # The test means something only if writers really contended: some kept trying while
    # another process was inside.
    tries = _intervals(marks, "want", "enter")
    contended = sum(
        1
        for pid, asked, got in tries
        if any(other != pid and start < got and asked < end for other, start, end in spans)
    )
    assert contended > 0, "the writers never competed for the lock"
    print(f"writers: {contended} of {writers * rounds} asked while another was inside")


def test_readers_share(db: Path, spawn: Callable[..., BaseProcess]) -> None:
    first_inside, second_inside = SPAWN.Event(), SPAWN.Event()
    results: Queue[bool] = SPAWN.Queue()
    readers = [
        spawn(_reader_meets, str(db), first_inside, second_inside, results),
        spawn(_reader_meets, str(db), second_inside, first_inside, results),
    ]
    for reader in readers:
        _join_ok(reader)
    assert [results.get(timeout=5), results.get(timeout=5)] == [True, True], (
        "two readers were never inside at the same time"
    )


@pytest.mark.parametrize(
    ("holder", "waiter"), [("write", "read"), ("read", "write"), ("write", "write")]
)
def test_waits_while_the_file_is_held(
    db: Path, tmp_path: Path, spawn: Callable[..., BaseProcess], holder: str, waiter: str
) -> None:
    """A reader waits for a writer (and the other way round) and gets in after it, not before."""
    log = tmp_path / "log"
    holding, release, trying, entered = (SPAWN.Event() for _ in range(4))
    waits: Queue[float] = SPAWN.Queue()
    holder_process = spawn(_hold, str(db), holder, str(log), holding, release)
    assert holding.wait(WAIT)
    waiter_process = spawn(_enter_once, str(db), waiter, str(log), trying, entered, waits)
    assert trying.wait(WAIT)

    held_for = 0.5
    assert not entered.wait(held_for), f"a {waiter} got in while a {holder} held the file"
    release.set()
    assert entered.wait(WAIT), f"the {waiter} never got in after the {holder} left"
    _join_ok(holder_process)
    _join_ok(waiter_process)

    kinds = [m.kind for m in _read_marks(log)]
    assert kinds == ["holder-enter", "holder-leave", "waiter-enter"]
    assert waits.get(timeout=5) >= held_for * 0.9


def test_writer_is_not_starved_by_continuous_readers(
    db: Path, tmp_path: Path, spawn: Callable[..., BaseProcess]
) -> None:
    """Writer preference: a waiting writer gets in quickly and stops new readers meanwhile."""
    log = tmp_path / "log"
    stop, go = SPAWN.Event(), SPAWN.Event()
    waits: Queue[float] = SPAWN.Queue()
    n_readers, rounds = 4, 5
    readers = [spawn(_reader_load, str(db), str(log), stop, 0.004) for _ in range(n_readers)]
    writer = spawn(_writer_under_load, str(db), str(log), rounds, go, waits)

    # Start the writer only once the readers are busy, and two are inside at the same time.
    def readers_overlap() -> bool:
        return sum(1 for mode in flock_holders(_rw(db)).values() if mode == "READ") >= 2

    _wait_for(lambda: _rw(db).exists() and readers_overlap(), "two readers inside at once")
    go.set()
    # Watch the gate from outside: when does the writer hold it (i.e. is it waiting or in)?
    gate_held: list[int] = []
    while writer.is_alive():
        if _gate(db).exists() and flock_holders(_gate(db)).get(writer.pid or -1) == "WRITE":
            gate_held.append(time.monotonic_ns())
        time.sleep(0.0002)
    stop.set()
    _join_ok(writer)
    for reader in readers:
        _join_ok(reader)

    marks = _read_marks(log)
    measured: list[float] = []
    while len(measured) < rounds and float("inf") not in measured:  # inf: timed out
        measured.append(waits.get(timeout=5))
    longest = max(measured)
    waits_text = ", ".join(f"{w * 1000:.1f} ms" for w in measured)
    assert longest < 5.0, f"writer waited {longest:.3f} s under reader load ({waits_text})"

    reader_spans = _intervals(marks, "r-enter", "r-leave")
    writer_spans = _intervals(marks, "w-enter", "w-leave")
    wants = [m.ns for m in marks if m.kind == "w-want"]
    assert len(writer_spans) == rounds
    previous_left = 0
    for want, (_, entered, left) in zip(wants, writer_spans, strict=True):
        # Exclusion: no reader inside while the writer is.
        overlapping = [s for s in reader_spans if s[1] < left and s[2] > entered]
        assert not overlapping, f"readers inside with the writer: {overlapping[:3]}"
        # Load was real: readers came and went between the previous writer and this one.
        assert any(previous_left < s[1] < want for s in reader_spans), "no reader load"
        previous_left = left
        # Preference: once the writer holds the gate, only readers already past it may enter
        # (at most one per reader process); without the gate they would keep streaming in.
        gate_at = min((t for t in gate_held if want <= t <= left), default=None)
        if gate_at is not None:
            late = [s for s in reader_spans if gate_at < s[1] < entered]
            assert len(late) <= n_readers, (
                f"{len(late)} readers entered while the writer waited ({waits_text})"
            )
    assert any(t is not None for t in gate_held), "never saw the writer hold the gate"
    # And readers get their turn again after each writer.
    for _, _, left in writer_spans:
        assert any(s[1] > left for s in reader_spans), "readers never came back after a writer"
    print(f"writer waits under {n_readers} looping readers: {waits_text}")


@pytest.mark.parametrize("mode", ["write", "read"])
def test_killed_holder_releases_the_lock(
    db: Path, spawn: Callable[..., BaseProcess], mode: str
) -> None:
    holding = SPAWN.Event()
    holder = spawn(_hold_forever, str(db), mode, holding)
    assert holding.wait(WAIT)
    with pytest.raises(LockTimeoutError), write_lock(db, timeout=0.2):
        pass  # held: a writer cannot get in

    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(WAIT)
    assert holder.exitcode == -signal.SIGKILL

    with write_lock(db, timeout=2.0) as wait:
        assert wait.seconds < 1.0, f"the next writer waited {wait.seconds:.3f} s"
    with read_lock(db, timeout=2.0) as wait:
        assert wait.seconds < 1.0


def test_killed_waiting_writer_does_not_block_readers(
    db: Path, spawn: Callable[..., BaseProcess], tmp_path: Path
) -> None:
    """A writer killed while it waits (holding the gate) must not keep readers out."""
    log = str(tmp_path / "log")
    reader_holding, release = SPAWN.Event(), SPAWN.Event()
    reader = spawn(_hold, str(db), "read", log, reader_holding, release)
    assert reader_holding.wait(WAIT)
    writer_holding = SPAWN.Event()  # keep a reference: the child unpickles it later
    writer = spawn(_hold_forever, str(db), "write", writer_holding)
    _wait_for(
        lambda: flock_holders(_gate(db)).get(writer.pid or -1) == "WRITE",
        "the writer to hold the gate while it waits",
    )
    with pytest.raises(LockTimeoutError), read_lock(db, timeout=0.2):
        pass  # a waiting writer keeps new readers out

    assert writer.pid is not None
    os.kill(writer.pid, signal.SIGKILL)
    writer.join(WAIT)
    with read_lock(db, timeout=2.0) as wait:
        assert wait.seconds < 1.0
    release.set()
    _join_ok(reader)


@pytest.mark.parametrize("holder", ["write", "read"])
def test_timeout_raises_a_clear_error(
    db: Path, spawn: Callable[..., BaseProcess], holder: str
) -> None:
    holding = SPAWN.Event()
    spawn(_hold_forever, str(db), holder, holding)
    assert holding.wait(WAIT)

    modes = ["write", "read"] if holder == "write" else ["write"]
    for mode in modes:
        started = time.monotonic()
        with pytest.raises(LockTimeoutError) as raised, _lock(mode, db, 0.3):
            pytest.fail(f"a {mode} lock was granted while a {holder} held the file")
        elapsed = time.monotonic() - started
        assert isinstance(raised.value, TimeoutError)
        message = str(raised.value)
        assert str(db) in message
        assert "still locked by another process" in message
        assert 0.3 <= elapsed < 5.0, f"gave up after {elapsed:.3f} s, not at the 0.3 s timeout"

    if holder == "read":
        # The writer that timed out must not leave the gate closed behind it.
        with read_lock(db, timeout=2.0) as wait:
            assert wait.seconds < 1.0


def test_duckdb_writer_and_reader_processes_never_conflict(
    db: Path, tmp_path: Path, spawn: Callable[..., BaseProcess]
) -> None:
    """writing() in one process, reading() in another: DuckDB never sees both."""
    with FileStore(db).writing() as tx:
        tx.con.execute("CREATE TABLE counter (i INTEGER)")
    log = str(tmp_path / "log")
    stop, go = SPAWN.Event(), SPAWN.Event()
    errors: Queue[str] = SPAWN.Queue()
    results: Queue[Any] = SPAWN.Queue()
    iterations = 150
    writer = spawn(_duckdb_writer, str(db), log, iterations, go, errors)
    reader = spawn(_duckdb_reader, str(db), log, stop, go, results)
    go.set()
    writer.join(60)
    stop.set()
    reader.join(WAIT)
    assert errors.empty(), errors.get()
    assert writer.exitcode == 0
    status, seen = results.get(timeout=5)
    assert status == "ok", seen
    assert reader.exitcode == 0

    # Every read saw a committed state, and states only moved forward.
    assert all(count == top + 1 for count, top in seen), "a read saw a half-written state"
    assert [count for count, _ in seen] == sorted(count for count, _ in seen)
    with FileStore(db).reading() as con:
        assert con.execute("SELECT count(*) FROM counter").fetchone() == (iterations,)

    # And the two really took turns: a process kept trying while the other was inside.
    marks = _read_marks(Path(log))
    writer_spans = _intervals(marks, "w-enter", "w-leave")
    reader_spans = _intervals(marks, "r-enter", "r-leave")
    reader_tries = _intervals(marks, "r-want", "r-enter")
    writer_tries = _intervals(marks, "w-want", "w-enter")
    readers_blocked = sum(
        1 for _, want, got in reader_tries if any(want < e and s < got for _, s, e in writer_spans)
    )
    writers_blocked = sum(
        1 for _, want, got in writer_tries if any(want < e and s < got for _, s, e in reader_spans)
    )
    conflicts = sum(1 for m in marks if m.kind == "duckdb-conflict")
    assert conflicts == 0, f"DuckDB refused to open the file {conflicts} times"
    total = len(writer_spans) + len(reader_spans)
    print(
        f"duckdb: {len(writer_spans)} writes, {len(reader_spans)} reads, {readers_blocked} "
        f"reads waited for a writer, {writers_blocked} writes waited for a reader"
    )
    assert total >= 200, f"only {total} iterations"
    assert readers_blocked > 0 and writers_blocked > 0, (readers_blocked, writers_blocked)


def test_lock_files_are_for_their_owner_only_even_under_umask_0(tmp_path: Path) -> None:
    """`flock` needs nothing but an open file: whoever can open a lock file can hold it and
    stop every writer."""
    db = tmp_path / "mirror.duckdb"
    old = os.umask(0)
    try:
        with write_lock(db):
            pass
        with read_lock(db):
            pass
    finally:
        os.umask(old)
    for suffix in (".gate", ".rw"):
        assert stat.S_IMODE((tmp_path / f"mirror.duckdb{suffix}").stat().st_mode) == 0o600


def test_lock_files_an_earlier_version_left_open_are_tightened(tmp_path: Path) -> None:
    db = tmp_path / "mirror.duckdb"
    for suffix in (".gate", ".rw"):
        path = tmp_path / f"mirror.duckdb{suffix}"
        path.touch()
        path.chmod(0o666)
    with read_lock(db):
        pass
    for suffix in (".gate", ".rw"):
        assert stat.S_IMODE((tmp_path / f"mirror.duckdb{suffix}").stat().st_mode) == 0o600
