"""A hostile network: a Jetstream and a PDS that send every class of bad input the door knows
(docs/validation.md) between good events. Every ingest and backfill run succeeds, every good
record lands, nothing refused is stored, the cursor stays in range, every API page answers
200, and each run's metadata counts each refusal by reason."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg
from litestar import Litestar
from litestar.testing import TestClient

from mirror_api.app import create_app
from mirror_assets.atproto.events import NETWORK_EPOCH_US
from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.atproto.refusals import Reason
from mirror_assets.config import BackfillLimits, IngestLimits, Settings
from mirror_assets.defs.resources import MirrorResource
from mirror_assets.model.backfills import queue
from mirror_assets.store.file import FileStore
from tests.support.atproto_server import AtprotoStandIn
from tests.support.dagster_helpers import metadata_of, run_backfill_job, run_job
from tests.support.events_factory import (
    BASE_US,
    CARD,
    PAGE,
    SECOND,
    account,
    altered,
    at,
    cid_of,
    create,
    delete,
    did,
    identity,
    numbered_did,
    tid,
    update,
    with_record_text,
)
from tests.support.jetstream_server import JetstreamServer

# A wildcard: names under it must still be NSIDs, whatever a frame says.
TRACKED = "app.blento.*"
ALICE, BOB = did("alice"), did("bob")


def _settings(db: Path, jetstream: str = "ws://127.0.0.1:9", plc: str = "") -> Settings:
    return Settings(
        db_path=db,
        collections=CollectionFilter.parse(TRACKED),
        jetstream_urls=(jetstream,),
        plc_url=plc or "https://plc.directory",
        allow_private_network=True,
        ingest=IngestLimits(idle_seconds=0.5, max_seconds=20),
        backfill=BackfillLimits(http_backoff_seconds=0.01, http_attempts=2),
    )


def _commit(**changes: Any) -> dict[str, Any]:
    """A create that is good but for `changes` (at t=50, so the cursor may pass it)."""
    return altered(create(did("mallory"), "3kbad", rev=50, t=50), **changes)


def _hostile_frames() -> list[tuple[str, Reason, bool]]:
    """(frame, reason it is refused for, whether it carries a time the cursor may pass)."""
    deep = '{"a":' * 5000 + "1" + "}" * 5000
    return [
        (with_record_text(_commit(), deep), Reason.TOO_DEEP, False),
        (json.dumps(_commit(time_us=2**64)), Reason.TIME_OUT_OF_RANGE, False),
        (
            json.dumps(_commit(time_us=int(time.time() * SECOND) + 86_400 * SECOND)),
            Reason.TIME_OUT_OF_RANGE,
            False,
        ),
        (json.dumps(_commit(time_us=-5)), Reason.TIME_OUT_OF_RANGE, False),
        (json.dumps(identity(did("mallory"), None, t=50, seq=2**64)), Reason.INVALID, True),
        (
            with_record_text(_commit(), '{"$type":"app.blento.card","x":1e400}'),
            Reason.RECORD_FLOAT,
            True,
        ),
        (
            with_record_text(_commit(), '{"$type":"app.blento.card","x":1.5}'),
            Reason.RECORD_FLOAT,
            True,
        ),
        (
            with_record_text(_commit(), '{"$type":"app.blento.card","x":99999999999999999999}'),
            Reason.RECORD_INTEGER_RANGE,
            True,
        ),
        (
            with_record_text(_commit(), '{"$type":"app.blento.card","x":"\\ud800"}'),
            Reason.MALFORMED,
            False,
        ),
        (
            with_record_text(_commit(), '{"$type":"app.blento.card","b":{"$bytes":"@@@"}}'),
            Reason.RECORD_BAD_BYTES,
            True,
        ),
        (
            with_record_text(_commit(), '{"$type":"app.blento.card","l":{"$link":"."}}'),
            Reason.RECORD_BAD_LINK,
            True,
        ),
        (with_record_text(_commit(), '{"text":"no $type"}'), Reason.RECORD_BAD_TYPE, True),
        (
            json.dumps(_commit(record={"$type": CARD, "t": "x" * (2 * 1024 * 1024)})),
            Reason.RECORD_TOO_LARGE,
            True,
        ),
        (
            json.dumps(_commit(did="did:key:zQ3shunBKsXixLxKtC5qeSG9E4J5RkGN57im31pcTzbNQnm5w")),
            Reason.INVALID_DID,
            True,
        ),
        (json.dumps(_commit(did="did:plc:" + "a" * 2000)), Reason.INVALID_DID, True),
        (json.dumps(_commit(did="did:web:evil.example%3A6379")), Reason.INVALID_DID, True),
        (json.dumps(_commit(collection="app.blento.\x00card")), Reason.INVALID_COLLECTION, True),
        (
            json.dumps(_commit(collection="app.blento.card/../../../etc")),
            Reason.INVALID_COLLECTION,
            True,
        ),
        (json.dumps(_commit(collection="app.blento..card")), Reason.INVALID_COLLECTION, True),
        (json.dumps(_commit(collection="app.blento.card\u202e")), Reason.INVALID_COLLECTION, True),
        (
            json.dumps(_commit(collection="app.blento." + "c" * 400)),
            Reason.INVALID_COLLECTION,
            True,
        ),
        (json.dumps(_commit(rkey="../x")), Reason.INVALID_RKEY, True),
        (json.dumps(_commit(rev="zzzzzzzzzzzzz")), Reason.INVALID_REV, True),
        (json.dumps(_commit(cid="not a cid")), Reason.INVALID_CID, True),
        ("not json at all", Reason.MALFORMED, False),
        (json.dumps({"kind": "sync", "did": ALICE, "time_us": at(50)}), Reason.UNKNOWN_KIND, True),
    ]


def _good_events() -> list[dict[str, Any]]:
    return [
        create(ALICE, "3kcard1", rev=1, t=1),
        create(ALICE, "3kpage1", rev=2, t=2, collection=PAGE),
        create(BOB, "3kcard2", rev=1, t=3),
        update(ALICE, "3kcard1", rev=3, t=60, text="edited"),
        create(BOB, "3kcard3", rev=2, t=61),
        delete(BOB, "3kcard3", rev=3, t=62),
        identity(BOB, "bob.test", t=63),
        account(ALICE, active=True, t=64),
    ]


def test_a_hostile_stream_stops_no_ingest_and_stores_nothing_it_refuses(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    db = tmp_path / "mirror.duckdb"
    hostile = _hostile_frames()
    with JetstreamServer() as server:
        good = _good_events()
        for event in good[:3]:
            server.add(event)
        for frame, _, _ in hostile:  # between the good events
            server.add_raw(frame, time_us=at(50))
        server.add_raw(b"\x00\x01 a binary frame", time_us=at(50))
        for event in good[3:]:
            server.add(event)
        mirror = MirrorResource.from_settings(_settings(db, server.url))
        first = run_job(mirror, "ingest", instance)
        second = run_job(mirror, "ingest", instance)  # the same frames again, in the rewind

    assert first.success and second.success
    [materialization] = [m for m in first.asset_materializations_for_node("records") if m.metadata]
    metadata = metadata_of(materialization)
    expected = Counter(reason for _, reason, _ in hostile)
    expected[Reason.MALFORMED] += 1  # the binary frame
    refused = {key: value for key, value in metadata.items() if key.startswith("refused_")}
    assert refused == {f"refused_{reason}": n for reason, n in sorted(expected.items())}
    assert metadata["refused"] == len(hostile) + 1
    samples = metadata["refusal_samples"]
    assert set(samples) == {str(reason) for reason in expected}

    with FileStore(db).reading() as con:
        stored = con.execute("SELECT uri FROM record_versions ORDER BY uri").fetchall()
        accounts = {row[0] for row in con.execute("SELECT did FROM accounts").fetchall()}
        cursor = con.execute("SELECT cursor_us FROM ingest_state").fetchall()[0][0]
    assert {uri for (uri,) in stored} == {
        f"at://{ALICE}/{CARD}/3kcard1",
        f"at://{ALICE}/{PAGE}/3kpage1",
        f"at://{BOB}/{CARD}/3kcard2",
        f"at://{BOB}/{CARD}/3kcard3",  # its tombstone
    }
    assert accounts == {ALICE, BOB}  # no account for a refused frame's DID
    assert NETWORK_EPOCH_US <= cursor == at(64) <= time.time_ns() // 1000
    _every_page_answers(db, expected_records=3)


def _every_page_answers(db: Path, expected_records: int) -> None:
    """Every page of every endpoint answers 200, and the pages hold the records."""
    settings = _settings(db)
    with TestClient[Litestar](app=create_app(settings)) as client:
        seen = 0
        for collection in (CARD, PAGE):
            cursor: str | None = None
            while True:
                params = {"limit": "1"} | ({"cursor": cursor} if cursor else {})
                response = client.get(f"/records/{collection}", params=params)
                assert response.status_code == 200, response.text
                body = response.json()
                seen += len(body["records"])
                cursor = body.get("cursor")
                if cursor is None:
                    break
            for path in (f"/users/{collection}", f"/stats/{collection}", "/cursor"):
                assert client.get(path).status_code == 200
    assert seen == expected_records


# -- a hostile PDS ---------------------------------------------------------------------------

BAD_RECORDS: list[tuple[str, str, str, Reason]] = [
    # (rkey, cid, value as sent, reason)
    (
        tid(BASE_US + 10),
        cid_of({"n": 1}),
        '{"$type":"app.blento.card","x":1.5}',
        Reason.RECORD_FLOAT,
    ),
    (
        tid(BASE_US + 11),
        cid_of({"n": 2}),
        '{"$type":"app.blento.card","x":1e400}',
        Reason.RECORD_FLOAT,
    ),
    (
        tid(BASE_US + 12),
        cid_of({"n": 3}),
        '{"$type":"app.blento.card","x":-9223372036854775809}',
        Reason.RECORD_INTEGER_RANGE,
    ),
    (
        tid(BASE_US + 13),
        cid_of({"n": 4}),
        '{"$type":"app.blento.card","x":' + "[" * 40 + "]" * 40 + "}",
        Reason.RECORD_TOO_DEEP,
    ),
    (tid(BASE_US + 14), cid_of({"n": 5}), '["not", "an", "object"]', Reason.RECORD_NOT_OBJECT),
    (
        tid(BASE_US + 15),
        cid_of({"n": 6}),
        '{"$type":"app.blento.card","b":{"$bytes":1}}',
        Reason.RECORD_BAD_BYTES,
    ),
    (
        tid(BASE_US + 16),
        cid_of({"n": 7}),
        '{"$type":"app.blento.card","i":{"$type":"blob"}}',
        Reason.RECORD_BAD_BLOB,
    ),
    (
        tid(BASE_US + 17),
        cid_of({"n": 8}),
        '{"$type":"app.blento.card","":1}',
        Reason.RECORD_BAD_KEY,
    ),
    (tid(BASE_US + 18), "not a cid!", '{"$type":"app.blento.card"}', Reason.INVALID_CID),
    ("a b", cid_of({"n": 9}), '{"$type":"app.blento.card"}', Reason.INVALID_RKEY),
    (
        tid(BASE_US + 19),
        cid_of({"n": 10}),
        '{"$type":"app.blento.card","t":"' + "x" * (2 * 1024 * 1024) + '"}',
        Reason.RECORD_TOO_LARGE,
    ),
]


def test_a_hostile_pds_fails_only_its_own_listings_and_every_good_record_lands(
    tmp_path: Path, instance: dg.DagsterInstance, net: AtprotoStandIn
) -> None:
    good, bad_rev, long_cursor, deep = (numbered_did(n) for n in (1, 2, 3, 4))
    everyone = (good, bad_rev, long_cursor, deep)
    for account_did in everyone:
        net.add_account(account_did, handle="victim.test")  # a handle nobody verified
        net.create_records(account_did, CARD, 150, start_us=BASE_US + 100)
    for rkey, cid, text, _ in BAD_RECORDS:
        net.put_raw_record(good, CARD, rkey, cid, text)
    net.foreign_records(good, CARD, numbered_did(9))
    net.set_rev(bad_rev, "zzzzzzzzzzzzz")  # would sort after every real rev
    net.page_cursor(long_cursor, CARD, "c" * 5000)
    # Nested past what any decoder follows: the whole answer is unreadable, so the listing.
    net.put_raw_record(deep, CARD, tid(BASE_US), cid_of({}), '{"a":' * 5000 + "1" + "}" * 5000)
    db = tmp_path / "mirror.duckdb"
    mirror = MirrorResource.from_settings(_settings(db, plc=net.url))
    with FileStore(db).writing() as tx:
        queue(tx.con, [(d, CARD) for d in everyone])

    result = run_backfill_job(mirror, instance, list(everyone))

    assert result.success
    [observation] = result.asset_observations_for_node("did_backfill")
    metadata = metadata_of(observation)
    expected = Counter(reason for *_, reason in BAD_RECORDS)
    expected[Reason.OTHER_REPO_OR_COLLECTION] += 2  # one per page of the good listing
    expected[Reason.INVALID_REV] += 1
    expected[Reason.INVALID_CURSOR] += 1
    refused = {key: value for key, value in metadata.items() if key.startswith("refused_")}
    assert refused == {f"refused_{reason}": n for reason, n in sorted(expected.items())}
    assert metadata["ended_failed"] == 3  # bad_rev, long_cursor and deep, retried later
    assert "nested too deep" in metadata["errors_sample"][f"{deep} {CARD}"]
    assert set(metadata["refusal_samples"]) == {str(reason) for reason in expected}

    with FileStore(db).reading() as con:
        stored = con.execute("SELECT did, count(*) FROM record_versions GROUP BY did").fetchall()
        statuses = dict(con.execute("SELECT did, status FROM backfills").fetchall())
        handles = con.execute("SELECT handle FROM accounts WHERE handle IS NOT NULL").fetchall()
    # Every good record, nothing refused; `deep`'s first page, before the unreadable one.
    assert dict(stored) == {good: 150, deep: 100}
    assert statuses == {good: "complete", bad_rev: "failed", long_cursor: "failed", deep: "failed"}
    assert handles == []  # `victim.test` does not resolve back to any of them
    _every_page_answers(db, expected_records=250)
