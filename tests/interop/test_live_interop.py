"""Live writes through Jetstream: every kind of commit the reference PDS makes, on its own and
while a backfill of the same repository is paging."""

from __future__ import annotations

from pathlib import Path

from mirror_assets.store.file import FileStore
from tests.interop.harness import Network
from tests.interop.pds_client import Account, PdsClient
from tests.interop.pipeline import running_pipeline
from tests.interop.records import CARD, PAGE, UNTRACKED, create_many, record
from tests.interop.truth import assert_mirror_equals_network

FIRST_RUN_SECONDS = 0.02  # a backfill run's first budget for starting pages
MAX_RUNS = 30


def rkey_of(uri: str) -> str:
    return uri.rsplit("/", 1)[1]


def test_every_kind_of_live_commit_reaches_the_mirror(network: Network, mirror_env: Path) -> None:
    pds = network.pds
    with running_pipeline(mirror_env / "dagster") as pipeline:
        network.first_ingest(pipeline)
        pipeline.catch_up()  # the users of earlier scenarios: the live part starts from a match
        author = pds.create_account("live")
        kept = pds.create(author, CARD, record(CARD, 1))
        updated = pds.create(author, CARD, record(CARD, 2))
        deleted = pds.create(author, PAGE, record(PAGE, 3))
        recreated = pds.create(author, CARD, record(CARD, 4))
        pds.create(author, UNTRACKED, record(UNTRACKED, 5))
        pds.put(author, CARD, rkey_of(updated.uri), record(CARD, 2, title="updated once"))
        pds.put(author, CARD, rkey_of(updated.uri), record(CARD, 2, title="updated twice"))
        pds.delete(author, PAGE, rkey_of(deleted.uri))
        # Deleted, then created again at the same rkey: the new version must win.
        pds.delete(author, CARD, rkey_of(recreated.uri))
        pds.create(author, CARD, record(CARD, 40, title="born again"), rkey=rkey_of(recreated.uri))
        # A put at a free rkey creates; applyWrites puts several ops in one commit.
        pds.put(author, PAGE, "self", record(PAGE, 6))
        pds.apply_writes(
            author,
            [
                {
                    "$type": "com.atproto.repo.applyWrites#create",
                    "collection": PAGE,
                    "value": record(PAGE, 7),
                },
                {
                    "$type": "com.atproto.repo.applyWrites#update",
                    "collection": CARD,
                    "rkey": rkey_of(kept.uri),
                    "value": record(CARD, 1, title="batched"),
                },
                {
                    "$type": "com.atproto.repo.applyWrites#delete",
                    "collection": PAGE,
                    "rkey": "self",
                },
                {
                    "$type": "com.atproto.repo.applyWrites#create",
                    "collection": UNTRACKED,
                    "value": record(UNTRACKED, 8),
                },
            ],
        )

        # The stream alone brings the new user's whole history: nothing predates the mirror.
        metadata = pipeline.ingest()
        assert metadata["events_commit_create"] >= 7
        assert "skipped_untracked_collection" not in metadata  # wantedCollections filtered them
        assert_mirror_equals_network(pds, pipeline.settings)
        # Its backfill, queued by the first live record, agrees and changes nothing.
        assert pipeline.backfill() == 1
        pipeline.ingest()
        truth = assert_mirror_equals_network(pds, pipeline.settings)
    mine = {uri: r for uri, r in truth.items() if r.did == author.did}
    assert {r.value["title"] for r in mine.values()} == {
        "batched",
        "updated twice",
        "born again",
        f"{PAGE} number 7",
    }


def change_both_ends(pds: PdsClient, author: Account, rkeys: list[str], round: int) -> None:
    """Update, delete, and delete then re-create at the same rkey, at the end of the listing
    already paged (the newest records: listRecords pages newest first) and at the end not
    paged yet; and create a record the pass began too early to list."""
    for rkey in (rkeys[-1 - 3 * round], rkeys[3 * round]):
        pds.put(author, CARD, rkey, record(CARD, round, title=f"updated in round {round}"))
    for rkey in (rkeys[-2 - 3 * round], rkeys[1 + 3 * round]):
        pds.delete(author, CARD, rkey)
    for rkey in (rkeys[-3 - 3 * round], rkeys[2 + 3 * round]):
        pds.delete(author, CARD, rkey)
        pds.create(author, CARD, record(CARD, round, title=f"again in round {round}"), rkey=rkey)
    pds.create(author, CARD, record(CARD, round, title=f"new in round {round}"))


def listing_state(db_path: Path, did: str) -> tuple[str, int]:
    with FileStore(db_path).reading() as con:
        [row] = con.execute(
            "SELECT status, pages FROM backfills WHERE did = ? AND collection = ?", [did, CARD]
        ).fetchall()
    return row[0], row[1]


def test_writes_while_a_backfill_is_paging_end_in_the_network_state(
    network: Network, mirror_env: Path
) -> None:
    pds = network.pds
    author = pds.create_account("paged")
    rkeys = create_many(pds, author, CARD, 1_000)  # ten pages of 100, before the mirror
    with running_pipeline(mirror_env / "dagster") as pipeline:
        network.first_ingest(pipeline)
        assert pipeline.discover()
        # Each run starts pages for a moment only, so the pass spans several runs and the
        # repository changes between its pages (the pass keeps the rev it began with). The
        # moment grows until a run gets a page in: how long that takes is the machine's.
        budget, pages, rounds = FIRST_RUN_SECONDS, 0, 0
        for _ in range(MAX_RUNS):
            assert pipeline.with_run_seconds(budget).backfill_tick() == 1
            status, paged = listing_state(pipeline.settings.db_path, author.did)
            if status == "complete":
                break
            if paged == pages:
                budget *= 1.5
                continue
            pages = paged
            change_both_ends(pds, author, rkeys, rounds)
            pipeline.ingest()
            rounds += 1
        assert status == "complete", f"the listing did not finish in {MAX_RUNS} runs"
        assert rounds >= 1, "the pass finished in one run: nothing changed while it paged"

        pipeline.ingest()
        assert_mirror_equals_network(pds, pipeline.settings)
