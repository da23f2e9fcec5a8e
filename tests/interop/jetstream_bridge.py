"""Jetstream made from the reference PDS's firehose: what the mirror reads in the interop tests.

A background event loop subscribes to the PDS's `com.atproto.sync.subscribeRepos` from the
first event, turns each `#commit` op, `#identity` and `#account` frame into Jetstream's
JSON (`#sync` and other kinds are not Jetstream events and are dropped), stamps it with a
`time_us` on the bridge's own clock that increases strictly, and keeps every event. Its
websocket server answers `/subscribe` as Jetstream does: with `cursor`, every kept event
from that time on, then live ones; without, live events only. `wantedCollections` (exact
NSIDs and `prefix.*`) filters commits; identity and account events always pass.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import websockets
from websockets.asyncio.server import Server, ServerConnection, serve

from tests.interop.dag_cbor import cid_string, read_car, read_frame, to_json

START_SECONDS = 10
WAIT_SECONDS = 15
RECONNECT_SECONDS = 0.2


@dataclass(frozen=True)
class JetstreamEvent:
    time_us: int
    did: str
    kind: str
    collection: str | None  # commits only
    text: str  # the frame as sent


class FirehoseError(RuntimeError):
    """The PDS sent an error frame, or a frame the bridge cannot read."""


def commit_events(body: dict[str, Any]) -> list[dict[str, Any]]:
    """One Jetstream commit (without `time_us`) per op of a `#commit` frame."""
    blocks = read_car(body["blocks"]) if body.get("blocks") else {}
    events = []
    for op in body["ops"]:
        collection, rkey = op["path"].split("/", 1)
        commit: dict[str, Any] = {
            "rev": body["rev"],
            "operation": op["action"],
            "collection": collection,
            "rkey": rkey,
        }
        if op["action"] in ("create", "update"):
            cid = cid_string(op["cid"])
            commit["record"] = to_json(blocks[cid])
            commit["cid"] = cid
        events.append({"did": body["repo"], "kind": "commit", "commit": commit})
    return events


def jetstream_events(header: dict[str, Any], body: dict[str, Any]) -> list[dict[str, Any]]:
    """The Jetstream events (without `time_us`) of one firehose frame."""
    if header.get("op") == -1:
        raise FirehoseError(f"the PDS sent an error frame: {body!r}")
    kind = header.get("t")
    if kind == "#commit":
        return commit_events(body)
    if kind == "#identity":
        identity = {"did": body["did"], "seq": body["seq"], "time": body["time"]}
        if body.get("handle") is not None:
            identity["handle"] = body["handle"]
        return [{"did": body["did"], "kind": "identity", "identity": identity}]
    if kind == "#account":
        account = {key: body[key] for key in ("active", "did", "seq", "time")}
        if body.get("status") is not None:
            account["status"] = body["status"]
        return [{"did": body["did"], "kind": "account", "account": account}]
    return []


class JetstreamBridge:
    """`with JetstreamBridge(pds_url) as bridge:`; `bridge.url` is the Jetstream to use."""

    def __init__(self, pds_url: str) -> None:
        self._firehose = pds_url.replace("http", "ws", 1).rstrip("/")
        self._events: list[JetstreamEvent] = []
        self._times: list[int] = []
        self._seq: int | None = None  # the last firehose seq read
        self._revs: dict[str, str] = {}  # the last commit rev seen per DID
        self._changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._arrived: asyncio.Condition | None = None  # created in the bridge's own loop
        self._server: Server | None = None
        self._reader: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._stopping = False
        self.connections = 0  # Jetstream subscribers so far
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def __enter__(self) -> JetstreamBridge:
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(START_SECONDS)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(START_SECONDS)
        self._loop.call_soon_threadsafe(self._loop.stop)

    # -- what the tests ask ---------------------------------------------------------------
    def event_count(self) -> int:
        """How many events the bridge has kept so far."""
        with self._changed:
            return len(self._events)

    def wait_for_rev(self, did: str, rev: str) -> None:
        """Block until the commit of `did` at `rev` (or a later one) has been turned into
        events: everything the PDS sequenced before it has been too."""
        self._wait(lambda: self._revs.get(did, "") >= rev, f"{did}'s commit {rev}")

    def wait_for_event(self, did: str, kind: str, since: int) -> JetstreamEvent:
        """Block until an event of `kind` for `did` arrives after the first `since` events."""

        def found() -> JetstreamEvent | None:
            return next((e for e in self._events[since:] if (e.did, e.kind) == (did, kind)), None)

        self._wait(lambda: found() is not None, f"{kind} event of {did}")
        with self._changed:
            event = found()
        assert event is not None
        return event

    def wait_for_connection(self, since: int) -> None:
        """Block until more than `since` subscribers have connected."""
        self._wait(lambda: self.connections > since, "subscriber")

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(
                lambda: ready() or self._failure is not None, WAIT_SECONDS
            ):
                raise TimeoutError(f"the bridge saw no {what} in {WAIT_SECONDS} s")
            if self._failure is not None:
                raise FirehoseError(f"the firehose reader failed: {self._failure!r}")

    # -- the firehose side ----------------------------------------------------------------
    async def _start(self) -> None:
        self._arrived = asyncio.Condition()
        self._server = await serve(self._serve, "127.0.0.1", 0, compression=None)
        self.port = self._server.sockets[0].getsockname()[1]
        self._reader = asyncio.ensure_future(self._read_firehose())

    async def _stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._stopping = True  # connections waiting for events end instead
        await self._announce()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _read_firehose(self) -> None:
        """Read from the first event on; after a dropped connection, go on from the last seq."""
        try:
            while True:
                cursor = 0 if self._seq is None else self._seq
                url = f"{self._firehose}/xrpc/com.atproto.sync.subscribeRepos?cursor={cursor}"
                try:
                    async with websockets.connect(url, max_size=None) as ws:
                        async for frame in ws:
                            self._take(frame)
                            await self._announce()
                except (OSError, websockets.ConnectionClosed):
                    await asyncio.sleep(RECONNECT_SECONDS)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # the tests waiting on the bridge are told
            with self._changed:
                self._failure = error
                self._changed.notify_all()
            raise

    def _take(self, frame: str | bytes) -> None:
        if not isinstance(frame, bytes):
            raise FirehoseError(f"a text frame on the firehose: {frame[:200]!r}")
        header, body = read_frame(frame)
        if self._seq is not None and body.get("seq", self._seq + 1) <= self._seq:
            return  # already read before a reconnection
        events = jetstream_events(header, body)
        with self._changed:
            for event in events:
                self._keep(event)
            if header.get("t") == "#commit":
                self._revs[body["repo"]] = body["rev"]
            self._seq = body.get("seq", self._seq)
            self._changed.notify_all()

    async def _announce(self) -> None:
        """Wake the Jetstream connections waiting for new events."""
        assert self._arrived is not None
        async with self._arrived:
            self._arrived.notify_all()

    def _keep(self, event: dict[str, Any]) -> None:
        """Stamp the event on the bridge's clock, strictly after the one before."""
        now_us = time.time_ns() // 1000
        time_us = max(now_us, self._times[-1] + 1) if self._times else now_us
        event["time_us"] = time_us
        collection = event["commit"]["collection"] if event["kind"] == "commit" else None
        self._events.append(
            JetstreamEvent(time_us, event["did"], event["kind"], collection, json.dumps(event))
        )
        self._times.append(time_us)

    # -- the Jetstream side ---------------------------------------------------------------
    async def _serve(self, ws: ServerConnection) -> None:
        assert ws.request is not None and self._arrived is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        wanted = query.get("wantedCollections", [])
        exact = {w for w in wanted if not w.endswith("*")}
        prefixes = tuple(w[:-1] for w in wanted if w.endswith("*"))
        with self._changed:
            self.connections += 1
            self._changed.notify_all()
            position = (
                bisect.bisect_left(self._times, int(query["cursor"][0]))
                if "cursor" in query
                else len(self._events)
            )
        try:
            while not self._stopping:
                pending = await self._events_from(position)
                position += len(pending)
                for event in pending:
                    if (
                        event.collection is None
                        or not wanted
                        or event.collection in exact
                        or event.collection.startswith(prefixes)
                    ):
                        await ws.send(event.text)
        except websockets.ConnectionClosed:
            return  # the client left

    async def _events_from(self, position: int) -> list[JetstreamEvent]:
        """The kept events from `position` on, waiting for one if there are none yet."""
        assert self._arrived is not None
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self._events) > position or self._stopping)
        with self._changed:
            return self._events[position:]
