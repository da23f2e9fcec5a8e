"""A PLC directory, a PDS and a relay on 127.0.0.1 for tests: real HTTP, reference-PDS semantics.

One `ThreadingHTTPServer` in a daemon thread answers all three, so a backfill can be pointed at
`url` for the PLC directory, the relay and (through the DID documents) the PDS. Repos are read at
each request, so a test that changes a repo between two `listRecords` pages sees what a client
of a live PDS would see. Faults (`fail`, `delay`, `malformed`) are queued per endpoint and used
up by the next matching requests, in the order they were queued; quirks (`repeat_cursor`,
`foreign_records`, `oversize_pages`) stick to a (DID, collection) for the server's lifetime.

Endpoint names, as used by the faults and `count`: the XRPC method name for `/xrpc/...`, `"plc"`
for `GET /{did}` and `"web"` for `GET /.well-known/did.json`.

Revs come from one server-wide microsecond clock starting at `REV_START_US` (a day after
`BASE_US`, so after the records `create_records` makes and after the `rev_tid(n)` revs of
Jetstream test events); `new_rev()` hands out a rev later than any served so far.
"""

from __future__ import annotations

import copy
import hashlib
import json
import socketserver
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, cast
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec

from tests.support.events_factory import BASE_US, SECOND, cid_of, tid

LIST_RECORDS = "com.atproto.repo.listRecords"
GET_LATEST_COMMIT = "com.atproto.sync.getLatestCommit"
LIST_REPOS_BY_COLLECTION = "com.atproto.sync.listReposByCollection"
RESOLVE_HANDLE = "com.atproto.identity.resolveHandle"
PLC = "plc"
WEB = "web"

REV_START_US = BASE_US + 86_400 * SECOND
DID_CONTEXT = [
    "https://www.w3.org/ns/did/v1",
    "https://w3id.org/security/multikey/v1",
    "https://w3id.org/security/suites/secp256k1-2019/v1",
]
MALFORMED_BODY = b'{"records": [{"uri": "at://'  # cut off mid-document: not JSON

Record = tuple[str, "dict[str, Any] | RawJSON"]  # (cid, value)


class Commit(msgspec.Struct):
    """A getLatestCommit answer, as the tests of the XRPC client read it."""

    cid: str
    rev: str


@dataclass(frozen=True)
class RawJSON:
    """A record value served as these exact characters, whatever they hold (a hostile PDS)."""

    text: str


@dataclass
class _Repo:
    handle: str | None
    pds_url: str | None  # None: this server
    rev: str
    status: str | None = None
    collections: dict[str, dict[str, Record]] = field(default_factory=dict)


@dataclass
class _Fault:
    kind: Literal["fail", "delay", "malformed"]
    remaining: int
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    seconds: float = 0.0


@dataclass
class _Hold:
    remaining: int  # pages still let through before requests block
    release: threading.Event


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json; charset=utf-8"


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps(payload).encode(), dict(headers or {}))


def _xrpc_error(status: int, error: str, message: str) -> _Reply:
    return _json(status, {"error": error, "message": message})


_ERROR_NAMES = {
    400: "InvalidRequest",
    401: "AuthenticationRequired",
    403: "Forbidden",
    404: "NotFound",
    429: "RateLimitExceeded",
    500: "InternalServerError",
    501: "MethodNotImplemented",
    502: "UpstreamFailure",
    503: "NotEnoughResources",
    504: "UpstreamTimeout",
}


def iso_of_us(time_us: int) -> str:
    """The `createdAt` string of a moment: millisecond precision, `Z`, like the Bluesky app."""
    moment = datetime.fromtimestamp(time_us // SECOND, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{time_us % SECOND // 1000:03d}Z"


def endpoint_of(path: str) -> str:
    """The name a request is counted and faulted under (see the module docstring)."""
    if path.startswith("/xrpc/"):
        return path.removeprefix("/xrpc/")
    if path.startswith("/did:") and "/" not in path[1:]:
        return PLC
    if path == "/.well-known/did.json":
        return WEB
    return path


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a burst of concurrent clients must not overflow the backlog
    standin: AtprotoStandIn

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can be slow; nothing needs it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout, killed process) is routine here; anything else is a bug.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real services; every reply has a length
    disable_nagle_algorithm = True  # headers and body go out separately: no 40 ms delayed-ACK wait

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        standin = cast(_Server, self.server).standin
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        standin._begin(path, query)
        try:
            reply = standin._answer(endpoint_of(path), path, query)
        finally:
            # Counted out before the answer leaves: once the client has it, it may send its
            # next request before this thread would run again.
            standin._end()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except ConnectionError:
            self.close_connection = True


