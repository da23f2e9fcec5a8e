"""A Jetstream reader for one ingest cycle: resume, fail over, decode, and know when to stop.

There is no "caught up" message in Jetstream (docs/ingest.md). A cycle stops at the first
of: an event at or after the cycle's own start time, a stream idle for `idle_seconds`,
`max_seconds` of reading, or `max_events` events. On a dropped connection it reconnects to
the next configured endpoint, resuming from the last event it saw minus the rewind;
the store's rev rule makes the re-read window harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlencode, urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from mirror_assets.atproto.events import BadFrame, CommitEvent, CursorGap, Event, decode_frame
from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.atproto.refusals import Reason, Refusals
from mirror_assets.config import IngestLimits

log = logging.getLogger(__name__)

# A frame larger than this closes the connection (websockets cannot skip one), and the next
# connection would meet it again: so it is larger than anything a relay that keeps the
# protocol's limits can make Jetstream send. A commit carries at most 2,000,000 bytes of
# records, and JSON spells a control character in six bytes: 12 MB, plus the envelope.
# Refusing a record for its size (atproto/data_model.py) happens after it is read.
MAX_FRAME_BYTES = 16 * 1024 * 1024
_RECONNECT_DELAY = 0.2
_CHUNK_FRAMES = 256  # frames taken off the socket under one timer
_CHUNK_BYTES = 4 * 1024 * 1024  # and at most this much of them, so a chunk stays small
UNTRACKED = "untracked_collection"  # commits of collections the mirror does not track
_LINGER_SECONDS = 0.05  # how long a started chunk waits for more frames


class StopReason(StrEnum):
    CAUGHT_UP = "caught_up"
    IDLE = "idle"
    TIME_BUDGET = "time_budget"
    EVENT_BUDGET = "event_budget"


class JetstreamUnavailableError(ConnectionError):
    """No configured endpoint could be reached, or they kept failing."""


def subscribe_url(base: str, collections: CollectionFilter, cursor_us: int | None) -> str:
    """`{base}/subscribe?wantedCollections=...&cursor=...`; `base` may already end in /subscribe."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/")
    if not path.endswith("/subscribe"):
        path += "/subscribe"
    query: list[tuple[str, str]] = [("wantedCollections", p) for p in collections.patterns]
    if cursor_us is not None:
        query.append(("cursor", str(cursor_us)))
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))


@dataclass
class ReadStats:
    """What the reader saw, for the run's metadata."""

    frames: int = 0
    events: Counter[str] = field(default_factory=Counter)  # kind, or commit:operation
    skipped: Counter[str] = field(default_factory=Counter)  # not refused, just not ours
    refused: Refusals = field(default_factory=Refusals)
    connections: int = 0
    failures: list[str] = field(default_factory=list)
    endpoint: str | None = None
    stop_reason: StopReason | None = None


@dataclass
class Delivery:
    """One frame's outcome: an event to apply, or just a time the cursor may move to."""

    time_us: int
    endpoint: str
    event: Event | None = None
    gap: CursorGap | None = None


