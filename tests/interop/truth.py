"""The network's truth and the mirror's, side by side: every record, every count.

The truth is what the reference PDS answers now: for every active repository it hosts and
every tracked collection, `listRecords` to the end. Deactivated repositories answer no
records (and the mirror hides theirs); deleted ones are gone from `listRepos`. The mirror
is read twice: its `records` view in the DuckDB file, and its API (`/records` walked to
the end, per collection and per DID, `/users`, `/stats`). Any record missing, extra or
different (URI, CID, record JSON), or any count that disagrees, fails the check with a
list of the differences.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Litestar
from litestar.testing import TestClient

from mirror_api.app import create_app
from mirror_assets.config import Settings
from mirror_assets.store.file import FileStore
from tests.interop.pds_client import PdsReader

SHOWN_DIFFERENCES = 20
PAGE_SIZE = 100
MAX_PAGES = 1_000


@dataclass(frozen=True)
class Record:
    did: str
    collection: str
    rkey: str
    cid: str
    value: dict[str, Any]


State = dict[str, Record]  # by AT URI


def network_state(pds: PdsReader, collections: Iterable[str]) -> State:
    """Every record of the tracked collections in every active repository of the PDS."""
    state: State = {}
    for repo in pds.list_repos():
        if not repo["active"]:
            continue
        for collection in collections:
            for listed in pds.list_records(repo["did"], collection):
                did, found_collection, rkey = listed.uri.removeprefix("at://").split("/")
                assert (did, found_collection) == (repo["did"], collection), listed.uri
                state[listed.uri] = Record(did, collection, rkey, listed.cid, listed.value)
    return state


def file_state(db_path: Path) -> State:
    """The `records` view of the mirror's file: the live records of visible accounts."""
    with FileStore(db_path).reading() as con:
        rows = con.execute("SELECT uri, did, collection, rkey, cid, record FROM records").fetchall()
    return {
        uri: Record(did, collection, rkey, cid, json.loads(record))
        for uri, did, collection, rkey, cid, record in rows
    }


def walk(client: TestClient[Litestar], path: str, key: str, **params: str) -> list[dict[str, Any]]:
    """Every item of an endpoint, following `cursor` from the first page to the last."""
    items: list[dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        response = client.get(path, params={**params, "limit": str(PAGE_SIZE)})
        assert response.status_code == 200, f"{path} {params}: {response.text}"
        body = response.json()
        items.extend(body[key])
        if "cursor" not in body:
            return items
        params = {**params, "cursor": body["cursor"]}
    raise AssertionError(f"{path} {params}: more than {MAX_PAGES} pages")


def api_records(
    client: TestClient[Litestar], collection: str, **params: str
) -> tuple[State, list[int]]:
    """Every record `/records/{collection}` pages through, and their `time_us` in page order."""
    path = f"/records/{collection}"
    items = walk(client, path, "records", **params)
    state: State = {}
    for item in items:
        assert item["uri"] not in state, f"{path} {params} served {item['uri']} twice"
        state[item["uri"]] = Record(
            item["did"], item["collection"], item["rkey"], item["cid"], item["record"]
        )
    return state, [item["time_us"] for item in items]


def differences(expected: State, actual: State) -> list[str]:
    """Each URI missing, extra or different, one line each."""
    lines = [f"missing {uri}" for uri in sorted(expected.keys() - actual.keys())]
    lines += [f"extra {uri}: {actual[uri]}" for uri in sorted(actual.keys() - expected.keys())]
    for uri in sorted(expected.keys() & actual.keys()):
        if expected[uri] != actual[uri]:
            lines.append(f"different {uri}: network {expected[uri]} mirror {actual[uri]}")
    return lines


def assert_same(expected: State, actual: State, where: str) -> None:
    found = differences(expected, actual)
    shown = "\n".join(found[:SHOWN_DIFFERENCES])
    assert not found, f"{where}: {len(found)} differences with the network:\n{shown}"


def assert_mirror_equals_network(pds: PdsReader, settings: Settings) -> State:
    """The full check: the file and every API answer against the PDS; returns the truth."""
    collections = settings.collections.patterns
    truth = network_state(pds, collections)
    assert_same(truth, file_state(settings.db_path), "the records view")
    with TestClient(app=create_app(settings)) as client:
        for collection in collections:
            in_collection = {u: r for u, r in truth.items() if r.collection == collection}
            assert_api_agrees(client, collection, in_collection)
    return truth


def assert_api_agrees(client: TestClient[Litestar], collection: str, truth: State) -> None:
    served, times = api_records(client, collection)
    assert_same(truth, served, f"/records/{collection}")
    assert times == sorted(times, reverse=True), f"/records/{collection} is not newest first"
    counts = Counter(record.did for record in truth.values())
    for did, count in counts.items():
        by_did, _ = api_records(client, collection, did=did)
        assert_same({u: r for u, r in truth.items() if r.did == did}, by_did, f"?did={did}")
        assert len(by_did) == count
    users = walk(client, f"/users/{collection}", "users")
    assert {user["did"]: user["record_count"] for user in users} == dict(counts), (
        f"/users/{collection} disagrees with the network"
    )
    stats = client.get(f"/stats/{collection}").json()
    assert stats == {
        "collection": collection,
        "unique_users": len(counts),
        "total_records": len(truth),
        "last_record_time_us": max(times) if times else None,
    }, f"/stats/{collection} disagrees with the network"
