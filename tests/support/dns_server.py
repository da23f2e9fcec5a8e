"""A DNS server on 127.0.0.1 for tests: real UDP, answers built with dnspython's message API.

It answers A, AAAA and TXT questions from records a test sets (`set`; records go out in the
order given), NXDOMAIN for names it has none for, and an empty answer (NOERROR) for a type a
known name lacks. A record set can change from one answer to the next (`sequence`: the first
query gets the first list, the second the second, and the last list stays), which is how a
test plays DNS rebinding. Names listed with `silence` get no answer at all, as from a name
server that is down. Every question is logged in `queries`, in order.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TTL = 1


def _key(name: str) -> str:
    return name.lower().rstrip(".")


class DnsStandIn:
    """A UDP name server on a random port of 127.0.0.1; see the module docstring."""

    def __init__(self) -> None:
        self.queries: list[tuple[str, str]] = []  # (name, type) of every question
        self._records: dict[tuple[str, str], list[list[str]]] = {}
        self._silent: set[str] = set()
        self._lock = threading.Lock()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def server(self) -> str:
        """The `host:port` entry for DNS_SERVERS (Settings.dns_servers)."""
        host, port = self._socket.getsockname()
        return f"{host}:{port}"

    # -- records ---------------------------------------------------------------------------
    def set(self, name: str, rdtype: str, *values: str) -> None:
        """`name` answers `rdtype` with `values` (TXT values as plain text), from now on."""
        self.sequence(name, rdtype, list(values))

    def sequence(self, name: str, rdtype: str, *answers: list[str]) -> None:
        """Each query of `name` and `rdtype` takes the next list; the last one stays."""
        with self._lock:
            self._records[(_key(name), rdtype.upper())] = [list(values) for values in answers]

    def silence(self, name: str) -> None:
        """Questions about `name` are read and never answered."""
        with self._lock:
            self._silent.add(_key(name))

    def count(self, name: str, rdtype: str) -> int:
        with self._lock:
            return self.queries.count((_key(name), rdtype.upper()))

    # -- running ---------------------------------------------------------------------------
    def start(self) -> DnsStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, client = self._socket.recvfrom(65535)
            except TimeoutError:
                continue
            answer = self._answer(wire)
            if answer is not None:
                self._socket.sendto(answer, client)

    def _answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        for question in query.question:
            name, rdtype = _key(question.name.to_text()), dns.rdatatype.to_text(question.rdtype)
            values = self._take(name, rdtype)
            if values is None and self._is_silent(name):
                return None
            if values is None and not self._knows(name):
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif values:
                response.answer.append(_rrset(question.name, rdtype, values))
        return response.to_wire(want_shuffle=False)  # in the order set: tests rely on it

    def _take(self, name: str, rdtype: str) -> list[str] | None:
        with self._lock:
            self.queries.append((name, rdtype))
            answers = self._records.get((name, rdtype))
            if answers is None:
                return None
            return answers.pop(0) if len(answers) > 1 else answers[0]

    def _knows(self, name: str) -> bool:
        with self._lock:
            return any(known == name for known, _ in self._records)

    def _is_silent(self, name: str) -> bool:
        with self._lock:
            return name in self._silent


def _rrset(name: dns.name.Name, rdtype: str, values: Sequence[str]) -> dns.rrset.RRset:
    if rdtype == "TXT":
        values = ['"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values]
    return dns.rrset.from_text_list(name, TTL, dns.rdataclass.IN, rdtype, list(values))


@contextmanager
def running_dns() -> Iterator[DnsStandIn]:
    server = DnsStandIn().start()
    try:
        yield server
    finally:
        server.stop()
