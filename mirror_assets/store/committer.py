"""Write transactions off the event loop: one at a time, in order, with room for readers.

Ingest and backfill runs read the network on the event loop and hand each batch of work
to a committer, which runs it as one write transaction in a worker thread while the loop
goes on reading. Transactions start no sooner than the store's `reader_window` after the
previous one ended: back to back, they would keep the file from readers, who poll its lock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

import duckdb

from mirror_assets.store.contract import MirrorStore

R = TypeVar("R")


class Committer:
    """Runs `write(con)` callables as write transactions of one store, one after another."""

    def __init__(self, store: MirrorStore) -> None:
        self._store = store
        self._turn = asyncio.Lock()
        self._file_free_since = 0.0

    async def commit(self, write: Callable[[duckdb.DuckDBPyConnection], R]) -> tuple[R, float]:
        """Run `write` in one transaction; what it returned, and how long it waited for the
        lock. An error rolls the transaction back and is raised here."""
        async with self._turn:
            await self.readers_served()
            try:
                return await asyncio.to_thread(self._store.transact, write)
            finally:
                self._file_free_since = time.monotonic()

    async def readers_served(self) -> None:
        """Wait until readers have had their window since the last transaction ended (a
        caller that gathers work meanwhile commits more of it at once)."""
        await asyncio.sleep(self._file_free_since + self._store.reader_window - time.monotonic())
