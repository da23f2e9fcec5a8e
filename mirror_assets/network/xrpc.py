"""A polite HTTP client for the AT Protocol's XRPC endpoints and DID documents.

Polite (docs/backfill.md): a limit of requests in flight per host, 429 answers honoured
(`ratelimit-reset` or `retry-after`, for every request to that host), exponential backoff
with full jitter on 5xx, 408, timeouts, connection errors and unreadable bodies, and a bounded
number of attempts. Defensive: bodies are bounded in size, compressed ones too (the mirror asks
for none, and decodes gzip and deflate itself, never past the bound), redirects are not
followed, and every connection goes through the private-network guard (docs/backfill.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar
from urllib.parse import urlsplit

import httpx
import msgspec

from mirror_assets.config import BackfillLimits
from mirror_assets.network.net_guard import AddressGuard, GuardedTransport, NoSuchHostError

log = logging.getLogger(__name__)

T = TypeVar("T")

_WHOLE_ANSWER_TIMEOUTS = 4  # a whole answer may take this many read timeouts
USER_AGENT = "atproto-mirror (+https://atproto.com)"


@dataclass(frozen=True)
class Politeness:
    """How hard the mirror may press one host, and how long it waits for one."""

    per_host: int = 4  # requests in flight per host
    timeout_seconds: float = 15.0  # connect, read and write, per request
    attempts: int = 5  # per request, then it fails with the last error
    backoff_seconds: float = 0.5  # first retry's ceiling; doubles per attempt
    max_backoff_seconds: float = 30.0
    max_rate_limit_wait_seconds: float = 120.0  # a longer 429 wait fails the request instead
    max_body_bytes: int = 16 * 1024 * 1024

    @classmethod
    def from_limits(cls, limits: BackfillLimits) -> Politeness:
        return cls(
            per_host=limits.per_host_per_run,
            timeout_seconds=limits.http_timeout_seconds,
            attempts=limits.http_attempts,
            backoff_seconds=limits.http_backoff_seconds,
        )


class XrpcError(Exception):
    """The server answered with an XRPC error (a 4xx with `{"error", "message"}`), or with a
    status the protocol does not expect; retrying the same request would not help."""

    def __init__(self, url: str, status: int, error: str | None, message: str | None) -> None:
        self.url, self.status, self.error, self.message = url, status, error, message
        detail = ": ".join(part for part in (error, message) if part) or "no error body"
        super().__init__(f"{url} answered {status} ({detail})")


class UnavailableError(Exception):
    """The request failed every attempt (5xx, 429, timeouts, connection errors, bad bodies);
    it may work later."""


class _RetryableError(Exception):
    """One attempt failed in a way worth retrying; `wait` is the server's own delay, if any."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


class _XrpcErrorBody(msgspec.Struct):
    error: str | None = None
    message: str | None = None


