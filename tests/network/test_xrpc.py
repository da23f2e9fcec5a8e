"""The polite XRPC client and the private-network guard, over real sockets on 127.0.0.1.

The PLC/PDS stand-in (`tests.support.atproto_server`) plays the server and injects the
faults; what it cannot do (a body with no length, a peer that hangs up, a closed port) is a
few lines of stdlib socket code here, and compressed answers (gzip bombs included) come from
the scripted server of `tests.support.net_http_server`. Backoff values are tiny, so every
retry costs milliseconds; only the 429 tests wait for real, because `ratelimit-reset` and
`retry-after` count in whole seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import math
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mirror_assets.network.net_guard import AddressGuard, RefusedAddressError
from mirror_assets.network.xrpc import (
    Politeness,
    UnavailableError,
    XrpcClient,
    XrpcError,
    rate_limit_wait,
)
from tests.support.atproto_server import (
    GET_LATEST_COMMIT,
    LIST_RECORDS,
    AtprotoStandIn,
    Commit,
)
from tests.support.events_factory import did
from tests.support.net_http_server import HttpStandIn, serving
from tests.support.ports import free_port

ALICE = did("alice")
T = TypeVar("T")
# Timeouts far above any answer's time here, so a loaded machine cannot add a retry; the
# tests of timeouts set their own.
FAST = Politeness(backoff_seconds=0.01, timeout_seconds=5.0, attempts=3)
# A wait asked for by the server, kept to within this: room for a busy machine, not for
# waiting twice as long.
SLACK_SECONDS = 0.9


@pytest.fixture
def net() -> Iterator[AtprotoStandIn]:
    with AtprotoStandIn() as running:
        running.add_account(ALICE)
        yield running


def commit_url(base: str) -> str:
    return f"{base}/xrpc/{GET_LATEST_COMMIT}"


async def fetch_commit(
    url: str,
    politeness: Politeness = FAST,
    *,
    allow_private_network: bool = True,
    trusted: bool = False,
) -> Commit:
    """One getLatestCommit through a fresh client (untrusted by default, like a PDS call)."""
    async with XrpcClient(politeness, AddressGuard(allow_private_network)) as client:
        return await client.get(commit_url(url), {"did": ALICE}, Commit, trusted=trusted)


def timed_fetch(url: str, politeness: Politeness = FAST) -> tuple[Commit, float]:
    started = time.monotonic()
    commit = asyncio.run(fetch_commit(url, politeness))
    return commit, time.monotonic() - started


def padded_commit(size: int) -> bytes:
    """A valid getLatestCommit answer of exactly `size` bytes (JSON allows trailing spaces)."""
    body = b'{"cid": "bafyreiexample", "rev": "3kabc"}'
    return body + b" " * (size - len(body))


# -- answers and retries ------------------------------------------------------------------------


def test_a_200_is_decoded_into_the_struct_and_the_params_are_sent(net: AtprotoStandIn) -> None:
    commit = asyncio.run(fetch_commit(net.url))

    assert commit.rev == net.rev(ALICE)
    assert commit.cid.startswith("bafyrei")
    assert net.requests == [(f"/xrpc/{GET_LATEST_COMMIT}", {"did": ALICE})]


def test_a_429_with_ratelimit_reset_waits_until_that_moment_then_retries(
    net: AtprotoStandIn,
) -> None:
    reset = math.ceil(time.time() + 0.8)  # epoch seconds, at least 0.8 s ahead
    wanted = reset - time.time()
    net.fail(GET_LATEST_COMMIT, 429, headers={"ratelimit-reset": str(reset)})

    commit, elapsed = timed_fetch(net.url)

    assert commit.rev == net.rev(ALICE)
    assert net.count(GET_LATEST_COMMIT) == 2
    assert wanted - 0.1 <= elapsed < wanted + SLACK_SECONDS


@pytest.mark.parametrize(("retry_after", "at_least"), [("0", 0.0), ("1", 0.95)])
def test_a_429_with_retry_after_waits_that_many_seconds_then_retries(
    net: AtprotoStandIn, retry_after: str, at_least: float
) -> None:
    net.fail(GET_LATEST_COMMIT, 429, headers={"retry-after": retry_after})

    commit, elapsed = timed_fetch(net.url)

    assert commit.rev == net.rev(ALICE)
    assert net.count(GET_LATEST_COMMIT) == 2
    assert at_least <= elapsed < at_least + SLACK_SECONDS


def test_a_429_pauses_a_later_request_to_the_same_host(net: AtprotoStandIn) -> None:
    net.fail(GET_LATEST_COMMIT, 429, headers={"retry-after": "1"})

    async def scenario() -> tuple[int, float]:
        async with XrpcClient(FAST, AddressGuard(True)) as client:
            started = time.monotonic()
            first = asyncio.create_task(
                client.get(commit_url(net.url), {"did": ALICE}, Commit, trusted=True)
            )
            await asyncio.sleep(0.3)  # the first request has its 429 by now
            second = await client.get(commit_url(net.url), {"did": ALICE}, Commit, trusted=True)
            second_done = time.monotonic() - started
            await first
            assert second.rev == net.rev(ALICE)
            return net.count(GET_LATEST_COMMIT), second_done

    requests, second_done = asyncio.run(scenario())

    assert requests == 3
    assert second_done >= 0.95  # it waited for the host, not just for its own turn


def test_a_429_pauses_requests_already_queued_for_the_host(net: AtprotoStandIn) -> None:
    """Requests waiting for a per-host slot when a 429 arrives must not go out before the
    host's wait is over (docs/backfill.md: the 429 is honoured for the whole host)."""
    net.fail(GET_LATEST_COMMIT, 429, headers={"retry-after": "1"})
    one_at_a_time = Politeness(per_host=1, backoff_seconds=0.01, timeout_seconds=2.0)

    async def scenario() -> tuple[int, int]:
        async with XrpcClient(one_at_a_time, AddressGuard(True)) as client:
            tasks = [
                asyncio.create_task(
                    client.get(commit_url(net.url), {"did": ALICE}, Commit, trusted=True)
                )
                for _ in range(3)
            ]
            await asyncio.sleep(0.5)
            during_the_wait = net.count(GET_LATEST_COMMIT)
            await asyncio.gather(*tasks)
            return during_the_wait, net.count(GET_LATEST_COMMIT)

    during_the_wait, total = asyncio.run(scenario())

    assert during_the_wait == 1  # only the request that got the 429
    assert total == 4


