"""The reference PDS's own XRPC API, as the interop scenarios drive it: accounts and records.

Every write waits until the bridge has turned its commit into Jetstream events, so a
scenario's next step sees a stream that already holds what the PDS did.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import httpx

from tests.interop.jetstream_bridge import JetstreamBridge

ADMIN = ("admin", "admin-pass")  # @atproto/dev-env's admin password
PAGE_LIMIT = 100
TIMEOUT_SECONDS = 30


class XrpcCallError(RuntimeError):
    """The PDS answered an XRPC call with an error."""


@dataclass
class Account:
    did: str
    handle: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class Written:
    """What the PDS answered a record write: the record's URI and CID, and the commit's rev."""

    uri: str
    cid: str
    rev: str


@dataclass(frozen=True)
class ListedRecord:
    uri: str
    cid: str
    value: dict[str, Any]


class PdsReader:
    """The PDS's public queries: what the network holds, to compare the mirror with."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._http = httpx.Client(base_url=url, timeout=TIMEOUT_SECONDS)

    def close(self) -> None:
        self._http.close()

    def query(self, method: str, **params: str | int) -> Any:
        return _answer(method, self._http.get(f"/xrpc/{method}", params=params))

    # -- reads ------------------------------------------------------------------------------
    def list_records(self, did: str, collection: str) -> list[ListedRecord]:
        """Every record of the collection, paged to the end."""
        records: list[ListedRecord] = []
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {
                "repo": did,
                "collection": collection,
                "limit": PAGE_LIMIT,
            }
            if cursor is not None:
                params["cursor"] = cursor
            page = self.query("com.atproto.repo.listRecords", **params)
            records.extend(ListedRecord(r["uri"], r["cid"], r["value"]) for r in page["records"])
            cursor = page.get("cursor")
            if not page["records"] or cursor is None:
                return records

    def list_repos(self) -> list[dict[str, Any]]:
        """Every repository the PDS hosts: did, rev, active, status."""
        repos: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": 1000}
            if cursor is not None:
                params["cursor"] = cursor
            page = self.query("com.atproto.sync.listRepos", **params)
            repos.extend(page["repos"])
            cursor = page.get("cursor")
            if not page["repos"] or cursor is None:
                return repos

    def collections_of(self, did: str) -> list[str]:
        answer = self.query("com.atproto.repo.describeRepo", repo=did)
        return list(answer["collections"])

    def handle_of(self, did: str) -> str:
        answer = self.query("com.atproto.repo.describeRepo", repo=did)
        return str(answer["handle"])


class PdsClient(PdsReader):
    """Writes through the PDS's XRPC API, each awaited on the bridge's stream."""

    def __init__(self, url: str, bridge: JetstreamBridge) -> None:
        super().__init__(url)
        self._bridge = bridge
        self._names = itertools.count()

    def call(self, method: str, body: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """A procedure (POST); a JSON body only when given, as some procedures take none."""
        return _answer(method, self._http.post(f"/xrpc/{method}", json=body, **kwargs))

    # -- accounts ---------------------------------------------------------------------------
    def create_account(self, name: str) -> Account:
        """A new account with a unique handle `{name}{n}.test`."""
        handle = f"{name}{next(self._names)}.test"
        answer = self.call(
            "com.atproto.server.createAccount",
            {"handle": handle, "email": f"{handle}@example.com", "password": "interop-pass"},
        )
        account = Account(answer["did"], handle, answer["accessJwt"])
        self._bridge.wait_for_event(account.did, "account", since=0)
        return account

    def update_handle(self, account: Account, name: str) -> None:
        handle = f"{name}{next(self._names)}.test"
        since = self._bridge.event_count()
        self.call("com.atproto.identity.updateHandle", {"handle": handle}, headers=account.auth)
        account.handle = handle
        self._bridge.wait_for_event(account.did, "identity", since)

    def deactivate(self, account: Account) -> None:
        since = self._bridge.event_count()
        self.call("com.atproto.server.deactivateAccount", {}, headers=account.auth)
        self._bridge.wait_for_event(account.did, "account", since)

    def activate(self, account: Account) -> None:
        since = self._bridge.event_count()
        self.call("com.atproto.server.activateAccount", headers=account.auth)
        self._bridge.wait_for_event(account.did, "account", since)

    def delete_account(self, account: Account) -> None:
        """Deleted by the admin: a user's own deletion needs a token sent by email."""
        since = self._bridge.event_count()
        self.call("com.atproto.admin.deleteAccount", {"did": account.did}, auth=ADMIN)
        self._bridge.wait_for_event(account.did, "account", since)

    # -- records ----------------------------------------------------------------------------
    def create(
        self, account: Account, collection: str, record: dict[str, Any], rkey: str | None = None
    ) -> Written:
        body: dict[str, Any] = {"repo": account.did, "collection": collection, "record": record}
        if rkey is not None:
            body["rkey"] = rkey
        return self._write(account, "com.atproto.repo.createRecord", body)

    def put(self, account: Account, collection: str, rkey: str, record: dict[str, Any]) -> Written:
        body = {"repo": account.did, "collection": collection, "rkey": rkey, "record": record}
        return self._write(account, "com.atproto.repo.putRecord", body)

    def delete(self, account: Account, collection: str, rkey: str) -> str:
        """Delete a record; the commit's rev."""
        body = {"repo": account.did, "collection": collection, "rkey": rkey}
        answer = self.call("com.atproto.repo.deleteRecord", body, headers=account.auth)
        rev: str = answer["commit"]["rev"]
        self._bridge.wait_for_rev(account.did, rev)
        return rev

    def apply_writes(self, account: Account, writes: list[dict[str, Any]]) -> str:
        """Several creates, updates and deletes in one commit; the commit's rev."""
        body = {"repo": account.did, "writes": writes, "validate": False}
        answer = self.call("com.atproto.repo.applyWrites", body, headers=account.auth)
        rev: str = answer["commit"]["rev"]
        self._bridge.wait_for_rev(account.did, rev)
        return rev

    def _write(self, account: Account, method: str, body: dict[str, Any]) -> Written:
        # Records of the scenarios' own collections are not in the PDS's lexicons.
        answer = self.call(method, {**body, "validate": False}, headers=account.auth)
        written = Written(answer["uri"], answer["cid"], answer["commit"]["rev"])
        self._bridge.wait_for_rev(account.did, written.rev)
        return written


def _answer(method: str, response: httpx.Response) -> Any:
    if response.status_code != 200:
        raise XrpcCallError(f"{method}: {response.status_code} {response.text}")
    return response.json() if response.content else None
