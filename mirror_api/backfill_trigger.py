"""`?did=` on `/records`: start the DID's backfill if it is not complete, and wait a while.

As the original Worker did, a query for one user's records makes sure their history is
being fetched. The API asks Dagster (`dagster_client.py`) and then watches the file for the
backfill's status, up to API_BACKFILL_WAIT_SECONDS (10 s); the answer then carries the
records the mirror has and the status. Concurrent requests for the same (did, collection)
share one request to Dagster, a backfill a run has already claimed is only waited for,
and a DID is asked for at most once a minute, so a busy page cannot flood the run queue.
"""

from __future__ import annotations

import asyncio
import logging
import time

from mirror_api.dagster_client import DagsterClient, DagsterRequestError
from mirror_api.queries import backfill_state
from mirror_api.reader import MirrorReader
from mirror_api.responses import BackfillState

log = logging.getLogger(__name__)

ASK_AGAIN_AFTER_SECONDS = 60.0
POLL_SECONDS = 0.25


class BackfillTrigger:
    def __init__(self, reader: MirrorReader, dagster: DagsterClient, wait_seconds: float) -> None:
        self._reader = reader
        self._dagster = dagster
        self._wait_seconds = wait_seconds
        self._asking: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._asked_at: dict[tuple[str, str], float] = {}

    async def ensure(self, did: str, collection: str) -> BackfillState:
        """The backfill's status once complete, or when the wait is over."""
        state = await self._state(did, collection)
        if state.status == "complete":
            return state
        if state.state != "in_progress":  # a run has claimed it already: only wait
            await self._ask(did, collection)
        deadline = time.monotonic() + self._wait_seconds
        while state.status != "complete" and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(POLL_SECONDS, left))
            state = await self._state(did, collection)
        return state

    async def status(self, did: str, collection: str) -> BackfillState:
        """The backfill's status now, without asking or waiting (later pages of a walk)."""
        return await self._state(did, collection)

    async def _state(self, did: str, collection: str) -> BackfillState:
        return await self._reader.ask(
            ("backfill", collection, did), lambda con: backfill_state(con, collection, did)
        )

    async def _ask(self, did: str, collection: str) -> None:
        key = (did, collection)
        task = self._asking.get(key)
        if task is None:
            if time.monotonic() - self._asked_at.get(key, -ASK_AGAIN_AFTER_SECONDS) < (
                ASK_AGAIN_AFTER_SECONDS
            ):
                return
            self._asked_at[key] = time.monotonic()
            task = asyncio.ensure_future(self._launch(did, collection))
            self._asking[key] = task
            task.add_done_callback(lambda _: self._asking.pop(key, None))
        await asyncio.shield(task)

    async def _launch(self, did: str, collection: str) -> None:
        try:
            await self._dagster.launch_backfill(did, collection)
        except DagsterRequestError as error:
            # The answer still carries the records the mirror has, and the status says
            # the backfill is not complete; the sensor picks up queued work on its own.
            log.warning("could not ask Dagster to backfill %s %s: %s", did, collection, error)