def test_a_429_longer_than_the_allowed_wait_fails_at_once(net: AtprotoStandIn) -> None:
    patient = Politeness(backoff_seconds=0.01, timeout_seconds=5.0, max_rate_limit_wait_seconds=5)
    net.fail(GET_LATEST_COMMIT, 429, headers={"retry-after": "60"})
    started = time.monotonic()

    with pytest.raises(UnavailableError, match="rate limited"):
        asyncio.run(fetch_commit(net.url, patient))

    assert time.monotonic() - started < 0.5
    assert net.count(GET_LATEST_COMMIT) == 1


def test_a_429_longer_than_the_allowed_wait_still_pauses_the_host(net: AtprotoStandIn) -> None:
    """The host said "not for a minute": the next request to it fails without being sent,
    instead of asking again (and collecting another 429) at once."""
    patient = Politeness(backoff_seconds=0.01, timeout_seconds=5.0, max_rate_limit_wait_seconds=5)
    net.fail(GET_LATEST_COMMIT, 429, headers={"retry-after": "60"})

    async def scenario() -> None:
        async with XrpcClient(patient, AddressGuard(True)) as client:
            with pytest.raises(UnavailableError):
                await client.get(commit_url(net.url), {"did": ALICE}, Commit)
            with pytest.raises(UnavailableError, match="rate limited"):
                await client.get(commit_url(net.url), {"did": ALICE}, Commit)

    asyncio.run(scenario())

    assert net.count(GET_LATEST_COMMIT) == 1