class XrpcClient:
    """Two `httpx.AsyncClient`s shared by every request of a run, with per-host manners.

    Connections are opened through the guard (`GuardedTransport`): checked at every
    connection, and made to the addresses checked. Requests marked `trusted` (the
    operator's own URLs) go through a second pool whose connections are not checked, so a
    connection opened for one is never reused by a request that must be checked.
    `ssl_context` replaces the default (certifi's authorities) and `transport` both
    guarded transports, for tests; a transport given here must do its own guarding.
    """

    def __init__(
        self,
        politeness: Politeness,
        guard: AddressGuard,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._politeness = politeness
        self._guard = guard
        ssl_context = ssl_context or httpx.create_ssl_context()
        unchecked = AddressGuard(allow_private_network=True, resolver=guard.resolver)
        self._client = self._http_client(
            transport or GuardedTransport(guard, ssl_context=ssl_context)
        )
        self._trusted_client = self._http_client(
            transport or GuardedTransport(unchecked, ssl_context=ssl_context)
        )
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._host_ready_at: dict[str, float] = {}  # a 429 pauses the whole host until then

    def _http_client(self, transport: httpx.AsyncBaseTransport) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=self._politeness.timeout_seconds,
            follow_redirects=False,
            transport=transport,
            # Compressed answers are decoded here, within the body bound (_BoundedDecoder).
            headers={"user-agent": USER_AGENT, "accept-encoding": "identity"},
            trust_env=False,  # a proxy from the environment would resolve names past the guard
        )

    async def __aenter__(self) -> XrpcClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._trusted_client.aclose()

    async def get(
        self,
        url: str,
        params: Mapping[str, str | int],
        decode: type[T],
        *,
        trusted: bool = False,
    ) -> T:
        """GET `url` and decode its JSON body as `decode`; retries what is worth retrying.

        `trusted` says the URL is of the operator's configuration (PLC_URL, RELAY_URL): its
        connections are not checked. A guard made by `AddressGuard.for_settings` trusts
        those origins anyway; every other connection must pass the guard.
        """
        return await self._request(
            url, params, self._politeness.max_body_bytes, _json_reader(decode), trusted=trusted
        )

    async def get_bytes(
        self,
        url: str,
        params: Mapping[str, str | int] | None = None,
        *,
        max_body_bytes: int | None = None,
        trusted: bool = False,
    ) -> bytes:
        """GET `url` and return its body, at most `max_body_bytes` (the politeness bound if
        None); retried, guarded and bounded as `get` is."""
        limit = self._politeness.max_body_bytes if max_body_bytes is None else max_body_bytes
        return await self._request(url, params or {}, limit, _as_sent, trusted=trusted)

    async def _request(
        self,
        url: str,
        params: Mapping[str, str | int],
        max_body_bytes: int,
        read: Callable[[bytes], T],
        *,
        trusted: bool,
    ) -> T:
        self._guard.check_url(url)
        client = self._trusted_client if trusted else self._client
        host = urlsplit(url).netloc
        politeness = self._politeness
        last_reason = ""
        for attempt in range(politeness.attempts):
            try:
                async with self._slot(host):
                    # After taking the slot: requests queued for it honour a 429 too.
                    await self._wait_for_host(host)
                    body = await self._fetch(client, url, params, max_body_bytes)
                return read(body)
            except _RetryableError as retry:
                last_reason = str(retry)
                if attempt + 1 == politeness.attempts:
                    break
                delay = retry.wait if retry.wait is not None else self._backoff(attempt)
                log.info("%s: %s; attempt %d, retrying in %.2f s", url, retry, attempt + 1, delay)
                await asyncio.sleep(delay)
        raise UnavailableError(f"{url}: {last_reason} ({politeness.attempts} attempts)")

    def _slot(self, host: str) -> asyncio.Semaphore:
        if host not in self._slots:
            self._slots[host] = asyncio.Semaphore(self._politeness.per_host)
        return self._slots[host]

    async def _wait_for_host(self, host: str) -> None:
        wait = self._host_ready_at.get(host, 0.0) - time.monotonic()
        if wait > self._politeness.max_rate_limit_wait_seconds:
            raise UnavailableError(f"{host}: rate limited for {wait:.0f} s more")
        if wait > 0:
            await asyncio.sleep(wait)

    def _backoff(self, attempt: int) -> float:
        ceiling = self._politeness.backoff_seconds * 2**attempt
        return random.uniform(0, min(ceiling, self._politeness.max_backoff_seconds))

    async def _fetch(
        self,
        client: httpx.AsyncClient,
        url: str,
        params: Mapping[str, str | int],
        max_body_bytes: int,
    ) -> bytes:
        # The client's timeout bounds each read; this bounds the whole answer, so a peer
        # that trickles bytes cannot hold a request for long.
        deadline = _WHOLE_ANSWER_TIMEOUTS * self._politeness.timeout_seconds
        try:
            async with (
                asyncio.timeout(deadline),
                client.stream("GET", url, params=params) as response,
            ):
                body = await _read_bounded(response, url, max_body_bytes)
        except (httpx.TimeoutException, TimeoutError) as error:
            raise _RetryableError(f"timed out ({type(error).__name__})") from None
        except httpx.TransportError as error:
            raise _RetryableError(f"connection failed ({type(error).__name__}: {error})") from None
        except NoSuchHostError as error:
            raise UnavailableError(f"{url}: {error}") from None
        status, host = response.status_code, urlsplit(url).netloc
        if status == 200:
            return body
        if status == 429:
            wait = rate_limit_wait(response.headers)
            self._host_ready_at[host] = max(
                self._host_ready_at.get(host, 0.0), time.monotonic() + wait
            )
            if wait > self._politeness.max_rate_limit_wait_seconds:
                raise UnavailableError(f"{url}: rate limited for {wait:.0f} s more")
            raise _RetryableError("rate limited (429)", wait=wait)
        if status >= 500 or status == 408:
            raise _RetryableError(f"server error {status}")
        error_body = _decode_error(body)
        raise XrpcError(url, status, error_body.error, error_body.message)


def _as_sent(body: bytes) -> bytes:
    return body


def _json_reader(decode: type[T]) -> Callable[[bytes], T]:
    def read(body: bytes) -> T:
        try:
            return msgspec.json.decode(body, type=decode)
        except msgspec.DecodeError as error:  # includes msgspec.ValidationError
            raise _RetryableError(f"unreadable answer: {error}") from None
        except RecursionError:  # nested deeper than the decoder follows
            raise _RetryableError("unreadable answer: nested too deep") from None

    return read


