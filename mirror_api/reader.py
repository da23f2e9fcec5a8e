"""The API's read side: one warm in-memory DuckDB, the file attached read-only while serving.

A new DuckDB connection costs tens of milliseconds, `ATTACH ... (READ_ONLY)` on a warm
instance about one (docs/api.md). Each request takes the shared side of the file lock
(through the gate, so a waiting writer stops new requests and only waits for those already
inside); the first request in attaches the file. After the last one out, the file stays
attached for `LINGER_SECONDS`, unless a writer is waiting: attaching again, and reading the
table's metadata and blocks again, costs more than most answers (docs/api.md). A waiting
writer ends the linger within `WRITER_POLL_SECONDS`, so writers still never wait for an idle
API. Queries run in worker threads, each on its own cursor of the one instance. Answers are
kept until the file changes: the pages everyone asks for (first pages, /users, /stats) cost
one query per write, not one per request. What is kept is bounded by its bytes
(API_CACHE_BYTES), since anyone can ask for distinct pages.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import NamedTuple, TypeVar, cast

import duckdb
import msgspec
from cachetools import LRUCache

from mirror_assets.config import Settings
from mirror_assets.store.lock import LingeringRead, read_lock
from mirror_assets.store.schema import migrate

SCHEMA = "mirror"  # the name the file is attached under
# The kept answers are bounded by their bytes, and by their number too: an answer's size does
# not count what keeping it costs besides (its key, which holds up to hundreds of characters
# a stranger chose, and the Python objects around it, a few hundred bytes), so answers of a
# few bytes (an unknown handle's `null`) would otherwise be kept by the million.
MAX_KEPT_ANSWERS = 4096
LINGER_SECONDS = 0.25  # the file stays attached this long after the last request
WRITER_POLL_SECONDS = 0.005  # how often a lingering reader looks for a waiting writer

T = TypeVar("T")


def answer_bytes(answer: object) -> int:
    """What keeping an answer costs: the size of its JSON, the bulk of which (records' JSON,
    `msgspec.Raw`) is held as those very bytes."""
    return len(msgspec.json.encode(answer))


class _Kept(NamedTuple):
    answer: object
    size: int


_NOT_KEPT = _Kept(None, -1)


class KeptAnswers:
    """Answers of one version of the file, least recently used first out, within `max_bytes`
    and MAX_KEPT_ANSWERS. An answer larger than the whole bound is served but never kept.
    Not thread-safe: the reader holds its own lock around it."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._answers: LRUCache[Hashable, _Kept] = LRUCache(
            maxsize=max_bytes, getsizeof=lambda kept: kept.size
        )

    @property
    def kept_bytes(self) -> int:
        return int(self._answers.currsize)

    def get(self, key: Hashable) -> _Kept:
        """The kept answer (now the most recently used), or `_NOT_KEPT`."""
        return self._answers.get(key, _NOT_KEPT)

    def keep(self, key: Hashable, answer: object, size: int) -> None:
        if size > self.max_bytes:
            return
        if key not in self._answers:
            while len(self._answers) >= MAX_KEPT_ANSWERS:
                self._answers.popitem()
        self._answers[key] = _Kept(answer, size)  # evicts the least recently used to fit

    def clear(self) -> None:
        self._answers.clear()