def test_5xx_answers_are_retried_until_one_succeeds(net: AtprotoStandIn) -> None:
    net.fail(GET_LATEST_COMMIT, 500, times=2)

    commit, _ = timed_fetch(net.url)

    assert commit.rev == net.rev(ALICE)
    assert net.count(GET_LATEST_COMMIT) == 3


def test_a_408_is_retried_like_a_5xx(net: AtprotoStandIn) -> None:
    net.fail(GET_LATEST_COMMIT, 408)

    commit, _ = timed_fetch(net.url)

    assert commit.rev == net.rev(ALICE)
    assert net.count(GET_LATEST_COMMIT) == 2


def test_a_5xx_every_time_gives_up_after_exactly_the_attempts(net: AtprotoStandIn) -> None:
    net.fail(GET_LATEST_COMMIT, 503, times=10)

    with pytest.raises(UnavailableError, match=r"server error 503 \(3 attempts\)"):
        asyncio.run(fetch_commit(net.url))

    assert net.count(GET_LATEST_COMMIT) == 3


def test_backoff_is_capped_by_max_backoff_seconds(net: AtprotoStandIn) -> None:
    capped = Politeness(
        backoff_seconds=10.0, max_backoff_seconds=0.05, timeout_seconds=5.0, attempts=4
    )
    net.fail(GET_LATEST_COMMIT, 500, times=3)

    commit, elapsed = timed_fetch(net.url, capped)

    assert commit.rev == net.rev(ALICE)
    assert net.count(GET_LATEST_COMMIT) == 4
    assert elapsed < 1.0  # uncapped, three waits drawn from 0..10, 0..20, 0..40 s


def test_a_timeout_is_retried(net: AtprotoStandIn) -> None:
    net.delay(GET_LATEST_COMMIT, 3.0)
    impatient = Politeness(backoff_seconds=0.01, timeout_seconds=0.5, attempts=3)

    commit, elapsed = timed_fetch(net.url, impatient)

    assert commit.rev == net.rev(ALICE)
    assert net.count(GET_LATEST_COMMIT) == 2
    assert elapsed < 3.0  # it did not wait for the slow answer


def test_an_unreadable_body_is_retried(net: AtprotoStandIn) -> None:
    net.malformed(GET_LATEST_COMMIT)

    commit, _ = timed_fetch(net.url)

    assert commit.rev == net.rev(ALICE)
    assert net.count(GET_LATEST_COMMIT) == 2


def test_an_unreadable_body_every_time_gives_up_saying_unreadable(net: AtprotoStandIn) -> None:
    net.malformed(GET_LATEST_COMMIT, times=10)

    with pytest.raises(UnavailableError, match=r"unreadable answer.*\(3 attempts\)"):
        asyncio.run(fetch_commit(net.url))

    assert net.count(GET_LATEST_COMMIT) == 3


def test_a_body_of_the_wrong_shape_counts_as_unreadable(net: AtprotoStandIn) -> None:
    net.fail(GET_LATEST_COMMIT, 200, times=10, body=b'{"cid": "bafyrei", "rev": 7}')

    with pytest.raises(UnavailableError, match="unreadable answer"):
        asyncio.run(fetch_commit(net.url))

    assert net.count(GET_LATEST_COMMIT) == 3


def test_a_4xx_is_an_xrpc_error_with_its_name_and_is_not_retried(net: AtprotoStandIn) -> None:
    async def unknown_repo() -> Commit:
        async with XrpcClient(FAST, AddressGuard(True)) as client:
            return await client.get(commit_url(net.url), {"did": did("nobody")}, Commit)

    with pytest.raises(XrpcError) as raised:
        asyncio.run(unknown_repo())

    assert raised.value.status == 400
    assert raised.value.error == "RepoNotFound"
    assert "nobody" in (raised.value.message or "")
    assert net.count(GET_LATEST_COMMIT) == 1


