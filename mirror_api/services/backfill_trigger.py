"""`?did=` on `/records`: start the DID's backfill if it is not complete, and wait while a
run works on it.

As the original Worker did, a query for one user's records makes sure their history is
being fetched. The API asks Dagster (`dagster_client.py`) and then watches the file for the
backfill's status, up to API_BACKFILL_WAIT_SECONDS (10 s), but only while waiting can
help (docs/api.md):

- a complete backfill, a failed one (the sensor retries it after its delay) or one ended by
  the repository answers at once, with its state and error;
- otherwise the request waits while a run is queued for it or working on it: a run the API
  launched that ends, or is canceled, without completing the backfill ends the wait;
- when Dagster cannot be reached, the ask is tried again while the request waits; when the
  API's runs fill their places, nothing is launched and the answer comes at once. Either
  way the ask is not remembered, so the next request for the pair asks again.

Anyone can call the API, so what it asks of Dagster is bounded:

- concurrent requests for the same (did, collection) share one request to Dagster, a
  backfill a run has already claimed is only waited for, and a run launched for a pair
  serves every request for it during a minute; what was launched is remembered for that
  minute, for at most MAX_ASKS_REMEMBERED pairs (the oldest are forgotten first);
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
POLL_SECONDS = 0.25  # how often a waiting request reads the backfill's status
RUN_CHECK_SECONDS = 1.0  # and asks Dagster whether the run it waits for is still going
RETRY_ASK_SECONDS = 0.5  # how soon an ask Dagster could not take is tried again


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
        self._asking: dict[tuple[str, str], asyncio.Task[str | None]] = {}
        self._launched: TTLCache[tuple[str, str], str] = TTLCache(
            maxsize=MAX_ASKS_REMEMBERED, ttl=ASK_AGAIN_AFTER_SECONDS, timer=time.monotonic
        )
        self._launching = asyncio.Lock()
        self._waiting_to_launch = 0
        self._full_until = 0.0

    @property
    def remembered_asks(self) -> int:
        """How many (did, collection) pairs have a run launched within the last minute."""
        return len(self._launched)  # drops the expired ones first

    @property
    def asks_under_way(self) -> int:
        """How many asks to Dagster have not finished (a request stops waiting for its ask
        at its own deadline; the ask goes on)."""
        return len(self._asking)

    async def ensure(self, did: str, collection: str) -> BackfillState:
        """The backfill's status once settled, when no run works on it, or when the wait is
        over."""
        deadline = time.monotonic() + self._wait_seconds
        state = await self._state(did, collection)
        if _settled(state):
            return state
        run_id = self._launched.get((did, collection))
        if run_id is None and state.state != "in_progress":  # not claimed by a run yet
            run_id = await self._ask(did, collection, deadline)
            if run_id is None:
                return state  # no run will take it now: nothing to wait for
        return await self._wait(did, collection, run_id, deadline)

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

    async def _wait(
        self, did: str, collection: str, run_id: str | None, deadline: float
    ) -> BackfillState:
        """Read the status until it settles, the run it waits for ends, or the deadline."""
        state = await self._state(did, collection)
        run_checked = time.monotonic()
        while not _settled(state) and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(POLL_SECONDS, left))
            state = await self._state(did, collection)
            if run_id is not None and time.monotonic() - run_checked >= RUN_CHECK_SECONDS:
                run_checked = time.monotonic()
                if not await self._run_in_flight(run_id):
                    # The run ended: what it left in the file is the answer.
                    return await self._state(did, collection)
        return state

    async def _run_in_flight(self, run_id: str) -> bool:
        try:
            return await self._dagster.run_in_flight(run_id)
        except DagsterRequestError as error:
            log.warning("could not ask Dagster about run %s: %s", run_id, error)
            return True  # not known to have ended: the wait goes on to its bound

    async def _ask(self, did: str, collection: str, deadline: float) -> str | None:
        """Ask Dagster for the backfill; the run's id, or None when no run was launched.
        Requests for the same pair share one ask; a request waits for it no longer than
        its own deadline (the ask goes on without it)."""
        key = (did, collection)
        task = self._asking.get(key)
        if task is None:
            task = asyncio.ensure_future(self._launch(did, collection, deadline))
            self._asking[key] = task
            task.add_done_callback(lambda _: self._asking.pop(key, None))
        # Shielded: a caller that stops waiting does not cancel the ask the others wait for.
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(
                asyncio.shield(task), max(0.0, deadline - time.monotonic())
            )
        return None

    async def _launch(self, did: str, collection: str, deadline: float) -> str | None:
        """Launch a run for the pair, trying again while Dagster cannot be reached and the
        deadline allows; remembered for a minute once launched."""
        if self._waiting_to_launch >= self._max_in_flight:
            log.info("not asking Dagster to backfill %s %s: other asks wait", did, collection)
            return None
        self._waiting_to_launch += 1
        try:
            await self._launching.acquire()
        finally:
            self._waiting_to_launch -= 1
        try:
            while True:
                try:
                    if not await self._place_free(did, collection):
                        return None
                    run_id = await self._dagster.launch_backfill(did, collection)
                except DagsterRequestError as error:
                    if time.monotonic() + RETRY_ASK_SECONDS >= deadline:
                        log.warning(
                            "could not ask Dagster to backfill %s %s: %s", did, collection, error
                        )
                        return None
                    log.info(
                        "Dagster did not take the backfill of %s %s yet: %s", did, collection, error
                    )
                    await asyncio.sleep(RETRY_ASK_SECONDS)
                    continue
                self._launched[(did, collection)] = run_id
                return run_id
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


def _settled(state: BackfillState) -> bool:
    """Whether waiting cannot change the backfill: complete or ended by its repository (the
    contract's `complete`, queries.py), or failed (the sensor retries it after its delay)."""
    return state.status == "complete" or state.state == "failed"
