"""An HTTP or HTTPS server on 127.0.0.1 for tests, answering what each test scripts.

Answers are set per path, for any host or for one `Host` name (`answer`), and are sent as
given: status, headers, raw body (so a test can send a gzip bomb with `content-encoding`), after
an optional delay. Paths without an answer get 404. Every request is logged with its `Host`
header, and for HTTPS the server name the client asked for in the TLS handshake (SNI), so a
test can tell whether anything reached the server at all.

With a `trustme` certificate authority (`tls_server_context`, `tls_client_context`) it serves
HTTPS under real host names that a DNS stand-in maps to 127.0.0.1.
"""

from __future__ import annotations

import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

import trustme


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0
    close_delimited: bool = False  # no Content-Length: the body ends when the connection does


@dataclass(frozen=True)
class Seen:
    """One request as the server saw it."""

    host: str  # the Host header, as sent
    path: str  # without the query
    query: str
    headers: dict[str, str]  # names in lower case
    sni: str | None  # the TLS server name; None over plain HTTP or when none was sent


def tls_server_context(authority: trustme.CA, *names: str) -> ssl.SSLContext:
    """A server context with a certificate for `names`, signed by `authority`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(*names).configure_cert(context)
    return context


def tls_client_context(authority: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts `authority` alone, checking host names as usual."""
    context = ssl.create_default_context()
    authority.configure_trust(context)
    return context


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: HttpStandIn

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can be slow; nothing needs it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()  # in the request's thread, not the accepting one
            except (ssl.SSLError, OSError):
                return  # a client that refused the certificate: nothing was requested
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hang up mid-answer on purpose (bounds, timeouts)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        standin = cast(_Server, self.server).standin
        split = urlsplit(self.path)
        host = self.headers.get("host", "")
        sni = standin.sni_of(self.connection)
        headers = {name.lower(): value for name, value in self.headers.items()}
        answer = standin.record(Seen(host, split.path, split.query, headers, sni))
        if answer.delay_seconds:
            time.sleep(answer.delay_seconds)
        self.send_response(answer.status)
        if answer.close_delimited:
            self.send_header("connection", "close")
            self.close_connection = True
        else:
            self.send_header("content-length", str(len(answer.body)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(answer.body)


class HttpStandIn:
    """See the module docstring. `port` 0 takes a free port; `tls` serves HTTPS."""

    def __init__(self, *, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Seen] = []
        self._answers: dict[tuple[str | None, str], Answer] = {}
        self._sni: dict[int, str | None] = {}
        self._lock = threading.Lock()
        if tls is not None:
            tls.sni_callback = self._note_sni
        self._tls = tls
        self._server = _Server(("127.0.0.1", port), _Handler, bind_and_activate=False)
        self._server.allow_reuse_address = True
        self._server.standin = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_port

    @property
    def url(self) -> str:
        """The base URL by address (http only: a certificate names hosts, not 127.0.0.1)."""
        return f"http://127.0.0.1:{self.port}"

    def answer(
        self,
        path: str,
        body: bytes = b"",
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        delay_seconds: float = 0.0,
        close_delimited: bool = False,
        host: str | None = None,
    ) -> None:
        """Answer GET `path` (for the `Host` name `host`, or any) like this from now on."""
        answer = Answer(status, body, dict(headers or {}), delay_seconds, close_delimited)
        with self._lock:
            self._answers[(host, path)] = answer

    def clear(self) -> None:
        """Forget every answer and every request seen (a server shared by several tests)."""
        with self._lock:
            self._answers.clear()
            self.requests.clear()

    def count(self, path: str) -> int:
        with self._lock:
            return sum(1 for seen in self.requests if seen.path == path)

    # -- running ---------------------------------------------------------------------------
    def start(self) -> HttpStandIn:
        self._server.server_bind()
        self._server.server_activate()
        if self._tls is not None:
            self._server.socket = self._tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- called by the handler -------------------------------------------------------------
    def record(self, seen: Seen) -> Answer:
        with self._lock:
            self.requests.append(seen)
            name = seen.host.rsplit(":", 1)[0] if not seen.host.startswith("[") else None
            found = self._answers.get((name, seen.path)) or self._answers.get((None, seen.path))
        return found or Answer(404, b'{"error": "NotFound"}')

    def sni_of(self, connection: Any) -> str | None:
        with self._lock:
            return self._sni.get(id(connection))

    def _note_sni(
        self, connection: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: Any
    ) -> None:
        with self._lock:
            self._sni[id(connection)] = name


@contextmanager
def serving(*, port: int = 0, tls: ssl.SSLContext | None = None) -> Iterator[HttpStandIn]:
    server = HttpStandIn(port=port, tls=tls).start()
    try:
        yield server
    finally:
        server.stop()