class JetstreamReader:
    """Reads one cycle of events from the first endpoint that answers."""

    def __init__(
        self,
        urls: Sequence[str],
        collections: CollectionFilter,
        limits: IngestLimits,
        cursor_us: int | None,
    ) -> None:
        if not urls:
            raise ValueError("no Jetstream URL configured: set JETSTREAM_URLS")
        self.urls = list(urls)
        self.collections = collections
        self.limits = limits
        self.start_cursor_us = cursor_us
        self.stats = ReadStats()
        self._last_time_us: int | None = None
        self._latest_us = 0  # the newest believable frame time, renewed per chunk

    def _resume_cursor(self) -> int | None:
        """Where to (re)connect: the last event seen, else the stored cursor; minus the rewind."""
        base = self._last_time_us if self._last_time_us is not None else self.start_cursor_us
        if base is None:
            return None
        return max(0, base - int(self.limits.rewind_seconds * 1_000_000))

    async def deliveries(self) -> AsyncIterator[Delivery]:
        """Yield deliveries until a stop rule fires; fail over across endpoints on errors."""
        started = time.monotonic()
        started_us = time.time_ns() // 1000
        deadline = started + self.limits.max_seconds
        max_failures = 2 * len(self.urls)
        failures_in_a_row = 0
        index = 0
        while True:
            url = self.urls[index % len(self.urls)]
            cursor = self._resume_cursor()
            try:
                async for delivery in self._read_connection(url, cursor, started_us, deadline):
                    failures_in_a_row = 0
                    yield delivery
                return
            except (OSError, ConnectionClosed, InvalidHandshake, InvalidURI, TimeoutError) as error:
                failures_in_a_row += 1
                message = f"{url}: {type(error).__name__}: {error}"
                self.stats.failures.append(message)
                log.warning("Jetstream connection failed (%s), trying the next endpoint", message)
                if failures_in_a_row >= max_failures or time.monotonic() >= deadline:
                    raise JetstreamUnavailableError(
                        f"no Jetstream endpoint answered ({failures_in_a_row} failures in a "
                        f"row; last: {message}); check JETSTREAM_URLS"
                    ) from error
                index += 1
                await asyncio.sleep(_RECONNECT_DELAY)

    async def _read_connection(
        self, url: str, cursor: int | None, started_us: int, deadline: float
    ) -> AsyncIterator[Delivery]:
        limits = self.limits
        first_event = True
        async with websockets.connect(
            subscribe_url(url, self.collections, cursor),
            open_timeout=min(10.0, max(0.1, deadline - time.monotonic())),
            max_size=MAX_FRAME_BYTES,
            compression=None,
            # No keepalive pings: a pong queues behind every frame not yet read, so a flush
            # (or a lock wait) longer than ping_timeout dropped healthy connections. A dead
            # connection is caught by idle_seconds instead.
            ping_interval=None,
        ) as ws:
            self.stats.connections += 1
            self.stats.endpoint = url
            while True:
                frames, stop = await self._receive(ws, limits.idle_seconds, deadline)
                skew_us = int(limits.clock_skew_seconds * 1_000_000)
                self._latest_us = time.time_ns() // 1000 + skew_us
                for frame in frames:
                    if self.stats.frames >= limits.max_events:
                        self.stats.stop_reason = StopReason.EVENT_BUDGET
                        return
                    delivery = self._decode(frame, url)
                    if delivery is None:
                        continue
                    if first_event:
                        first_event = False
                        if cursor is not None:
                            delivery.gap = self._gap(url, cursor, delivery.time_us)
                    self._last_time_us = delivery.time_us
                    yield delivery
                    if delivery.time_us >= started_us:
                        self.stats.stop_reason = StopReason.CAUGHT_UP
                        return
                if stop is not None:
                    self.stats.stop_reason = stop
                    return
                if self.stats.frames >= limits.max_events:
                    self.stats.stop_reason = StopReason.EVENT_BUDGET
                    return

    @staticmethod
    async def _receive(
        ws: ClientConnection, idle_seconds: float, deadline: float
    ) -> tuple[list[str | bytes], StopReason | None]:
        """Up to _CHUNK_FRAMES frames, under one timer for the whole chunk.

        A timer per frame (asyncio.timeout: 3.6 us, or wait_for: 9 us) cost as much as
        the receive itself (3.5 us). Once a frame is in hand the rest of the chunk waits at most
        _LINGER_SECONDS, so a slow stream is delivered promptly. The timer is never held
        across the caller's `yield`, so a slow consumer (a flush) cannot trip it.
        """
        frames: list[str | bytes] = []
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return frames, StopReason.TIME_BUDGET
        size = 0
        try:
            async with asyncio.timeout(min(idle_seconds, remaining)) as timer:
                frames.append(await ws.recv())
                linger = asyncio.get_running_loop().time() + _LINGER_SECONDS
                timer.reschedule(min(linger, timer.when() or linger))
                size = len(frames[0])
                while len(frames) < _CHUNK_FRAMES and size < _CHUNK_BYTES:
                    frames.append(await ws.recv())
                    size += len(frames[-1])
        except TimeoutError:
            if not frames:
                timed_out_on_budget = time.monotonic() >= deadline
                return frames, StopReason.TIME_BUDGET if timed_out_on_budget else StopReason.IDLE
        except ConnectionClosed:
            if not frames:
                raise
            # Deliver what arrived first; the next receive raises again.
        return frames, None

    def _decode(self, frame: str | bytes, url: str) -> Delivery | None:
        """Decode and filter one frame; count what is refused or skipped. None: nothing to
        deliver (not even a time the cursor may move to)."""
        self.stats.frames += 1
        if isinstance(frame, bytes):
            # This reader never asks for compression: a binary frame is not ours to read.
            self.stats.refused.add(Reason.MALFORMED, "a binary frame", url)
            return None
        decoded = decode_frame(frame, self._latest_us)
        if isinstance(decoded, BadFrame):
            self.stats.refused.add(decoded.reason, decoded.error, url)
            return None if decoded.time_us is None else Delivery(decoded.time_us, url)
        if isinstance(decoded, CommitEvent):
            if not self.collections.matches(decoded.commit.collection):
                self.stats.skipped[UNTRACKED] += 1
                return Delivery(decoded.time_us, url)
            self.stats.events[f"commit:{decoded.commit.operation}"] += 1
        else:
            self.stats.events[str(type(decoded).__struct_config__.tag)] += 1
        return Delivery(decoded.time_us, url, decoded)

    def _gap(self, url: str, cursor: int, first_event_us: int) -> CursorGap | None:
        """A first event far past the cursor means the server no longer had what we asked for."""
        rewind_us = int(self.limits.rewind_seconds * 1_000_000)
        if first_event_us - cursor <= rewind_us + int(self.limits.gap_seconds * 1_000_000):
            return None
        log.warning(
            "cursor gap on %s: asked for %d, first event at %d (%.0f s later)",
            url,
            cursor,
            first_event_us,
            (first_event_us - cursor) / 1e6,
        )
        return CursorGap(url, cursor, first_event_us)