def test_a_4xx_without_an_xrpc_body_keeps_the_text_as_its_message(net: AtprotoStandIn) -> None:
    net.fail(GET_LATEST_COMMIT, 403, body=b"<html>forbidden</html>")

    with pytest.raises(XrpcError) as raised:
        asyncio.run(fetch_commit(net.url))

    assert (raised.value.status, raised.value.error) == (403, None)
    assert raised.value.message == "<html>forbidden</html>"
    assert net.count(GET_LATEST_COMMIT) == 1


def test_a_redirect_is_not_followed(net: AtprotoStandIn) -> None:
    target = f"{commit_url(net.url)}?did={ALICE}"  # would succeed, if followed
    net.fail(GET_LATEST_COMMIT, 302, headers={"location": target}, body=b"")

    with pytest.raises(XrpcError) as raised:
        asyncio.run(fetch_commit(net.url))

    assert raised.value.status == 302
    assert net.count(GET_LATEST_COMMIT) == 1


# -- body size ----------------------------------------------------------------------------------

BODY_LIMIT = 1_000
SMALL_BODIES = Politeness(backoff_seconds=0.01, timeout_seconds=5.0, max_body_bytes=BODY_LIMIT)


def test_a_body_of_exactly_max_body_bytes_is_read(net: AtprotoStandIn) -> None:
    net.fail(GET_LATEST_COMMIT, 200, body=padded_commit(BODY_LIMIT))

    commit, _ = timed_fetch(net.url, SMALL_BODIES)

    assert commit.rev == "3kabc"


def test_a_declared_body_over_max_body_bytes_fails_at_once(net: AtprotoStandIn) -> None:
    net.fail(GET_LATEST_COMMIT, 200, times=10, body=padded_commit(BODY_LIMIT + 1))

    with pytest.raises(UnavailableError, match="exceeds 1000"):
        asyncio.run(fetch_commit(net.url, SMALL_BODIES))

    assert net.count(GET_LATEST_COMMIT) == 1


class _NoLengthServer(ThreadingHTTPServer):
    daemon_threads = True
    body = b""
    hits = 0
    trickle_seconds = 0.0  # a pause before each byte of the body

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client may hang up before the body is out


