"""The cross-process lock around the DuckDB file: one writer or many readers, writers first.

DuckDB lets one process open a file read-write or many open it read-only, never both
(docs/ingest.md, the file lock). Two `flock` files beside the database carry the protocol:

* ``<db>.gate``: a writer holds it exclusively from the moment it starts waiting until it
  is done. Readers pass through it (shared, for an instant) before they enter, so a waiting
  writer stops new readers and only has to wait for those already inside.
* ``<db>.rw``: readers hold it shared while the file is open; a writer holds it exclusively.

`flock` locks belong to open file descriptions and vanish when the process dies, so a
killed writer never leaves the file locked.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE_MODE = 0o600
_FIRST_POLL = 0.0005
MAX_POLL_SECONDS = 0.02  # a waiting process looks at the lock at least this often
# A writer with one transaction after another leaves the file free at least this long in
# between: longer than a waiting reader's longest poll of the lock, so readers get in.
READER_WINDOW_SECONDS = 1.5 * MAX_POLL_SECONDS


class LockTimeoutError(TimeoutError):
    """The file stayed locked by another process for longer than the caller allows."""


@dataclass
class LockWait:
    """How long the holder waited for the lock, for metrics and logs."""

    seconds: float = 0.0


def _lock_files(db_path: Path) -> tuple[Path, Path]:
    return db_path.with_name(db_path.name + ".gate"), db_path.with_name(db_path.name + ".rw")


def _open(path: Path) -> int:
    """Open a lock file, made readable and writable by its owner only: `flock` needs nothing
    but an open file, so anyone who could open it could hold the lock and stop every writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, LOCK_FILE_MODE)
    status = os.fstat(fd)
    if status.st_mode & 0o077 and status.st_uid == os.geteuid():
        os.fchmod(fd, LOCK_FILE_MODE)  # made open to others by an earlier version
    return fd


def _acquire(fd: int, mode: int, deadline: float, what: str) -> None:
    """Take `flock(mode)` on fd, polling with backoff until the deadline."""
    delay = _FIRST_POLL
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            now = time.monotonic()
            if now >= deadline:
                raise LockTimeoutError(
                    f"{what} is still locked by another process; a writer may be stuck "
                    "(check running Dagster runs) or an analyst holds the file open"
                ) from None
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, MAX_POLL_SECONDS)


@contextmanager
def write_lock(db_path: Path, timeout: float = 120.0) -> Iterator[LockWait]:
    """Hold the file exclusively: no reader and no other writer is inside meanwhile."""
    gate_path, rw_path = _lock_files(db_path)
    gate, rw = _open(gate_path), _open(rw_path)
    wait = LockWait()
    started = time.monotonic()
    deadline = started + timeout
    try:
        _acquire(gate, fcntl.LOCK_EX, deadline, str(db_path))
        _acquire(rw, fcntl.LOCK_EX, deadline, str(db_path))
        wait.seconds = time.monotonic() - started
        yield wait
    finally:
        os.close(rw)  # closing the descriptor releases its flock
        os.close(gate)


@contextmanager
def read_lock(db_path: Path, timeout: float = 120.0) -> Iterator[LockWait]:
    """Hold the file shared with other readers; wait while a writer is inside or waiting."""
    gate_path, rw_path = _lock_files(db_path)
    wait = LockWait()
    started = time.monotonic()
    deadline = started + timeout
    rw = _open(rw_path)
    try:
        gate = _open(gate_path)
        try:
            _acquire(gate, fcntl.LOCK_SH, deadline, str(db_path))
            _acquire(rw, fcntl.LOCK_SH, deadline, str(db_path))
        finally:
            os.close(gate)  # readers hold the gate only to pass through it
        wait.seconds = time.monotonic() - started
        yield wait
    finally:
        os.close(rw)


class LingeringRead:
    """A reader's shared hold on the file, kept between its requests (the API's, which keeps
    the file attached a moment after the last one: attaching again costs more than most
    answers), and given up the moment a writer waits.

    A writer that waits holds the gate exclusively: `writer_waiting` sees that without
    taking anything a writer needs.
    """

    def __init__(self, db_path: Path) -> None:
        gate_path, rw_path = _lock_files(db_path)
        self._gate, self._rw = _open(gate_path), _open(rw_path)

    def take(self) -> None:
        """Hold the file shared; only while inside `read_lock`, so no writer is inside."""
        fcntl.flock(self._rw, fcntl.LOCK_SH | fcntl.LOCK_NB)

    def release(self) -> None:
        fcntl.flock(self._rw, fcntl.LOCK_UN)

    def writer_waiting(self) -> bool:
        try:
            fcntl.flock(self._gate, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._gate, fcntl.LOCK_UN)
        return False

    def close(self) -> None:
        os.close(self._rw)
        os.close(self._gate)
