"""A lean Jetstream stand-in for the benchmark, run in a child process.

The frames are built once, pre-framed as unmasked websocket text frames in one buffer,
and written to each connection in large chunks, so the server costs next to no CPU and
the benchmark measures the client. It honours `cursor` (frames at or after it), answers
pings and the closing handshake, and keeps the connection open and silent after the
backlog, like a quiet Jetstream. Every connection gets the whole backlog again.

`--server tests` runs the test suite's `JetstreamServer` (tests/support/jetstream_server.py) in
the child instead, for comparison: it sends frame by frame through the websockets library.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import hashlib
import struct
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bench.synth import StreamSpec, build_stream

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_CHUNK = 1 << 20


@dataclass
class SendStats:
    frames: int
    bytes: int
    seconds: float  # from the handshake until the last byte was handed to the kernel
    cpu_seconds: float  # the server process's CPU time meanwhile


def frame_text(payload: bytes) -> bytes:
    """One unmasked, final websocket text frame (server to client)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class LeanServer:
    def __init__(self, frames: list[str], times: list[int]) -> None:
        buffer = bytearray()
        self.offsets: list[int] = []
        for text in frames:
            self.offsets.append(len(buffer))
            buffer += frame_text(text.encode())
        self.offsets.append(len(buffer))
        self.buffer = memoryview(bytes(buffer))
        self.times = times
        self.stats: list[SendStats] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        lines = request.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:] if line)
        }
        key = headers.get("sec-websocket-key", "").encode()
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
        )
        query = parse_qs(urlsplit(path).query)
        first = 0
        if "cursor" in query:
            first = bisect.bisect_left(self.times, int(query["cursor"][0]))
        closing = asyncio.get_running_loop().create_future()
        control = asyncio.create_task(self._control(reader, writer, closing))
        started, cpu_started = time.monotonic(), time.process_time()
        position, end = self.offsets[first], self.offsets[-1]
        try:
            while position < end and not closing.done():
                # Cut at a frame boundary: a pong may be written between two chunks.
                last = bisect.bisect_right(self.offsets, position + _CHUNK) - 1
                if self.offsets[last] <= position:  # one frame larger than a chunk
                    last = bisect.bisect_right(self.offsets, position)
                stop = self.offsets[last]
                writer.write(self.buffer[position:stop])
                await writer.drain()
                position = stop
        except ConnectionError:
            pass
        self.stats.append(
            SendStats(
                len(self.offsets) - 1 - first,
                position - self.offsets[first],
                time.monotonic() - started,
                time.process_time() - cpu_started,
            )
        )
        await closing
        control.cancel()
        writer.close()

    async def _control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, closing: Any
    ) -> None:
        """Read the client's frames: answer pings, echo a close frame and end the connection."""
        try:
            while True:
                head = await reader.readexactly(2)
                opcode, length = head[0] & 0x0F, head[1] & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", await reader.readexactly(8))
                mask = await reader.readexactly(4) if head[1] & 0x80 else b"\0\0\0\0"
                data = await reader.readexactly(length)
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
                if opcode == 0x9:  # ping
                    writer.write(bytes((0x8A, len(payload))) + payload)
                elif opcode == 0x8:  # close
                    writer.write(bytes((0x88, len(payload))) + payload)
                    await writer.drain()
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        if not closing.done():
            closing.set_result(None)


async def _serve_lean(server: LeanServer, conn: Connection) -> None:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    conn.send(("ready", port))
    await _commands(conn, lambda: [asdict(s) for s in server.stats])
    listener.close()


async def _commands(conn: Connection, stats: Any) -> None:
    while True:
        command = await asyncio.to_thread(conn.recv)
        if command == "stats":
            conn.send(stats())
        else:
            return


def serve(conn: Connection, spec: StreamSpec, kind: str = "lean") -> None:
    """Child process entry: build the stream, report its counts, serve until told to stop."""
    frames, times, info = build_stream(spec)
    conn.send(("info", asdict(info)))
    if kind == "lean":
        asyncio.run(_serve_lean(LeanServer(frames, times), conn))
        return
    from tests.support.jetstream_server import JetstreamServer

    server = JetstreamServer()
    for text, time_us in zip(frames, times, strict=True):
        server.add_raw(text, time_us)
    del frames
    server.start()
    conn.send(("ready", server.port))
    asyncio.run(_commands(conn, lambda: []))
    server.stop()
