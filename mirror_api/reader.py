"""The API's read side: answers kept per version of the store, and computed once for all
who ask the same question of the same version.

Where it reads is a source: the file under its lock (`sources/file.py`) or the lake's
snapshots (`sources/lake.py`). Queries run in worker threads, each on its own cursor.
Answers are kept until the store changes: the pages everyone asks for (first pages,
/users, /stats) cost one query per write, not one per request. What is kept is bounded by
its bytes (API_CACHE_BYTES), since anyone can ask for distinct pages.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager
from typing import NamedTuple, Protocol, TypeVar, cast

import duckdb
import msgspec
from cachetools import LRUCache

from mirror_api.sources.file import FileSource
from mirror_api.sources.lake import LakeSource
from mirror_assets.config import Settings

# The kept answers are bounded by their bytes, and by their number too: an answer's size does
# not count what keeping it costs besides (its key, which holds up to hundreds of characters
# a stranger chose, and the Python objects around it, a few hundred bytes), so answers of a
# few bytes (an unknown handle's `null`) would otherwise be kept by the million.
MAX_KEPT_ANSWERS = 4096

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


class Read(Protocol):
    """One read of a source: the version of the store it sees, and a cursor that reads
    that version (closed by the caller)."""

    @property
    def version(self) -> Hashable: ...

    def cursor(self) -> duckdb.DuckDBPyConnection: ...


class ReadSource(Protocol):
    """Where answers come from: the file or the lake."""

    version_blocks: bool  # whether `version()` waits on I/O (then not on the event loop)

    def version(self) -> Hashable: ...

    def reading(self) -> AbstractContextManager[Read]: ...

    def close(self) -> None: ...


def reader_for(settings: Settings) -> MirrorReader:
    """The reader of the store the settings name."""
    lake = settings.lake
    source: ReadSource = FileSource(settings.db_path) if lake is None else LakeSource(lake)
    return MirrorReader(source, cache_bytes=settings.api_cache_bytes)


class MirrorReader:
    def __init__(self, source: ReadSource, cache_bytes: int = Settings.api_cache_bytes) -> None:
        self.source = source
        # The kept answers have a lock of their own: the event loop takes it, so it must never
        # wait behind a read.
        self._kept = threading.Lock()
        self._answers = KeptAnswers(cache_bytes)
        self._cached_version: Hashable = None
        # Questions being answered now, by the version of the store they were asked at: the
        # same question asked meanwhile waits for that answer instead of computing it again
        # (after a write, every client asks for the first page at once). Event loop only.
        self._computing: dict[Hashable, tuple[Hashable, asyncio.Future[object]]] = {}

    async def ask(self, key: Hashable, compute: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """`query` for the event loop: an answer kept for the store's current version comes
        back at once, without a read or a worker thread (but for the lake's version, asked
        of its catalog in a thread); anything else runs `query` in a worker thread, once for
        all who ask the same question of the same version meanwhile.

        Looking at the version outside a read is safe: answers are only ever kept inside a
        read, for the version seen there, so a match means the answer is of the last
        committed state (a writer that has begun but not committed has changed nothing we
        serve; once it commits, the version moves on and the answer is computed anew).
        """
        if self.source.version_blocks:
            version = await asyncio.to_thread(self.source.version)
        else:
            version = self.source.version()
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
        """`compute` on a cursor of the store, for one request; tables are `mirror.<name>`.
        Answers are kept per version of the store: between two writes, the same question
        (`key`) is answered from memory, without opening the store.
        """
        with self.source.reading() as read:
            version = read.version
            with self._kept:
                if version != self._cached_version:
                    self._answers.clear()
                    self._cached_version = version
                kept = self._answers.get(key)
            if kept is not _NOT_KEPT:
                return cast(T, kept.answer)
            cursor = read.cursor()
            try:
                answer = compute(cursor)
            finally:
                cursor.close()
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

    def close(self) -> None:
        self.source.close()
