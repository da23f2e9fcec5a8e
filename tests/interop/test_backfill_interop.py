"""A new mirror of users who were there before it: discovery through the relay, backfill
from the reference PDS over several pages, and nothing of an untracked collection."""

from __future__ import annotations

from pathlib import Path

from mirror_assets.store.file import FileStore
from tests.interop.harness import Network
from tests.interop.pipeline import running_pipeline
from tests.interop.records import CARD, PAGE, UNTRACKED, create_many, record
from tests.interop.truth import assert_mirror_equals_network


def test_a_new_mirror_backfills_every_user_who_predates_it(
    network: Network, mirror_env: Path
) -> None:
    pds = network.pds
    heavy = pds.create_account("heavy")
    create_many(pds, heavy, CARD, 260)  # three pages of 100 and an empty one
    both = pds.create_account("both")
    create_many(pds, both, CARD, 3)
    create_many(pds, both, PAGE, 2)
    create_many(pds, both, UNTRACKED, 4)
    untracked_only = pds.create_account("untracked")
    pds.create(untracked_only, UNTRACKED, record(UNTRACKED, 1))

    with running_pipeline(mirror_env / "dagster") as pipeline:
        first = network.first_ingest(pipeline)
        assert first["rows_upserted"] == 0  # a new mirror starts at the live edge
        assert pipeline.discover()
        assert pipeline.backfill() >= 1
        pipeline.ingest()
        truth = assert_mirror_equals_network(pds, pipeline.settings)

        with FileStore(pipeline.settings.db_path).reading() as con:
            pages = dict(
                con.execute(
                    "SELECT did, pages FROM backfills WHERE collection = ? AND status = 'complete'",
                    [CARD],
                ).fetchall()
            )
            queued = {row[0] for row in con.execute("SELECT did FROM backfills").fetchall()}
    assert pages[heavy.did] >= 3, pages
    assert untracked_only.did not in queued
    assert sum(1 for r in truth.values() if r.did == heavy.did) == 260
    assert {r.collection for r in truth.values() if r.did == both.did} == {CARD, PAGE}
    assert not pipeline.discover()  # every tracked collection has a complete pass
