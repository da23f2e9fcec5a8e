"""A relay's `listReposByCollection`, answered from the reference PDS's own repositories.

The reference PDS does not serve `com.atproto.sync.listReposByCollection` itself (it
forwards it to an AppView, which a test network has none of: 502 UpstreamFailure), and
dev-env has no relay. This server answers it the way a relay does, from what the PDS
says now: every active repository (`listRepos`) whose `describeRepo` lists the
collection, in DID order, paged with the last DID as the cursor.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.interop.pds_client import PdsReader

LIST_REPOS_BY_COLLECTION = "/xrpc/com.atproto.sync.listReposByCollection"
DEFAULT_LIMIT = 500


def repos_with(pds: PdsReader, collection: str, cursor: str, limit: int) -> dict[str, Any]:
    """One page of the answer: the DIDs after `cursor` that hold `collection`."""
    dids = sorted(
        repo["did"]
        for repo in pds.list_repos()
        if repo["active"] and repo["did"] > cursor and collection in pds.collections_of(repo["did"])
    )[:limit]
    page: dict[str, Any] = {"repos": [{"did": did} for did in dids]}
    if dids:
        page["cursor"] = dids[-1]
    return page


class RelayStandIn:
    """`with RelayStandIn(pds_url) as relay:`; `relay.url` is the RELAY_URL to use."""

    def __init__(self, pds_url: str) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(pds_url))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> RelayStandIn:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler_for(pds_url: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {key: values[0] for key, values in parse_qs(parts.query).items()}
            if parts.path != LIST_REPOS_BY_COLLECTION or "collection" not in query:
                self._send(HTTPStatus.NOT_FOUND, {"error": "MethodNotImplemented"})
                return
            pds = PdsReader(pds_url)
            try:
                page = repos_with(
                    pds,
                    query["collection"],
                    query.get("cursor", ""),
                    int(query.get("limit", DEFAULT_LIMIT)),
                )
            finally:
                pds.close()
            self._send(HTTPStatus.OK, page)

        def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests read the mirror's state, not this server's log."""

    return Handler