async def _read_bounded(response: httpx.Response, url: str, limit: int) -> bytes:
    """The body as sent (`aiter_raw`: httpx decodes nothing), decoded here: neither the
    bytes received nor the bytes decoded may exceed `limit`."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UnavailableError(f"{url}: answer of {declared} bytes exceeds {limit}")
    try:
        decoder = _BoundedDecoder(response.headers.get("content-encoding", ""), limit)
        chunks: list[bytes] = []
        received = 0
        async for chunk in response.aiter_raw():
            received += len(chunk)
            if received > limit:
                raise _BodyTooLargeError
            chunks.append(decoder.decode(chunk))
        decoder.finish()
    except _BodyTooLargeError:
        raise UnavailableError(f"{url}: answer exceeds {limit} bytes") from None
    except _UnreadableBodyError as error:
        raise _RetryableError(f"unreadable answer: {error}") from None
    return b"".join(chunks)


class _BodyTooLargeError(Exception):
    pass


class _UnreadableBodyError(Exception):
    pass


# zlib's window bits: the gzip container, the zlib container (HTTP's "deflate"), raw deflate.
_GZIP, _ZLIB, _RAW_DEFLATE = 16 + zlib.MAX_WBITS, zlib.MAX_WBITS, -zlib.MAX_WBITS
_CODINGS = {"gzip": _GZIP, "x-gzip": _GZIP, "deflate": _ZLIB}


class _BoundedDecoder:
    """Decodes a body's content-coding (none, gzip or deflate) without ever holding more
    than `limit` decoded bytes: zlib is told how much it may produce at each step, so a
    small body that would expand to gigabytes stops at `limit` + 1 bytes."""

    def __init__(self, content_encoding: str, limit: int) -> None:
        codings = [c.strip().lower() for c in content_encoding.split(",")]
        codings = [c for c in codings if c not in ("", "identity")]
        if len(codings) > 1 or (codings and codings[0] not in _CODINGS):
            raise _UnreadableBodyError(f"content-encoding {content_encoding!r} is not supported")
        self._wbits = _CODINGS[codings[0]] if codings else None
        self._inflater = zlib.decompressobj(self._wbits) if self._wbits is not None else None
        self._limit = limit
        self._produced = 0
        self._received = 0

    def decode(self, data: bytes) -> bytes:
        self._received += len(data)
        if self._inflater is None:
            return self._count(data)
        pieces: list[bytes] = []
        while data:
            if self._inflater.eof:
                self._next_member()
            pieces.append(self._inflate(data))
            inflater = self._inflater
            data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
        return b"".join(pieces)

    def finish(self) -> None:
        """Refuse a body cut off before the end of its compressed stream."""
        if self._inflater is not None and self._received and not self._inflater.eof:
            raise _UnreadableBodyError("the compressed body is cut off")

    def _count(self, piece: bytes) -> bytes:
        self._produced += len(piece)
        if self._produced > self._limit:
            raise _BodyTooLargeError
        return piece

    def _inflate(self, data: bytes) -> bytes:
        assert self._inflater is not None
        room = self._limit - self._produced + 1  # one byte over the limit tells it was passed
        try:
            return self._count(self._inflater.decompress(data, room))
        except zlib.error as error:
            if not self._may_be_raw_deflate(data):
                raise _UnreadableBodyError(f"the compressed body is corrupt ({error})") from None
        # Some servers send "deflate" without the zlib container: raw deflate, as httpx reads.
        self._wbits = _RAW_DEFLATE
        self._inflater = zlib.decompressobj(_RAW_DEFLATE)
        return self._inflate(data)

    def _may_be_raw_deflate(self, data: bytes) -> bool:
        """Whether a zlib error is that of a "deflate" body that starts with no zlib header."""
        return self._wbits == _ZLIB and self._received == len(data) and not self._produced

    def _next_member(self) -> None:
        """A gzip body may hold several members, one after the other; deflate only one."""
        if self._wbits != _GZIP:
            raise _UnreadableBodyError("data follows the end of the deflate stream")
        self._inflater = zlib.decompressobj(_GZIP)


def rate_limit_wait(headers: Mapping[str, str], now: float | None = None) -> float:
    """Seconds a 429 asks us to wait: `ratelimit-reset` (epoch seconds, as the reference PDS
    sends), else `retry-after` (seconds or an HTTP date), else one second."""
    now = time.time() if now is None else now
    reset = headers.get("ratelimit-reset", "").strip()
    if reset.isdigit():
        return max(0.0, int(reset) - now)
    retry_after = headers.get("retry-after", "").strip()
    if retry_after.isdigit():
        return float(retry_after)
    if retry_after:
        try:
            return max(0.0, parsedate_to_datetime(retry_after).timestamp() - now)
        except (TypeError, ValueError):
            pass
    return 1.0


def _decode_error(body: bytes) -> _XrpcErrorBody:
    try:
        return msgspec.json.decode(body, type=_XrpcErrorBody)
    except (msgspec.DecodeError, RecursionError):
        return _XrpcErrorBody(message=body[:200].decode("utf-8", "replace") or None)
