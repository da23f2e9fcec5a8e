"""A collection removed from COLLECTIONS and added back between runs, as docs/operations.md
tells it: ingest stops asking for it, the API refuses it, the integrity check names it until
`mirror purge` removes it; added back, discovery and backfill bring its history in again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from litestar.testing import TestClient

from mirror_api.app import create_app
from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.config import BackfillLimits, IngestLimits, Settings
from mirror_assets.defs.resources import MirrorResource
from mirror_assets.runs.backfill import run_backfill
from mirror_assets.runs.discovery import never_completed, run_discovery
from mirror_assets.store.file import FileStore
from tests.support.atproto_server import AtprotoStandIn
from tests.support.cli_helpers import mirror
from tests.support.dagster_helpers import metadata_of, run_job
from tests.support.events_factory import CARD, PAGE, create, numbered_did, record_body
from tests.support.jetstream_server import JetstreamServer

ALICE, BOB = numbered_did(1), numbered_did(2)


def _settings(db: Path, collections: str, net: AtprotoStandIn, jetstream: str = "") -> Settings:
    return Settings(
        collections=CollectionFilter.parse(collections),
        jetstream_urls=(jetstream or "ws://127.0.0.1:9",),
        ingest=IngestLimits(idle_seconds=0.5),
        db_path=db,
        plc_url=net.url,
        relay_url=net.url,
        allow_private_network=True,
        dagster_url="http://127.0.0.1:9",  # no Dagster: `?did=` is not asked for here
        backfill=BackfillLimits(http_backoff_seconds=0.01),
    )


def _run(job: str, settings: Settings, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return run_job(MirrorResource.from_settings(settings), job, instance)


def _uris(db: Path) -> list[str]:
    with FileStore(db).reading() as con:
        return [row[0] for row in con.execute("SELECT uri FROM records ORDER BY uri").fetchall()]


def _tracked_check(result: dg.ExecuteInProcessResult) -> tuple[bool, dict[str, Any]]:
    [evaluation] = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "only_tracked_collections"
    ]
    return evaluation.passed, metadata_of(evaluation)


def test_a_collection_removed_and_added_back_between_runs(
    tmp_path: Path, net: AtprotoStandIn
) -> None:
    project = tmp_path
    db = project / "data" / "mirror.duckdb"
    both, cards = f"{CARD},{PAGE}", CARD
    with JetstreamServer() as jetstream, dg.instance_for_test() as instance:
        # Tracking both: each collection's live records come in.
        jetstream.add(create(ALICE, "c1", rev=1, t=0))
        jetstream.add(create(ALICE, "p1", rev=2, t=1, collection=PAGE))
        assert _run("ingest", _settings(db, both, net, jetstream.url), instance).success
        assert _uris(db) == [f"at://{ALICE}/{CARD}/c1", f"at://{ALICE}/{PAGE}/p1"]

        # PAGE removed: the stream is no longer asked for it, the API refuses it, and the
        # hourly check names the rows it left behind.
        net.add_account(BOB)
        net.put_record(BOB, CARD, "c2", record_body(CARD, "hello"))
        net.put_record(BOB, PAGE, "p2", record_body(PAGE, "made while untracked"))
        jetstream.add(create(BOB, "p2", rev=1, t=100, collection=PAGE))
        jetstream.add(create(BOB, "c2", rev=2, t=101))
        assert _run("ingest", _settings(db, cards, net, jetstream.url), instance).success
        assert jetstream.requests[-1].wanted == [CARD]
        assert f"at://{BOB}/{PAGE}/p2" not in _uris(db)
        assert f"at://{BOB}/{CARD}/c2" in _uris(db)
        with TestClient(app=create_app(_settings(db, cards, net))) as client:
            refused = client.get(f"/records/{PAGE}")
        assert (refused.status_code, refused.json()) == (404, {"error": "Collection not tracked"})
        passed, metadata = _tracked_check(_run("checks", _settings(db, cards, net), instance))
        assert not passed
        assert (metadata["problems"], metadata["where"]) == (1, [PAGE])

        # `mirror purge` removes them, and the check passes again.
        purge = mirror(project, "purge", PAGE, "--yes", COLLECTIONS=cards)
        assert purge.returncode == 0, purge.stderr
        assert _uris(db) == [f"at://{ALICE}/{CARD}/c1", f"at://{BOB}/{CARD}/c2"]
        passed, metadata = _tracked_check(_run("checks", _settings(db, cards, net), instance))
        assert passed and metadata["problems"] == 0

        # PAGE added back: it has no complete relay pass, so discovery runs for it, queues
        # Bob, and his backfill brings the record made while PAGE was untracked.
        again = _settings(db, both, net, jetstream.url)
        with FileStore(db).reading() as con:
            assert never_completed(con, again) == [CARD, PAGE]
        run_discovery(again)
        with FileStore(db).reading() as con:
            queued = con.execute(
                "SELECT did, status FROM backfills WHERE collection = ? ORDER BY did", [PAGE]
            ).fetchall()
        assert queued == [(BOB, "pending")]
        run_backfill(again, [BOB])
        # Past the rewind: the purged p1 is not read again.
        jetstream.add(create(ALICE, "p3", rev=3, t=200, collection=PAGE))
        assert _run("ingest", again, instance).success
    assert _uris(db) == [
        f"at://{ALICE}/{CARD}/c1",
        f"at://{ALICE}/{PAGE}/p3",
        f"at://{BOB}/{CARD}/c2",
        f"at://{BOB}/{PAGE}/p2",
    ]
    with FileStore(db).reading() as con:
        [(text,)] = con.execute(
            "SELECT record->>'text' FROM records WHERE uri = ?", [f"at://{BOB}/{PAGE}/p2"]
        ).fetchall()
    assert text == "made while untracked"  # from Bob's PDS, not from the stream