class MirrorReader:
    def __init__(
        self,
        db_path: Path,
        lock_timeout: float = 30.0,
        cache_bytes: int = Settings.api_cache_bytes,
    ) -> None:
        self.db_path = db_path
        self.lock_timeout = lock_timeout
        self._instance = duckdb.connect(":memory:")
        self._guard = threading.Lock()  # the reader count and the attached file
        self._readers = 0
        self._attached = False
        self._hold = LingeringRead(db_path)
        self._idle_since = 0.0
        self._watcher: threading.Thread | None = None
        self._closed = False
        # The kept answers have a lock of their own: the event loop takes it, so it must never
        # wait behind an ATTACH.
        self._kept = threading.Lock()
        self._answers = KeptAnswers(cache_bytes)
        self._cached_version: tuple[int, ...] = ()
        # Questions being answered now, by the version of the file they were asked at: the
        # same question asked meanwhile waits for that answer instead of computing it again
        # (after a write, every client asks for the first page at once). Event loop only.
        self._computing: dict[Hashable, tuple[tuple[int, ...], asyncio.Future[object]]] = {}

    async def ask(self, key: Hashable, compute: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """`query` for the event loop: an answer kept for the file's current version comes
        back at once, without the lock or a worker thread; anything else runs `query` in a
        worker thread, once for all who ask the same question of the same version meanwhile.

        Looking at the version without the lock is safe: answers are only ever kept under the
        lock, for the version seen there, so a match means the answer is of the last
        committed state (a writer that has begun but not committed has changed nothing we
        serve; once it commits, the file's version moves on and the answer is computed anew).
        """
        version = self._file_version()
        with self._kept:
            kept = self._answers.get(key) if version == self._cached_version else _NOT_KEPT
        if kept is not _NOT_KEPT:
            return cast(T, kept.answer)
        computing = self._computing.get(key)
        if computing is None or computing[0] != version:
            task: asyncio.Future[object] = asyncio.ensure_future(
                asyncio.to_thread(self.query, key, compute)
            )
            self._computing[key] = computing = (version, task)
            task.add_done_callback(lambda done: self._forget_computing(key, done))
        # Shielded: a caller that goes away does not cancel the answer the others wait for.
        return cast(T, await asyncio.shield(computing[1]))

    def _forget_computing(self, key: Hashable, done: asyncio.Future[object]) -> None:
        if self._computing.get(key, (None, None))[1] is done:
            del self._computing[key]
        if not done.cancelled():
            done.exception()  # its callers have it; asyncio must not report it unclaimed

    def query(self, key: Hashable, compute: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """`compute` on a cursor of the attached file, for one request; tables are
        `mirror.<name>`. Answers are kept per version of the file: between two writes,
        the same question (`key`) is answered from memory, without opening the file.

        Before the file exists (no run yet), an empty in-memory mirror answers instead.
        """
        with read_lock(self.db_path, self.lock_timeout):
            # Under the read lock no writer changes the file, so its version is the data's.
            version = self._file_version()
            with self._kept:
                if version != self._cached_version:
                    self._answers.clear()
                    self._cached_version = version
                kept = self._answers.get(key)
            if kept is not _NOT_KEPT:
                return cast(T, kept.answer)
            self._enter()
            try:
                cursor = self._instance.cursor()
                try:
                    answer = compute(cursor)
                finally:
                    cursor.close()
            finally:
                self._leave()
            size = answer_bytes(answer)  # outside the lock the event loop takes
            with self._kept:
                if version == self._cached_version:
                    self._answers.keep(key, answer, size)
            return answer

    @property
    def kept_bytes(self) -> int:
        """The bytes of the answers kept now (at most the `cache_bytes` asked for)."""
        with self._kept:
            return self._answers.kept_bytes

    def _file_version(self) -> tuple[int, ...]:
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

    def close(self) -> None:
        with self._guard:
            self._closed = True
            if self._attached:
                self._detach()
            watcher = self._watcher
        if watcher is not None:
            watcher.join()
        self._hold.close()
        self._instance.close()

    def _enter(self) -> None:
        """Called inside `read_lock`: no writer is inside, and none can enter until we leave."""
        with self._guard:
            if not self._attached:
                self._attach()
                self._hold.take()
                self._attached = True
            self._readers += 1

    def _leave(self) -> None:
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
            self._instance.execute(f"DETACH {SCHEMA}")
        finally:
            self._attached = False
            self._hold.release()

    def _attach(self) -> None:
        """Attach the file; wait out a process outside the lock protocol that holds it
        read-write (an analyst's shell), up to the lock timeout."""
        # A DETACH that failed must not leave an old snapshot attached for good.
        self._instance.execute(f"DETACH DATABASE IF EXISTS {SCHEMA}")
        if not self.db_path.exists():
            self._instance.execute(f"ATTACH ':memory:' AS {SCHEMA}")
            self._instance.execute(f"USE {SCHEMA}")
            migrate(self._instance)
            self._instance.execute("USE memory")
            return
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.01
        path = str(self.db_path).replace("'", "''")
        while True:
            try:
                self._instance.execute(f"ATTACH '{path}' AS {SCHEMA} (READ_ONLY)")
                return
            except duckdb.IOException as error:
                if "lock" not in str(error).lower() or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
