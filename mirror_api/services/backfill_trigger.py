"""`?did=` on `/records`: start the DID's backfill if it is not complete, and wait a while.

As the original Worker did, a query for one user's records makes sure their history is
being fetched. The API asks Dagster (`dagster_client.py`) and then watches the file for the
backfill's status, up to API_BACKFILL_WAIT_SECONDS (10 s); the answer then carries the
records the mirror has and the status.

Anyone can call the API, so what it asks of Dagster is bounded (docs/api.md):

- concurrent requests for the same (did, collection) share one request to Dagster, a
  backfill a run has already claimed is only waited for, and a (did, collection) is asked
  for at most once a minute; what was asked is remembered for that minute, for at most
  MAX_ASKS_REMEMBERED pairs (the oldest are forgotten first);
- no new run is launched while API_BACKFILLS_IN_FLIGHT runs the API asked for are queued
  or running (Dagster is asked how many), so strangers' asks cannot take the backfill
  slots (dagster.yaml) from the mirror's own work;
- one count-then-launch at a time, so two asks never both take the last free place, and
  at most API_BACKFILLS_IN_FLIGHT asks wait for their turn: more could not all be
  launched anyway, and the rest are answered without asking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from cachetools import TTLCache

from mirror_api.queries import backfill_state
from mirror_api.reader import MirrorReader
from mirror_api.schemas import BackfillState
from mirror_api.services.dagster_client import DagsterClient, DagsterRequestError

log = logging.getLogger(__name__)

ASK_AGAIN_AFTER_SECONDS = 60.0
# A few hundred bytes each: a flood of distinct DIDs costs at most a few MB. Past it, a
# pair may be asked for again within the minute; the bound on runs holds all the same.
MAX_ASKS_REMEMBERED = 10_000
# Once Dagster said the API's runs fill their places, asks in the next second are turned
# away without asking again: a flood of asks costs Dagster one query a second.
FULL_RECHECK_SECONDS = 1.0
POLL_SECONDS = 0.25


class BackfillTrigger:
    def __init__(
        self,
        reader: MirrorReader,
        dagster: DagsterClient,
        wait_seconds: float,
        max_in_flight: int,
    ) -> None:
        self._reader = reader
        self._dagster = dagster
        self._wait_seconds = wait_seconds
        self._max_in_flight = max_in_flight
        self._asking: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._asked_at: TTLCache[tuple[str, str], float] = TTLCache(
            maxsize=MAX_ASKS_REMEMBERED, ttl=ASK_AGAIN_AFTER_SECONDS, timer=time.monotonic
        )
        self._launching = asyncio.Lock()
        self._waiting_to_launch = 0
        self._full_until = 0.0

    @property
    def remembered_asks(self) -> int:
        """How many (did, collection) pairs are remembered as asked for."""
        return len(self._asked_at)  # drops the expired ones first

    async def ensure(self, did: str, collection: str) -> BackfillState:
        """The backfill's status once complete, or when the wait is over."""
        deadline = time.monotonic() + self._wait_seconds
        state = await self._state(did, collection)
        if state.status == "complete":
            return state
        if state.state != "in_progress":  # a run has claimed it already: only wait
            await self._ask(did, collection, deadline)
        while state.status != "complete" and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(POLL_SECONDS, left))
            state = await self._state(did, collection)
        return state

    async def status(self, did: str, collection: str) -> BackfillState:
        """The backfill's status now, without asking or waiting (later pages of a walk)."""
        return await self._state(did, collection)

    async def close(self) -> None:
        """Stop the asks still under way (at shutdown)."""
        asking = list(self._asking.values())
        for task in asking:
            task.cancel()
        for task in asking:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _state(self, did: str, collection: str) -> BackfillState:
        return await self._reader.ask(
            ("backfill", collection, did), lambda con: backfill_state(con, collection, did)
        )

    async def _ask(self, did: str, collection: str, deadline: float) -> None:
        """Ask Dagster for the backfill, unless asked within the last minute; wait for the
        ask no longer than the request waits (it goes on without the request)."""
        key = (did, collection)
        task = self._asking.get(key)
        if task is None:
            if key in self._asked_at:
                return
            self._asked_at[key] = time.monotonic()
            task = asyncio.ensure_future(self._launch(did, collection))
            self._asking[key] = task
            task.add_done_callback(lambda _: self._asking.pop(key, None))
        # Shielded: a caller that stops waiting does not cancel the ask the others wait for.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - time.monotonic()))

    async def _launch(self, did: str, collection: str) -> None:
        if self._waiting_to_launch >= self._max_in_flight:
            log.info("not asking Dagster to backfill %s %s: other asks wait", did, collection)
            return
        self._waiting_to_launch += 1
        try:
            await self._launching.acquire()
        finally:
            self._waiting_to_launch -= 1
        try:
            if await self._place_free(did, collection):
                await self._dagster.launch_backfill(did, collection)
        except DagsterRequestError as error:
            # The answer still carries the records the mirror has, and the status says
            # the backfill is not complete; the sensor picks up queued work on its own.
            log.warning("could not ask Dagster to backfill %s %s: %s", did, collection, error)
        finally:
            self._launching.release()

    async def _place_free(self, did: str, collection: str) -> bool:
        """Whether fewer than API_BACKFILLS_IN_FLIGHT runs the API asked for are queued or
        running, as Dagster counts them (or counted them within FULL_RECHECK_SECONDS)."""
        if time.monotonic() < self._full_until:
            log.info(
                "not asking Dagster to backfill %s %s: the API's runs are full", did, collection
            )
            return False
        in_flight = await self._dagster.backfills_in_flight()
        if in_flight < self._max_in_flight:
            return True
        self._full_until = time.monotonic() + FULL_RECHECK_SECONDS
        log.warning(
            "not asking Dagster to backfill %s %s: %d runs the API asked for are queued or "
            "running (API_BACKFILLS_IN_FLIGHT=%d)",
            did,
            collection,
            in_flight,
            self._max_in_flight,
        )
        return False
