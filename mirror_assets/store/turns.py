"""Writers of a lake take turns, in the order they ask, on every machine at once.

Overlapping lake write transactions conflict (`lake_writes`, store/lake.py), and the later
one runs again. Left to that alone, a long transaction beside a stream of short ones loses
every time: one of them always commits first. So a writer first takes its turn: a
Postgres advisory lock in the lake's catalog database, which Postgres grants in the order
it was asked for, and releases by itself when a writer's connection ends, killed or not.
Inside a process, writers queue on a thread lock first: the advisory lock belongs to one
Postgres session, which the process's writers share.

A catalog that is not Postgres has one machine only; its writers queue on the thread lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the lake extra's; imported when a Postgres catalog is first used
    from psycopg2.extensions import connection, cursor

# The advisory lock's key in the catalog database (any 64-bit number no one else uses).
TURN_KEY = 0x6D6972726F72  # "mirror"
POSTGRES = "postgres:"


class WriterTurns:
    """The turn of one process's writers on one lake."""

    def __init__(self, catalog: str) -> None:
        self._dsn = catalog.removeprefix(POSTGRES) if catalog.startswith(POSTGRES) else None
        self._session: connection | None = None
        self._in_process = threading.Lock()

    @contextmanager
    def turn(self) -> Iterator[float]:
        """Wait for the turn, hold it for the block; the seconds it waited."""
        asked = time.monotonic()
        with self._in_process:
            held = None if self._dsn is None else self._connected().cursor()
            if held is not None:
                held.execute("SELECT pg_advisory_lock(%s)", (TURN_KEY,))
            try:
                yield time.monotonic() - asked
            finally:
                if held is not None:
                    self._release(held)

    def _release(self, held: cursor) -> None:
        import psycopg2

        try:
            held.execute("SELECT pg_advisory_unlock(%s)", (TURN_KEY,))
            held.close()
        except psycopg2.Error:
            # The session is broken: ending it releases the lock too. What the turn covered
            # is committed or rolled back already.
            self._drop()

    def _drop(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _connected(self) -> connection:
        import psycopg2

        if self._session is None or self._session.closed:
            assert self._dsn is not None
            self._session = psycopg2.connect(self._dsn)
            self._session.autocommit = True
        return self._session

    def close(self) -> None:
        with self._in_process:
            self._drop()