class AtprotoStandIn:
    """PLC directory + PDS + relay on one loopback port. See the module docstring."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.max_in_flight = 0
        self.latency_seconds = 0.0  # every answer waits this long (a PDS across a network)
        self.clock_us = REV_START_US - 1  # the time of the last rev handed out
        self._in_flight = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._repos: dict[str, _Repo] = {}
        self._tombstoned: set[str] = set()
        self._documents: dict[str, bytes] = {}
        self._web_document: bytes | None = None
        self._faults: dict[str, list[_Fault]] = {}
        self._repeat_cursor: set[tuple[str, str]] = set()
        self._foreign: dict[tuple[str, str], str] = {}
        self._oversize: set[tuple[str, str]] = set()
        self._page_cursor: dict[tuple[str, str], str] = {}
        self._hold: _Hold | None = None
        self._page_size = 500
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- running ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stand-in is not started")
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> AtprotoStandIn:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.standin = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        with self._lock:
            if self._hold is not None:
                self._hold.release.set()  # let held handlers finish rather than hang
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> AtprotoStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- repos (the PDS) -----------------------------------------------------------------
    def new_rev(self) -> str:
        """A rev later than every rev handed out so far (for Jetstream events after a backfill)."""
        with self._lock:
            return self._tick()

    def add_account(self, did: str, handle: str | None = None, pds_url: str | None = None) -> None:
        """Register `did` with PLC (its PDS: `pds_url`, default this server) with an empty repo."""
        with self._lock:
            self._repos[did] = _Repo(handle, pds_url, self._tick())

    def put_record(self, did: str, collection: str, rkey: str, value: dict[str, Any]) -> str:
        """Create or replace a record in one commit; returns its CID."""
        stored = copy.deepcopy(value)
        cid = cid_of(stored)
        with self._lock:
            repo = self._repo(did)
            repo.collections.setdefault(collection, {})[rkey] = (cid, stored)
            repo.rev = self._tick()
        return cid

    def create_records(
        self, did: str, collection: str, count: int, start_us: int = BASE_US
    ) -> list[str]:
        """`count` records with TID rkeys from `start_us` on, in one commit; returns the rkeys.

        Two batches in one collection need different `start_us`, or the second overwrites.
        """
        rkeys: list[str] = []
        with self._lock:
            repo = self._repo(did)
            records = repo.collections.setdefault(collection, {})
            for i in range(count):
                rkey = tid(start_us + i)
                value = {
                    "$type": collection,
                    "text": f"record {i}",
                    "createdAt": iso_of_us(start_us + i),
                }
                records[rkey] = (cid_of(value), value)
                rkeys.append(rkey)
            repo.rev = self._tick()
        return rkeys

    def put_raw_record(self, did: str, collection: str, rkey: str, cid: str, text: str) -> None:
        """Serve `text` as the value of a record, character for character, valid or not."""
        with self._lock:
            repo = self._repo(did)
            repo.collections.setdefault(collection, {})[rkey] = (cid, RawJSON(text))
            repo.rev = self._tick()

    def set_rev(self, did: str, rev: str) -> None:
        """getLatestCommit answers this rev (anything) until the next commit."""
        with self._lock:
            self._repo(did).rev = rev

    def page_cursor(self, did: str, collection: str, cursor: str) -> None:
        """listRecords pages of the listing carry this cursor (of any length)."""
        with self._lock:
            self._page_cursor[(did, collection)] = cursor

    def delete_record(self, did: str, collection: str, rkey: str) -> None:
        """Delete a record in one commit; a record that is not there is a test bug (KeyError)."""
        with self._lock:
            repo = self._repo(did)
            del repo.collections.get(collection, {})[rkey]
            if not repo.collections[collection]:
                del repo.collections[collection]
            repo.rev = self._tick()

    def rev(self, did: str) -> str:
        with self._lock:
            return self._repo(did).rev

    def records(self, did: str, collection: str) -> dict[str, tuple[str, dict[str, Any]]]:
        """The current records of a collection: rkey -> (cid, value), copies (raw values, put
        with `put_raw_record`, are left out)."""
        with self._lock:
            records = self._repo(did).collections.get(collection, {})
            return {
                rkey: (cid, copy.deepcopy(value))
                for rkey, (cid, value) in records.items()
                if not isinstance(value, RawJSON)
            }

    def set_repo_status(self, did: str, status: str | None) -> None:
        """None (active), "takendown", "deactivated"; the repo's records are kept meanwhile."""
        with self._lock:
            self._repo(did).status = status

    def tombstone_did(self, did: str) -> None:
        """PLC answers 410 for `did` from now on (until `set_did_document`)."""
        with self._lock:
            self._tombstoned.add(did)

    def set_did_document(self, did: str, doc: dict[str, Any] | bytes) -> None:
        """Serve exactly this document for `did` from PLC (bytes: the raw body, valid or not)."""
        with self._lock:
            self._documents[did] = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
            self._tombstoned.discard(did)

    def set_web_document(self, doc: dict[str, Any] | bytes) -> None:
        """Serve this at `GET /.well-known/did.json` (a did:web document); 404 until set."""
        with self._lock:
            self._web_document = doc if isinstance(doc, bytes) else json.dumps(doc).encode()

    # -- faults and quirks ---------------------------------------------------------------
    def fail(
        self,
        endpoint: str,
        status: int,
        times: int = 1,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> None:
        """Answer the next `times` requests to `endpoint` with `status` (default body: the
        XRPC error JSON for that status, or PLC's `{"message": ...}`)."""
        self._queue(endpoint, _Fault("fail", times, status, dict(headers or {}), body))

    def delay(self, endpoint: str, seconds: float, times: int = 1) -> None:
        """Sleep before answering the next `times` requests (normally, once awake)."""
        self._queue(endpoint, _Fault("delay", times, seconds=seconds))

    def malformed(self, endpoint: str, times: int = 1) -> None:
        """Answer the next `times` requests with 200 and a body that is not JSON."""
        self._queue(endpoint, _Fault("malformed", times))

    def repeat_cursor(self, did: str, collection: str) -> None:
        """listRecords ignores `cursor` here: always the first page, so always the same cursor."""
        with self._lock:
            self._repeat_cursor.add((did, collection))

    def foreign_records(self, did: str, collection: str, other_did: str) -> None:
        """Each non-empty page starts with a copy of its first record under `other_did`'s URI.

        It takes one place of the page, so pages stay within `limit` and every genuine record is
        still listed exactly once.
        """
        with self._lock:
            self._foreign[(did, collection)] = other_did

    def oversize_pages(self, did: str, collection: str) -> None:
        """Pages hold `limit + 5` records (the cursor still being the last rkey of the page)."""
        with self._lock:
            self._oversize.add((did, collection))

    def hold_list_records(self, after_pages: int) -> threading.Event:
        """After `after_pages` more listRecords pages, block listRecords until the Event is set.

        Only answered pages count (not faulted or refused requests). Replaces an earlier hold;
        `stop()` sets the Event.
        """
        release = threading.Event()
        with self._lock:
            self._hold = _Hold(after_pages, release)
        return release

    # -- observation ---------------------------------------------------------------------
    def count(self, endpoint: str) -> int:
        with self._lock:
            return sum(1 for path, _ in self.requests if endpoint_of(path) == endpoint)

    # -- relay ---------------------------------------------------------------------------
    def list_repos_page_size(self, n: int) -> None:
        """The relay's own cap on listReposByCollection pages (default 500)."""
        with self._lock:
            self._page_size = n

    # -- internals -----------------------------------------------------------------------
    def _tick(self) -> str:
        self.clock_us += 1
        return tid(self.clock_us)

    def _repo(self, did: str) -> _Repo:
        try:
            return self._repos[did]
        except KeyError:
            raise KeyError(f"no account {did}; add_account first") from None

    def _queue(self, endpoint: str, fault: _Fault) -> None:
        with self._lock:
            self._faults.setdefault(endpoint, []).append(fault)

    def _take_fault(self, endpoint: str) -> _Fault | None:
        with self._lock:
            queue = self._faults.get(endpoint)
            if not queue:
                return None
            fault = queue[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                queue.pop(0)
            return fault

    def _begin(self, path: str, query: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((path, query))
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _pass_hold(self) -> _Hold | None:
        """Wait at the hold, if any; returns the hold whose page slot this request took."""
        with self._changed:
            while True:
                hold = self._hold
                if hold is None or hold.release.is_set():
                    return None
                if hold.remaining > 0:
                    hold.remaining -= 1
                    return hold
                self._changed.wait(timeout=0.02)  # Event.set() does not notify: poll it

    def _give_back(self, hold: _Hold | None) -> None:
        if hold is None:
            return
        with self._changed:
            hold.remaining += 1
            self._changed.notify_all()

    def _answer(self, endpoint: str, path: str, query: dict[str, str]) -> _Reply:
        if self.latency_seconds:
            time.sleep(self.latency_seconds)
        hold = self._pass_hold() if endpoint == LIST_RECORDS else None
        fault = self._take_fault(endpoint)
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)
            fault = None
        if fault is not None:
            self._give_back(hold)
            if fault.kind == "malformed":
                return _Reply(200, MALFORMED_BODY)
            if fault.body is not None:
                return _Reply(fault.status, fault.body, fault.headers)
            if endpoint in (PLC, WEB):
                return _json(fault.status, {"message": "injected failure"}, fault.headers)
            error = _ERROR_NAMES.get(fault.status, "Error")
            return _json(
                fault.status, {"error": error, "message": "injected failure"}, fault.headers
            )
        reply = self._route(endpoint, path, query)
        if reply.status != 200:
            self._give_back(hold)
        return reply

    def _route(self, endpoint: str, path: str, query: dict[str, str]) -> _Reply:
        if endpoint == LIST_RECORDS:
            return self._list_records(query)
        if endpoint == GET_LATEST_COMMIT:
            return self._get_latest_commit(query)
        if endpoint == LIST_REPOS_BY_COLLECTION:
            return self._list_repos_by_collection(query)
        if endpoint == RESOLVE_HANDLE:
            return self._resolve_handle(query)
        if endpoint == PLC:
            return self._plc(path[1:])
        if endpoint == WEB:
            with self._lock:
                document = self._web_document
            if document is None:
                return _json(404, {"message": "no did:web document"})
            return _Reply(200, document)
        return _xrpc_error(404, "NotFound", f"no such path: {path}")

    def _available(self, actor: str) -> tuple[str, _Repo] | _Reply:
        """The repo for a DID or handle, or the reference PDS's error for it (lock held)."""
        did = actor
        if not actor.startswith("did:"):
            did = next((d for d, r in self._repos.items() if r.handle == actor), actor)
        repo = self._repos.get(did)
        if repo is None:
            return _xrpc_error(400, "RepoNotFound", f"Could not find repo for DID: {actor}")
        if repo.status == "takendown":
            return _xrpc_error(400, "RepoTakendown", f"Repo has been takendown: {did}")
        if repo.status is not None:
            error = "Repo" + repo.status.capitalize()
            return _xrpc_error(400, error, f"Repo has been {repo.status}: {did}")
        return did, repo

    def _list_records(self, query: dict[str, str]) -> _Reply:
        missing = _missing(query, "repo", "collection")
        if missing is not None:
            return missing
        limit = _limit(query, default=50, maximum=100)
        if isinstance(limit, _Reply):
            return limit
        collection, cursor = query["collection"], query.get("cursor")
        reverse = query.get("reverse") == "true"
        with self._lock:
            found = self._available(query["repo"])
            if isinstance(found, _Reply):
                return found
            did, repo = found
            key = (did, collection)
            rows = sorted(repo.collections.get(collection, {}).items(), reverse=not reverse)
            if cursor and key not in self._repeat_cursor:
                rows = [r for r in rows if (r[0] > cursor if reverse else r[0] < cursor)]
            size = limit + 5 if key in self._oversize else limit
            other_did = self._foreign.get(key)
            if other_did is not None and size > 1:
                size -= 1
            page = rows[:size]
            records = [
                {"uri": f"at://{did}/{collection}/{rkey}", "cid": cid, "value": value}
                for rkey, (cid, value) in page
            ]
            if other_did is not None and page:
                rkey, (cid, value) = page[0]
                foreign = {
                    "uri": f"at://{other_did}/{collection}/{rkey}",
                    "cid": cid,
                    "value": value,
                }
                records.insert(0, foreign)
            next_cursor = self._page_cursor.get(key, page[-1][0]) if page else None
            return _Reply(200, _records_body(records, next_cursor))

    def _get_latest_commit(self, query: dict[str, str]) -> _Reply:
        missing = _missing(query, "did")
        if missing is not None:
            return missing
        with self._lock:
            found = self._available(query["did"])
            if isinstance(found, _Reply):
                return found
            did, repo = found
            digest = hashlib.sha256(f"{did} {repo.rev}".encode()).hexdigest()
            return _json(200, {"cid": "bafyrei" + digest[:40], "rev": repo.rev})

    def _resolve_handle(self, query: dict[str, str]) -> _Reply:
        """The DID of an account's handle, as a PDS (or an AppView) answers it."""
        missing = _missing(query, "handle")
        if missing is not None:
            return missing
        handle = query["handle"].lower()
        with self._lock:
            did = next((d for d, r in self._repos.items() if r.handle == handle), None)
        if did is None:
            return _xrpc_error(400, "InvalidRequest", "Unable to resolve handle")
        return _json(200, {"did": did})

    def _list_repos_by_collection(self, query: dict[str, str]) -> _Reply:
        """Every account with a record of the collection (whatever its status: the relay does not
        know), by DID; `cursor` is omitted when nothing is left after the page."""
        missing = _missing(query, "collection")
        if missing is not None:
            return missing
        limit = _limit(query, default=500, maximum=2000)
        if isinstance(limit, _Reply):
            return limit
        collection, cursor = query["collection"], query.get("cursor")
        with self._lock:
            dids = sorted(d for d, r in self._repos.items() if r.collections.get(collection))
            size = min(limit, self._page_size)
        if cursor:
            dids = [d for d in dids if d > cursor]
        page = dids[:size]
        payload: dict[str, Any] = {"repos": [{"did": d} for d in page]}
        if len(dids) > len(page):
            payload["cursor"] = page[-1]
        return _json(200, payload)

    def _plc(self, did: str) -> _Reply:
        with self._lock:
            if did in self._tombstoned:
                return _json(410, {"message": f"DID not available: {did}"})
            if did in self._documents:
                return _Reply(200, self._documents[did], content_type="application/did+ld+json")
            repo = self._repos.get(did)
            if repo is None:
                return _json(404, {"message": f"DID not registered: {did}"})
            document = {
                "@context": DID_CONTEXT,
                "id": did,
                "alsoKnownAs": [f"at://{repo.handle}"] if repo.handle else [],
                "verificationMethod": [],
                "service": [
                    {
                        "id": "#atproto_pds",
                        "type": "AtprotoPersonalDataServer",
                        "serviceEndpoint": repo.pds_url or self.url,
                    }
                ],
            }
        body = json.dumps(document).encode()
        return _Reply(200, body, content_type="application/did+ld+json")


def _records_body(records: list[dict[str, Any]], cursor: str | None) -> bytes:
    """A listRecords body; a `RawJSON` value goes in as its own characters."""
    items = ",".join(_listed_record(record) for record in records)
    tail = "" if cursor is None else ',"cursor":' + json.dumps(cursor)
    return ('{"records":[' + items + "]" + tail + "}").encode()


def _listed_record(record: dict[str, Any]) -> str:
    value = record["value"]
    text = value.text if isinstance(value, RawJSON) else json.dumps(value)
    return f'{{"uri":{json.dumps(record["uri"])},"cid":{json.dumps(record["cid"])},"value":{text}}}'


def _missing(query: dict[str, str], *names: str) -> _Reply | None:
    for name in names:
        if not query.get(name):
            return _xrpc_error(400, "InvalidRequest", f'Params must have the property "{name}"')
    return None


def _limit(query: dict[str, str], *, default: int, maximum: int) -> int | _Reply:
    """The `limit` parameter as the lexicon has it: an integer in 1..maximum."""
    raw = query.get("limit")
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        return _xrpc_error(400, "InvalidRequest", "limit must be an integer")
    if not 1 <= limit <= maximum:
        return _xrpc_error(
            400, "InvalidRequest", f"limit can not be less than 1 or greater than {maximum}"
        )
    return limit
