"""The mirror file, read by the API through one warm in-memory DuckDB.

A new DuckDB connection costs tens of milliseconds, `ATTACH ... (READ_ONLY)` on a warm
instance about one (docs/api.md). Each read takes the shared side of the file lock
(through the gate, so a waiting writer stops new requests and only waits for those already
inside); the first read in attaches the file. After the last one out, the file stays
attached for `LINGER_SECONDS`, unless a writer is waiting: attaching again, and reading the
table's metadata and blocks again, costs more than most answers (docs/api.md). A waiting
writer ends the linger within `WRITER_POLL_SECONDS`, so writers still never wait for an idle
API. The file's version is its and its WAL's size and time: a commit changes them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from mirror_api.sources import SCHEMA
from mirror_assets.store.lock import LingeringRead, read_lock
from mirror_assets.store.schema import migrate

LINGER_SECONDS = 0.25  # the file stays attached this long after the last request
WRITER_POLL_SECONDS = 0.005  # how often a lingering reader looks for a waiting writer


class FileRead:
    """One read of the file, under its read lock: the version read there, and cursors on
    the attached file, made only if asked for (a kept answer needs none)."""

    def __init__(self, source: FileSource, version: tuple[int, ...]) -> None:
        self.version = version
        self._source = source
        self._entered = False

    def cursor(self) -> duckdb.DuckDBPyConnection:
        if not self._entered:
            self._source.enter()
            self._entered = True
        return self._source.instance.cursor()

    def done(self) -> None:
        if self._entered:
            self._source.leave()


class FileSource:
    """The file behind MIRROR_DB, attached read-only while the API serves."""

    version_blocks = False  # two `stat` calls: cheap enough for the event loop

    def __init__(self, db_path: Path, lock_timeout: float = 30.0) -> None:
        self.db_path = db_path
        self.lock_timeout = lock_timeout
        self.instance = duckdb.connect(":memory:")
        self._guard = threading.Lock()  # the reader count and the attached file
        self._readers = 0
        self._attached = False
        self._hold = LingeringRead(db_path)
        self._idle_since = 0.0
        self._watcher: threading.Thread | None = None
        self._closed = False

    def version(self) -> tuple[int, ...]:
        """What changes whenever a writer commits: the file's and its WAL's size and time."""
        version: list[int] = []
        for path in (self.db_path, self.db_path.with_name(self.db_path.name + ".wal")):
            try:
                stat = path.stat()
            except FileNotFoundError:
                version += [-1, -1]
                continue
            version += [stat.st_mtime_ns, stat.st_size]
        return tuple(version)

    @contextmanager
    def reading(self) -> Iterator[FileRead]:
        """A read under the read lock: no writer changes the file meanwhile, so the version
        read here is the data's."""
        with read_lock(self.db_path, self.lock_timeout):
            read = FileRead(self, self.version())
            try:
                yield read
            finally:
                read.done()

    def close(self) -> None:
        with self._guard:
            self._closed = True
            if self._attached:
                self._detach()
            watcher = self._watcher
        if watcher is not None:
            watcher.join()
        self._hold.close()
        self.instance.close()

    def enter(self) -> None:
        """Called inside `read_lock`: no writer is inside, and none can enter until we leave."""
        with self._guard:
            if not self._attached:
                self._attach()
                self._hold.take()
                self._attached = True
            self._readers += 1

    def leave(self) -> None:
        with self._guard:
            self._readers -= 1
            if self._readers:
                return
            if self._hold.writer_waiting():
                self._detach()
                return
            self._idle_since = time.monotonic()
            if self._watcher is None:
                # Not a daemon: one killed inside DuckDB at exit would abort the process;
                # this one ends by itself within LINGER_SECONDS.
                self._watcher = threading.Thread(target=self._watch, name="mirror-reader-linger")
                self._watcher.start()

    def _watch(self) -> None:
        """Detach once idle for LINGER_SECONDS, or at once when a writer waits."""
        while True:
            time.sleep(WRITER_POLL_SECONDS)
            with self._guard:
                if self._closed or not self._attached:
                    self._watcher = None
                    return
                idle = time.monotonic() - self._idle_since >= LINGER_SECONDS
                if self._readers == 0 and (idle or self._hold.writer_waiting()):
                    self._detach()
                    self._watcher = None
                    return

    def _detach(self) -> None:
        """Under the guard, with no request inside."""
        try:
            self.instance.execute(f"DETACH {SCHEMA}")
        finally:
            self._attached = False
            self._hold.release()

    def _attach(self) -> None:
        """Attach the file; wait out a process outside the lock protocol that holds it
        read-write (an analyst's shell), up to the lock timeout.

        Before the file exists (no run yet), an empty in-memory mirror answers instead.
        """
        # A DETACH that failed must not leave an old snapshot attached for good.
        self.instance.execute(f"DETACH DATABASE IF EXISTS {SCHEMA}")
        if not self.db_path.exists():
            self.instance.execute(f"ATTACH ':memory:' AS {SCHEMA}")
            self.instance.execute(f"USE {SCHEMA}")
            migrate(self.instance)
            self.instance.execute("USE memory")
            return
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.01
        path = str(self.db_path).replace("'", "''")
        while True:
            try:
                self.instance.execute(f"ATTACH '{path}' AS {SCHEMA} (READ_ONLY)")
                return
            except duckdb.IOException as error:
                if "lock" not in str(error).lower() or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
