"""The polite XRPC client and the private-network guard, over real sockets on 127.0.0.1.

The PLC/PDS stand-in (`tests.atproto_server`) plays the server and injects the faults; what it
cannot do (a body with no length, a peer that hangs up, a closed port) is a few lines of stdlib
socket code here. Backoff values are tiny, so every retry costs milliseconds; only the 429 tests
wait for real, because `ratelimit-reset` and `retry-after` count in whole seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
import pytest

from mirror_assets.net_guard import AddressGuard, RefusedAddressError, is_public
from mirror_assets.xrpc import (
    Politeness,
    UnavailableError,
    XrpcClient,
    XrpcError,
    rate_limit_wait,
)
from tests.atproto_server import GET_LATEST_COMMIT, LIST_RECORDS, AtprotoStandIn
from tests.events_factory import did

ALICE = did("alice")
# Timeouts far above any answer's time here, so a loaded machine cannot add a retry; the
# tests of timeouts set their own.
FAST = Politeness(backoff_seconds=0.01, timeout_seconds=5.0, attempts=3)


class Commit(msgspec.Struct):
    cid: str
    rev: str


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
    assert wanted - 0.1 <= elapsed < wanted + 0.5


@pytest.mark.parametrize(("retry_after", "at_least"), [("0", 0.0), ("1", 0.95)])
def test_a_429_with_retry_after_waits_that_many_seconds_then_retries(
    net: AtprotoStandIn, retry_after: str, at_least: float
) -> None:
    net.fail(GET_LATEST_COMMIT, 429, headers={"retry-after": retry_after})

    commit, elapsed = timed_fetch(net.url)

    assert commit.rev == net.rev(ALICE)
    assert net.count(GET_LATEST_COMMIT) == 2
    assert at_least <= elapsed < at_least + 0.5


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
    host's wait is over (DESIGN section 7: the 429 is honoured for the whole host)."""
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


# -- connection failures ------------------------------------------------------------------------


@pytest.fixture
def closed_port_url() -> str:
    """A loopback port nobody listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


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


# -- the private-network guard ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.1.1", False),
        ("172.16.0.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("224.0.0.1", False),  # multicast
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 to 169.254.169.254
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("8.8.8.8", True),
        ("2606:4700::1", True),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::808:808", True),  # NAT64 to 8.8.8.8
    ],
)
def test_is_public_accepts_only_global_unicast_addresses(address: str, public: bool) -> None:
    assert is_public(address) is public


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:2583/",
        "http://localhost/",
        "https://10.0.0.1/xrpc/com.atproto.sync.getLatestCommit",
        "http://[::1]:8080/",
        "http://169.254.169.254/latest/meta-data/",
        "http://8.8.8.8@127.0.0.1/",  # userinfo: the host is 127.0.0.1
        "ftp://example.com",
        "file:///etc/passwd",
        "not a url",
        "http:///no-host",
    ],
)
def test_the_guard_refuses_private_hosts_and_other_schemes(url: str) -> None:
    with pytest.raises(RefusedAddressError):
        asyncio.run(AddressGuard(allow_private_network=False).check(url))


def test_the_guard_lets_a_public_address_through() -> None:
    asyncio.run(AddressGuard(allow_private_network=False).check("https://8.8.8.8/xrpc/x"))


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:2583/", "http://localhost/", "https://10.0.0.1/", "http://[::1]/"]
)
def test_allow_private_network_lets_any_http_host_through(url: str) -> None:
    asyncio.run(AddressGuard(allow_private_network=True).check(url))


@pytest.mark.parametrize("url", ["ftp://example.com", "file:///etc/passwd", "not a url"])
def test_allow_private_network_still_refuses_other_schemes(url: str) -> None:
    with pytest.raises(RefusedAddressError):
        asyncio.run(AddressGuard(allow_private_network=True).check(url))


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
