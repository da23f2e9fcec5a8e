"""A polite HTTP client for the AT Protocol's XRPC endpoints and DID documents.

Polite (DESIGN section 7): a limit of requests in flight per host, 429 answers honoured
(`ratelimit-reset` or `retry-after`, for every request to that host), exponential backoff
with full jitter on 5xx, 408, timeouts, connection errors and unreadable bodies, and a bounded
number of attempts. Defensive: bodies are bounded in size, redirects are not followed, and
URLs taken from DID documents go through the private-network guard first.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar
from urllib.parse import urlsplit

import httpx
import msgspec

from mirror_assets.config import BackfillLimits
from mirror_assets.net_guard import AddressGuard

log = logging.getLogger(__name__)

T = TypeVar("T")

_WHOLE_ANSWER_TIMEOUTS = 4  # a whole answer may take this many read timeouts


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
            per_host=limits.per_host,
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
    """One `httpx.AsyncClient` shared by every request of a run, with per-host manners."""

    def __init__(
        self,
        politeness: Politeness,
        guard: AddressGuard,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._politeness = politeness
        self._guard = guard
        self._client = httpx.AsyncClient(
            timeout=politeness.timeout_seconds,
            follow_redirects=False,
            transport=transport,
            headers={"user-agent": "atproto-mirror (+https://atproto.com)"},
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._host_ready_at: dict[str, float] = {}  # a 429 pauses the whole host until then

    async def __aenter__(self) -> XrpcClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get(
        self,
        url: str,
        params: Mapping[str, str | int],
        decode: type[T],
        *,
        trusted: bool = False,
    ) -> T:
        """GET `url` and decode its JSON body as `decode`; retries what is worth retrying.

        `trusted` URLs come from the operator's configuration (PLC_URL, RELAY_URL); all
        others come from DID documents and must pass the private-network guard.
        """
        if not trusted:
            await self._guard.check(url)
        host = urlsplit(url).netloc
        politeness = self._politeness
        last_reason = ""
        for attempt in range(politeness.attempts):
            try:
                async with self._slot(host):
                    # After taking the slot: requests queued for it honour a 429 too.
                    await self._wait_for_host(host)
                    body = await self._fetch(url, params, host)
                try:
                    return msgspec.json.decode(body, type=decode)
                except msgspec.DecodeError as error:  # includes msgspec.ValidationError
                    raise _RetryableError(f"unreadable answer: {error}") from None
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

    async def _fetch(self, url: str, params: Mapping[str, str | int], host: str) -> bytes:
        # The client's timeout bounds each read; this bounds the whole answer, so a peer
        # that trickles bytes cannot hold a request for long.
        deadline = _WHOLE_ANSWER_TIMEOUTS * self._politeness.timeout_seconds
        try:
            async with (
                asyncio.timeout(deadline),
                self._client.stream("GET", url, params=params) as response,
            ):
                body = await self._read_bounded(response, url)
        except (httpx.TimeoutException, TimeoutError) as error:
            raise _RetryableError(f"timed out ({type(error).__name__})") from None
        except httpx.TransportError as error:
            raise _RetryableError(f"connection failed ({type(error).__name__}: {error})") from None
        status = response.status_code
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

    async def _read_bounded(self, response: httpx.Response, url: str) -> bytes:
        limit = self._politeness.max_body_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise UnavailableError(f"{url}: answer of {declared} bytes exceeds {limit}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise UnavailableError(f"{url}: answer exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


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
    except msgspec.DecodeError:
        return _XrpcErrorBody(message=body[:200].decode("utf-8", "replace") or None)