class _NoLengthHandler(BaseHTTPRequestHandler):
    """HTTP/1.0 with no Content-Length: the body ends when the connection closes."""

    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, _NoLengthServer)
        server.hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if not server.trickle_seconds:
            self.wfile.write(server.body)
            return
        for byte in server.body:
            time.sleep(server.trickle_seconds)
            self.wfile.write(bytes([byte]))
            self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def no_length() -> Iterator[_NoLengthServer]:
    server = _NoLengthServer(("127.0.0.1", 0), _NoLengthHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(("size", "fits"), [(BODY_LIMIT, True), (BODY_LIMIT + 1, False)])
def test_a_streamed_body_is_bounded_by_max_body_bytes(
    no_length: _NoLengthServer, size: int, fits: bool
) -> None:
    no_length.body = padded_commit(size)
    url = f"http://127.0.0.1:{no_length.server_address[1]}"

    if fits:
        assert asyncio.run(fetch_commit(url, SMALL_BODIES)).rev == "3kabc"
    else:
        with pytest.raises(UnavailableError, match="exceeds 1000 bytes"):
            asyncio.run(fetch_commit(url, SMALL_BODIES))
    assert no_length.hits == 1


def test_a_peer_that_trickles_its_answer_is_cut_off_as_a_timeout(
    no_length: _NoLengthServer,
) -> None:
    # Each byte comes within the read timeout (0.3 s); the whole answer would take 5 s.
    no_length.body = b" " * 50 + b'{"cid": "bafy", "rev": "3kabc"}'
    no_length.trickle_seconds = 0.06
    url = f"http://127.0.0.1:{no_length.server_address[1]}"
    one_try = Politeness(timeout_seconds=0.3, attempts=1)

    started = time.monotonic()
    with pytest.raises(UnavailableError, match="timed out"):
        asyncio.run(fetch_commit(url, one_try))

    assert time.monotonic() - started < 2.5  # four read timeouts, not the 5 s answer
    assert no_length.hits == 1


# -- compressed answers -------------------------------------------------------------------------

MiB = 1024 * 1024


def gzip_of(body: bytes) -> bytes:
    return gzip.compress(body)


def zlib_of(body: bytes) -> bytes:
    return zlib.compress(body)


def raw_deflate_of(body: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()


@functools.cache
def gzip_bomb(expanded_bytes: int) -> bytes:
    """About `expanded_bytes` / 1000 bytes of gzip that expand to `expanded_bytes` zeros.

    One compressed block of 16 MiB of zeros, repeated: after a full flush deflate starts
    afresh, so the same input gives the same bytes. The stream never ends (no trailer): a
    client that keeps to its bound never gets that far.
    """
    block = bytes(16 * MiB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    return first + again * (expanded_bytes // len(block) - 1)


def peak_memory_growth(run: Callable[[], T]) -> tuple[T, int]:
    """What `run` returns, and how far this process's resident memory rose above where it
    was, at its highest, while `run` ran (Linux: VmHWM, reset through clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (VmHWM) to now
    before = _proc_status_kib("VmRSS")
    result = run()
    return result, (_proc_status_kib("VmHWM") - before) * 1024


def _proc_status_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split(f"{field}:", 1)[1].split()[0])


def commit_outcome(url: str, politeness: Politeness) -> Commit | BaseException:
    async def go() -> Commit | BaseException:
        [outcome] = await asyncio.gather(fetch_commit(url, politeness), return_exceptions=True)
        return outcome

    return asyncio.run(go())


@pytest.fixture
def scripted() -> Iterator[HttpStandIn]:
    with serving() as server:
        yield server


def test_the_client_asks_for_answers_without_compression(scripted: HttpStandIn) -> None:
    scripted.answer(f"/xrpc/{GET_LATEST_COMMIT}", padded_commit(100))

    assert asyncio.run(fetch_commit(scripted.url)).rev == "3kabc"
    assert scripted.requests[0].headers["accept-encoding"] == "identity"


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip_of),
        ("x-gzip", gzip_of),
        ("GZIP", gzip_of),
        ("deflate", zlib_of),
        ("deflate", raw_deflate_of),  # "deflate" without its zlib container, as some send it
        ("identity, gzip", gzip_of),
        ("gzip", lambda body: gzip_of(body[:30]) + gzip_of(body[30:])),  # two gzip members
    ],
)
def test_a_compressed_answer_is_decoded_anyway(
    scripted: HttpStandIn, encoding: str, encode: Callable[[bytes], bytes]
) -> None:
    scripted.answer(
        f"/xrpc/{GET_LATEST_COMMIT}",
        encode(padded_commit(BODY_LIMIT)),
        headers={"content-encoding": encoding},
    )

    assert asyncio.run(fetch_commit(scripted.url, SMALL_BODIES)).rev == "3kabc"


@pytest.mark.parametrize(
    ("encode", "close_delimited"),
    [(gzip_of, False), (zlib_of, True), (raw_deflate_of, False)],
)
def test_a_compressed_answer_is_bounded_by_its_decoded_size(
    scripted: HttpStandIn, encode: Callable[[bytes], bytes], close_delimited: bool
) -> None:
    body = encode(padded_commit(BODY_LIMIT + 1))
    encoding = "gzip" if encode is gzip_of else "deflate"
    scripted.answer(
        f"/xrpc/{GET_LATEST_COMMIT}",
        body,
        headers={"content-encoding": encoding},
        close_delimited=close_delimited,
    )

    with pytest.raises(UnavailableError, match="exceeds 1000 bytes"):
        asyncio.run(fetch_commit(scripted.url, SMALL_BODIES))

    assert len(body) < BODY_LIMIT  # the bound is on what it decodes to
    assert scripted.count(f"/xrpc/{GET_LATEST_COMMIT}") == 1


def test_compressed_bytes_count_against_the_bound_too(scripted: HttpStandIn) -> None:
    """Empty gzip members decode to nothing: the bytes received are bounded all the same."""
    body = gzip_of(b"") * 60 + gzip_of(padded_commit(100))
    scripted.answer(
        f"/xrpc/{GET_LATEST_COMMIT}",
        body,
        headers={"content-encoding": "gzip"},
        close_delimited=True,
    )

    with pytest.raises(UnavailableError, match="exceeds 1000 bytes"):
        asyncio.run(fetch_commit(scripted.url, SMALL_BODIES))

    assert len(body) > BODY_LIMIT


def test_a_gzip_bomb_fails_on_the_body_bound_at_once_without_the_memory_growing(
    scripted: HttpStandIn,
) -> None:
    bomb = gzip_bomb(4096 * MiB)  # 4 GiB of zeros in about 4 MB
    scripted.answer(
        f"/xrpc/{GET_LATEST_COMMIT}",
        bomb,
        headers={"content-encoding": "gzip"},
        close_delimited=True,  # no length to refuse up front: it must be read to be refused
    )
    one_mib = Politeness(timeout_seconds=5.0, attempts=1, max_body_bytes=MiB)
    started = time.monotonic()

    outcome, growth = peak_memory_growth(lambda: commit_outcome(scripted.url, one_mib))

    assert isinstance(outcome, UnavailableError), outcome
    assert f"exceeds {MiB} bytes" in str(outcome)
    assert time.monotonic() - started < 2.0
    # Decoding any one chunk of the bomb whole would take 64 MiB and more.
    assert growth < 16 * MiB, f"memory rose by {growth / MiB:.0f} MiB"
    assert len(bomb) < 5 * MiB


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("br", b"\x0b\x02\x80{}\x03"),
        ("zstd", b"(\xb5/\xfd\x00X\x11\x00\x00{}"),
        ("compress", b"{}"),
        ("gzip, gzip", gzip.compress(gzip.compress(b"{}", mtime=0), mtime=0)),
        ("gzip", b"this is not gzip"),
        # The JSON whole, the stream cut off.
        ("gzip", gzip.compress(padded_commit(200), mtime=0)[:-8]),
        ("deflate", zlib.compress(b"{}") + b"trailing"),
    ],
    ids=["br", "zstd", "compress", "gzip-twice", "not-gzip", "gzip-cut-off", "deflate-trailing"],
)
def test_an_answer_that_cannot_be_decoded_is_unreadable(
    scripted: HttpStandIn, encoding: str, body: bytes
) -> None:
    scripted.answer(f"/xrpc/{GET_LATEST_COMMIT}", body, headers={"content-encoding": encoding})

    with pytest.raises(UnavailableError, match=r"unreadable answer.*\(3 attempts\)"):
        asyncio.run(fetch_commit(scripted.url))

    assert scripted.count(f"/xrpc/{GET_LATEST_COMMIT}") == 3


def test_get_bytes_returns_the_body_within_its_own_bound(scripted: HttpStandIn) -> None:
    scripted.answer("/small", b"did:plc:abc\n")
    scripted.answer("/large", b"x" * 2049, close_delimited=True)

    async def go() -> tuple[bytes, BaseException | bytes]:
        async with XrpcClient(FAST, AddressGuard(True)) as client:
            small = await client.get_bytes(scripted.url + "/small", max_body_bytes=2048)
            [large] = await asyncio.gather(
                client.get_bytes(scripted.url + "/large", max_body_bytes=2048),
                return_exceptions=True,
            )
            return small, large

    small, large = asyncio.run(go())

    assert small == b"did:plc:abc\n"
    assert isinstance(large, UnavailableError) and "exceeds 2048 bytes" in str(large)


# -- connection failures ------------------------------------------------------------------------


@pytest.fixture
def closed_port_url() -> str:
    """A loopback port nobody listens on: connecting is refused at once."""
    return f"http://127.0.0.1:{free_port()}"


def test_a_refused_connection_gives_up_after_the_attempts(closed_port_url: str) -> None:
    with pytest.raises(UnavailableError, match=r"connection failed.*\(3 attempts\)"):
        asyncio.run(fetch_commit(closed_port_url))


@pytest.fixture
def hang_up() -> Iterator[tuple[str, list[int]]]:
    """A port that accepts, reads the request and closes without answering; counts accepts."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    accepted = [0]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted[0] += 1
            with conn:
                conn.settimeout(1.0)
                with contextlib.suppress(OSError):
                    conn.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_a_peer_that_hangs_up_is_retried_exactly_attempts_times(
    hang_up: tuple[str, list[int]],
) -> None:
    url, accepted = hang_up

    with pytest.raises(UnavailableError, match=r"connection failed.*\(3 attempts\)"):
        asyncio.run(fetch_commit(url))

    assert accepted[0] == 3


# -- per-host concurrency -----------------------------------------------------------------------


def test_no_more_than_per_host_requests_are_in_flight(net: AtprotoStandIn) -> None:
    three = Politeness(per_host=3, backoff_seconds=0.01, timeout_seconds=2.0)
    net.delay(GET_LATEST_COMMIT, 0.15, times=10)

    async def scenario() -> list[Commit]:
        async with XrpcClient(three, AddressGuard(True)) as client:
            return await asyncio.gather(
                *(client.get(commit_url(net.url), {"did": ALICE}, Commit) for _ in range(10))
            )

    commits = asyncio.run(scenario())

    assert [c.rev for c in commits] == [net.rev(ALICE)] * 10
    assert net.count(GET_LATEST_COMMIT) == 10
    assert net.max_in_flight == 3


# -- rate_limit_wait ----------------------------------------------------------------------------

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"ratelimit-reset": str(int(NOW) + 12)}, 12.0),
        ({"ratelimit-reset": str(int(NOW) - 5)}, 0.0),  # already past: no wait
        ({"ratelimit-reset": str(int(NOW) + 3), "retry-after": "30"}, 3.0),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": " 0 "}, 0.0),
        ({"retry-after": formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"retry-after": formatdate(NOW - 30, usegmt=True)}, 0.0),
        ({"retry-after": "soon"}, 1.0),
        ({}, 1.0),
    ],
)
def test_rate_limit_wait_reads_ratelimit_reset_then_retry_after(
    headers: dict[str, str], wait: float
) -> None:
    assert rate_limit_wait(headers, now=NOW) == pytest.approx(wait)


# -- the private-network guard (tests/network/test_net_guard.py has the rest) ------------


def test_an_untrusted_url_to_a_private_host_is_refused_before_any_request(
    net: AtprotoStandIn,
) -> None:
    with pytest.raises(RefusedAddressError, match="MIRROR_ALLOW_PRIVATE_NETWORK"):
        asyncio.run(fetch_commit(net.url, allow_private_network=False))

    assert net.requests == []


def test_a_trusted_url_skips_the_guard(net: AtprotoStandIn) -> None:
    commit = asyncio.run(fetch_commit(net.url, allow_private_network=False, trusted=True))

    assert commit.rev == net.rev(ALICE)
    assert net.count(GET_LATEST_COMMIT) == 1
    assert net.count(LIST_RECORDS) == 0
