"""A Jetstream stand-in on 127.0.0.1 for tests and benchmarks: real websockets, real semantics.

It serves a backlog of frames in time order and honours `cursor` (frames with time_us at or
after it) and `wantedCollections` (exact NSIDs and `prefix.*`; identity and account events
always pass, as on the real service). After the backlog it keeps the connection open and
silent, like a quiet stream. `drop_after(n)` makes the next connection break abruptly after
n frames, as a server that dies mid-stream.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve


@dataclass(frozen=True)
class Frame:
    time_us: int  # position in the stream, also for frames that carry no time themselves
    text: str | bytes  # bytes go out as a binary frame
    collection: str | None = None  # set for commit events only


@dataclass
class Request:
    cursor: int | None
    wanted: list[str]


@dataclass
class JetstreamServer:
    frames: list[Frame] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    drops: list[int] = field(default_factory=list)  # frames to send before each of the next breaks
    refuse: bool = False  # answer the handshake with HTTP 503
    _loop: asyncio.AbstractEventLoop | None = None
    _server: Server | None = None
    port: int = 0

    # -- building the stream --------------------------------------------------------------
    def add(self, event: dict[str, Any]) -> None:
        """Append an event (a Jetstream JSON object)."""
        collection = (
            event.get("commit", {}).get("collection") if event.get("kind") == "commit" else None
        )
        self.frames.append(Frame(int(event["time_us"]), json.dumps(event), collection))

    def add_raw(self, text: str | bytes, time_us: int | None = None) -> None:
        """Append any frame (malformed ones too; bytes as a binary frame), at the time of the
        frame before it unless `time_us` says otherwise."""
        position = (
            time_us if time_us is not None else (self.frames[-1].time_us if self.frames else 0)
        )
        self.frames.append(Frame(position, text))

    def drop_after(self, count: int) -> None:
        self.drops.append(count)

    # -- running ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> JetstreamServer:
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop = None

    def __enter__(self) -> JetstreamServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self) -> None:
        self._server = await serve(
            self._handle, "127.0.0.1", self.port, process_request=self._check, compression=None
        )
        self.port = self._server.sockets[0].getsockname()[1] if not self.port else self.port

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _check(self, connection: ServerConnection, request: Any) -> Any:
        if self.refuse:
            return connection.respond(503, "unavailable\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        cursor = int(query["cursor"][0]) if "cursor" in query else None
        wanted = query.get("wantedCollections", [])
        self.requests.append(Request(cursor, wanted))
        exact = {w for w in wanted if not w.endswith("*")}
        prefixes = tuple(w[:-1] for w in wanted if w.endswith("*"))
        frames = sorted(self.frames, key=lambda f: f.time_us)  # stable: ties keep their order
        drop_at = self.drops.pop(0) if self.drops else None
        sent = 0
        for frame in frames:
            if cursor is not None and frame.time_us < cursor:
                continue
            if (
                frame.collection is not None
                and wanted
                and not (frame.collection in exact or frame.collection.startswith(prefixes))
            ):
                continue
            if drop_at is not None and sent >= drop_at:
                ws.transport.abort()  # no close frame: the connection just breaks
                return
            await ws.send(frame.text)
            sent += 1
        await ws.wait_closed()  # a quiet stream: nothing more until the client leaves
