"""Discovery: the relay's listReposByCollection, paged into the backfill queue, resumably.

Real HTTP against the relay stand-in, a real store (the passes on the file and on the lake:
`store`), and for the sensor and the asset a real DuckDB file and a real (temporary) Dagster
instance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.config import BackfillLimits, Settings
from mirror_assets.defs.discovery import discovered_repos
from mirror_assets.defs.resources import MirrorResource
from mirror_assets.defs.sensors import discovery_sensor
from mirror_assets.names import DISCOVERY_JOB
from mirror_assets.network.xrpc import UnavailableError
from mirror_assets.runs.discovery import REPASS_AFTER, CollectionPass, run_discovery
from mirror_assets.store.contract import MirrorStore
from mirror_assets.store.file import FileStore
from tests.support.atproto_server import LIST_REPOS_BY_COLLECTION, AtprotoStandIn, endpoint_of
from tests.support.dagster_helpers import add_run, metadata_of
from tests.support.events_factory import CARD, PAGE, account, create, numbered_did
from tests.support.store_helpers import Where, apply_events, settings_on, store_of

ATTEMPTS = 3
plc = numbered_did  # the n-th resolvable did:plc; plc(a) < plc(b) iff a < b


def settings_for(where: Where, relay: str, collections: str = CARD) -> Settings:
    settings = Settings(
        collections=CollectionFilter.parse(collections),
        plc_url=relay,
        relay_url=relay,
        allow_private_network=True,
        backfill=BackfillLimits(http_backoff_seconds=0.01, http_attempts=ATTEMPTS),
    )
    return settings_on(where, settings)


def publish(net: AtprotoStandIn, dids: list[str], collection: str = CARD) -> list[str]:
    """Give each DID a record of the collection, so the relay lists it; sorted, as listed."""
    for did in dids:
        try:
            net.rev(did)  # an account may hold several collections
        except KeyError:
            net.add_account(did)
        net.create_records(did, collection, 1)
    return sorted(dids)


def relay_asks(net: AtprotoStandIn) -> list[dict[str, str]]:
    """The query of every listReposByCollection request, in order."""
    return [query for path, query in net.requests if endpoint_of(path) == LIST_REPOS_BY_COLLECTION]


@dataclass
class State:
    relay: str
    cursor: str | None
    repos_listed: int
    dids_queued: int
    pass_started_at: datetime
    completed_at: datetime | None


def discovery_state(where: Where) -> dict[str, State]:
    with store_of(where).reading() as con:
        rows = con.execute(
            "SELECT collection, relay, cursor, repos_listed, dids_queued, pass_started_at, "
            "completed_at FROM discovery_state"
        ).fetchall()
    return {row[0]: State(*row[1:]) for row in rows}


def backfills(where: Where) -> dict[tuple[str, str], str]:
    with store_of(where).reading() as con:
        rows = con.execute("SELECT did, collection, status FROM backfills").fetchall()
    return {(did, collection): status for did, collection, status in rows}


def accounts(where: Where) -> dict[str, str]:
    with store_of(where).reading() as con:
        return dict(con.execute("SELECT did, status FROM accounts").fetchall())


# -- run_discovery ---------------------------------------------------------------------------


def test_a_pass_pages_the_relay_and_queues_every_listed_did(
    store: MirrorStore, net: AtprotoStandIn
) -> None:
    dids = publish(net, [plc(n) for n in range(1205)])
    net.list_repos_page_size(500)
    settings = settings_for(store, net.url)

    report = run_discovery(settings, store)

    assert report.passes == [
        CollectionPass(
            CARD,
            resumed=False,
            pages=3,
            repos_listed=1205,
            dids_queued=1205,
            invalid_dids=0,
            complete=True,
        )
    ]
    assert report.not_discoverable == []
    summary = report.summary()
    assert {k: v for k, v in summary.items() if k != "seconds"} == {
        "collections_passed": 1,
        "passes_complete": 1,
        "pages": 3,
        "repos_listed": 1205,
        "dids_queued": 1205,
        "invalid_dids": 0,
    }
    asks = relay_asks(net)
    assert [ask.get("cursor") for ask in asks] == [None, dids[499], dids[999]]
    assert all(ask["collection"] == CARD and ask["limit"] == "2000" for ask in asks)
    assert backfills(store) == {(did, CARD): "pending" for did in dids}
    assert accounts(store) == dict.fromkeys(dids, "active")
    [state] = discovery_state(store).values()
    assert (state.relay, state.cursor, state.repos_listed, state.dids_queued) == (
        net.url,
        None,
        1205,
        1205,
    )
    assert state.completed_at is not None

    # Right away, nothing is due: the relay is not asked again.
    again = run_discovery(settings, store)
    assert again.passes == []
    assert len(relay_asks(net)) == 3
    assert discovery_state(store)[CARD] == state


def test_a_pass_of_a_single_page_is_complete(db: Path, net: AtprotoStandIn) -> None:
    dids = publish(net, [plc(n) for n in range(3)])
    settings = settings_for(db, net.url)

    report = run_discovery(settings)

    assert [p.complete for p in report.passes] == [True]
    state = discovery_state(db)[CARD]
    assert (state.cursor, state.repos_listed, state.dids_queued) == (None, 3, 3)
    assert backfills(db) == {(did, CARD): "pending" for did in dids}
    # The pass ended on its first page, so it is complete: not due again until REPASS_AFTER.
    assert state.completed_at is not None
    assert run_discovery(settings).passes == []
    assert len(relay_asks(net)) == 1


def test_an_interrupted_pass_resumes_from_its_saved_cursor(
    store: MirrorStore, net: AtprotoStandIn
) -> None:
    dids = publish(net, [plc(n) for n in range(1205)])
    net.list_repos_page_size(500)
    settings = settings_for(store, net.url)
    # The first page is answered; the second fails every attempt.
    net.delay(LIST_REPOS_BY_COLLECTION, 0, times=1)
    net.fail(LIST_REPOS_BY_COLLECTION, 500, times=ATTEMPTS)

    with pytest.raises(UnavailableError, match="server error 500"):
        run_discovery(settings, store)

    assert [ask.get("cursor") for ask in relay_asks(net)] == [None] + [dids[499]] * ATTEMPTS
    stopped = discovery_state(store)[CARD]
    assert (stopped.cursor, stopped.repos_listed, stopped.dids_queued) == (dids[499], 500, 500)
    assert stopped.completed_at is None
    assert backfills(store) == {(did, CARD): "pending" for did in dids[:500]}

    asked_before = len(relay_asks(net))
    report = run_discovery(settings, store)

    resumed = relay_asks(net)[asked_before:]
    assert [ask.get("cursor") for ask in resumed] == [dids[499], dids[999]]
    assert report.passes == [
        CollectionPass(
            CARD,
            resumed=True,
            pages=2,
            repos_listed=705,
            dids_queued=705,
            invalid_dids=0,
            complete=True,
        )
    ]
    done = discovery_state(store)[CARD]
    assert (done.cursor, done.repos_listed, done.dids_queued) == (None, 1205, 1205)
    assert done.pass_started_at == stopped.pass_started_at  # the same pass, continued
    assert done.completed_at is not None
    assert backfills(store) == {(did, CARD): "pending" for did in dids}


def test_invalid_dids_in_a_listing_are_counted_and_skipped(db: Path, net: AtprotoStandIn) -> None:
    valid = publish(net, [plc(n) for n in range(3)])
    # The stand-in lists whatever accounts it holds; these sort after the valid ones, so the
    # last page holds nothing but invalid DIDs.
    invalid = publish(net, ["did:plc:has space", "not-a-did", "web:example.com"])
    net.list_repos_page_size(2)
    settings = settings_for(db, net.url)

    report = run_discovery(settings)

    assert report.passes == [
        CollectionPass(
            CARD,
            resumed=False,
            pages=3,
            repos_listed=6,
            dids_queued=3,
            invalid_dids=3,
            complete=True,
        )
    ]
    assert backfills(db) == {(did, CARD): "pending" for did in valid}
    assert set(accounts(db)) == set(valid)
    assert not set(accounts(db)) & set(invalid)
    state = discovery_state(db)[CARD]
    assert (state.cursor, state.repos_listed, state.dids_queued) == (None, 6, 3)


def test_wildcards_are_reported_not_discoverable(db: Path, net: AtprotoStandIn) -> None:
    publish(net, [plc(0)])
    publish(net, [plc(1)], collection="app.other.thing")
    settings = settings_for(db, net.url, f"{CARD},app.other.*")

    report = run_discovery(settings)

    assert report.not_discoverable == ["app.other.*"]
    assert [p.collection for p in report.passes] == [CARD]
    assert {ask["collection"] for ask in relay_asks(net)} == {CARD}
    assert backfills(db) == {(plc(0), CARD): "pending"}

    only_wildcards = run_discovery(settings_for(db, net.url, "app.other.*"))
    assert only_wildcards.passes == []
    assert only_wildcards.not_discoverable == ["app.other.*"]


def test_a_newly_tracked_collection_is_passed_and_the_old_one_is_not(
    store: MirrorStore, net: AtprotoStandIn
) -> None:
    cards = publish(net, [plc(n) for n in range(4)])
    pages = publish(net, [plc(2), plc(3), plc(4)], collection=PAGE)
    net.list_repos_page_size(2)  # two pages each (a one-page pass is another test's subject)
    first = run_discovery(settings_for(store, net.url, CARD), store)
    assert [p.collection for p in first.passes] == [CARD]
    card_state = discovery_state(store)[CARD]

    settings = settings_for(store, net.url, f"{CARD},{PAGE}")
    asked_before = len(relay_asks(net))
    second = run_discovery(settings, store)

    assert second.passes == [
        CollectionPass(
            PAGE,
            resumed=False,
            pages=2,
            repos_listed=3,
            dids_queued=3,
            invalid_dids=0,
            complete=True,
        )
    ]
    assert [ask["collection"] for ask in relay_asks(net)[asked_before:]] == [PAGE, PAGE]
    assert backfills(store) == {
        **{(did, CARD): "pending" for did in cards},
        **{(did, PAGE): "pending" for did in pages},
    }
    state = discovery_state(store)
    assert state[CARD] == card_state
    assert (state[PAGE].cursor, state[PAGE].repos_listed) == (None, 3)
    assert state[PAGE].completed_at is not None
    assert run_discovery(settings, store).passes == []


def test_known_dids_are_not_queued_again_and_deleted_accounts_get_no_backfill(
    store: MirrorStore, net: AtprotoStandIn
) -> None:
    seen, gone, fresh = plc(1), plc(2), plc(3)
    publish(net, [seen, gone, fresh])
    settings = settings_for(store, net.url)
    # Seen live (its backfill since complete), and a DID whose account was deleted.
    apply_events(
        store,
        [
            create(seen, "a", rev=1, t=1),
            create(gone, "b", rev=1, t=1),
            account(gone, active=False, status="deleted", t=2),
        ],
    )
    with store.writing() as tx:
        tx.con.execute("UPDATE backfills SET status = 'complete' WHERE did = ?", [seen]).fetchall()
    assert backfills(store) == {(seen, CARD): "complete"}

    report = run_discovery(settings, store)

    [collection_pass] = report.passes
    assert (collection_pass.repos_listed, collection_pass.dids_queued) == (3, 1)
    assert backfills(store) == {(seen, CARD): "complete", (fresh, CARD): "pending"}
    assert accounts(store) == {seen: "active", gone: "deleted", fresh: "active"}
    assert discovery_state(store)[CARD].dids_queued == 1


def test_a_pass_older_than_repass_after_is_made_anew(
    store: MirrorStore, net: AtprotoStandIn
) -> None:
    first_dids = publish(net, [plc(n) for n in range(3)])
    settings = settings_for(store, net.url)
    run_discovery(settings, store)

    def age_last_pass(age: timedelta) -> None:
        with store.writing() as tx:
            tx.con.execute(
                "UPDATE discovery_state SET completed_at = ?, pass_started_at = ?",
                [datetime.now(UTC) - age, datetime.now(UTC) - age],
            ).fetchall()

    age_last_pass(REPASS_AFTER - timedelta(minutes=5))
    assert run_discovery(settings, store).passes == []

    newer = publish(net, [plc(n) for n in range(10, 12)])
    age_last_pass(REPASS_AFTER + timedelta(minutes=5))
    report = run_discovery(settings, store)

    assert report.passes == [
        CollectionPass(
            CARD,
            resumed=False,
            pages=1,
            repos_listed=5,
            dids_queued=2,
            invalid_dids=0,
            complete=True,
        )
    ]
    state = discovery_state(store)[CARD]
    # The new pass's numbers, not added to the last pass's.
    assert (state.cursor, state.repos_listed, state.dids_queued) == (None, 5, 2)
    assert state.completed_at is not None
    assert datetime.now(UTC) - state.completed_at < timedelta(minutes=1)
    assert backfills(store) == {(did, CARD): "pending" for did in first_dids + newer}


def test_another_relay_starts_its_own_pass(store: MirrorStore, net: AtprotoStandIn) -> None:
    dids = publish(net, [plc(n) for n in range(5)])
    net.list_repos_page_size(2)
    net.delay(LIST_REPOS_BY_COLLECTION, 0, times=1)
    net.fail(LIST_REPOS_BY_COLLECTION, 500, times=ATTEMPTS)
    with pytest.raises(UnavailableError):
        run_discovery(settings_for(store, net.url), store)
    assert discovery_state(store)[CARD].cursor == dids[1]

    with AtprotoStandIn() as other:
        other_dids = publish(other, [plc(n) for n in range(3, 9)])
        other_url = other.url
        settings = settings_for(store, other_url)
        report = run_discovery(settings, store)
        # The other relay's cursor means nothing here: the pass starts at the beginning.
        assert [ask.get("cursor") for ask in relay_asks(other)] == [None]

    assert report.passes == [
        CollectionPass(
            CARD,
            resumed=False,
            pages=1,
            repos_listed=6,
            dids_queued=6,
            invalid_dids=0,
            complete=True,
        )
    ]
    state = discovery_state(store)[CARD]
    assert (state.relay, state.cursor, state.repos_listed, state.dids_queued) == (
        other_url,
        None,
        6,
        6,
    )
    assert set(backfills(store)) == {(did, CARD) for did in {*dids[:2], *other_dids}}

    # Back to the first relay: its last word is older than the other's complete pass, so
    # the pass is made anew there too, from the beginning.
    asked_before = len(relay_asks(net))
    back = run_discovery(settings_for(store, net.url), store)
    assert back.passes == [
        CollectionPass(
            CARD,
            resumed=False,
            pages=3,
            repos_listed=5,
            dids_queued=1,
            invalid_dids=0,
            complete=True,
        )
    ]
    assert [ask.get("cursor") for ask in relay_asks(net)[asked_before:]] == [None, *dids[1:4:2]]
    assert discovery_state(store)[CARD].relay == net.url


# -- the discovery sensor --------------------------------------------------------------------


def evaluate(instance: dg.DagsterInstance, settings: Settings) -> dg.RunRequest | dg.SkipReason:
    mirror = MirrorResource.from_settings(settings)
    context = dg.build_sensor_context(instance=instance, resources={"mirror": mirror})
    result = discovery_sensor(context)
    assert isinstance(result, dg.RunRequest | dg.SkipReason), result
    return result


def discovery_run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus) -> dg.DagsterRun:
    return add_run(instance, DISCOVERY_JOB, status)


def assert_run_for(result: dg.RunRequest | dg.SkipReason, relay: str, collections: str) -> None:
    assert isinstance(result, dg.RunRequest), result
    hour = r"\d{4}-\d{2}-\d{2}T\d{2}"
    assert re.fullmatch(f"{re.escape(relay)} {re.escape(collections)} {hour}", result.run_key or "")


def test_discovery_sensor_asks_for_collections_never_completed_on_this_relay(
    db: Path, net: AtprotoStandIn, instance: dg.DagsterInstance
) -> None:
    publish(net, [plc(0)])
    both = settings_for(db, net.url, f"{CARD},{PAGE}")
    assert_run_for(evaluate(instance, both), net.url, f"{CARD},{PAGE}")

    run_discovery(settings_for(db, net.url, CARD))
    assert_run_for(evaluate(instance, both), net.url, PAGE)

    run_discovery(both)
    skipped = evaluate(instance, both)
    assert isinstance(skipped, dg.SkipReason)
    assert skipped.skip_message == "every tracked collection has a complete pass on the relay"

    # A first pass that stopped midway is not complete: the sensor asks again.
    with FileStore(db).writing() as tx:
        tx.con.execute(
            "UPDATE discovery_state SET cursor = 'did:plc:x', completed_at = NULL "
            "WHERE collection = ?",
            [PAGE],
        )
    assert_run_for(evaluate(instance, both), net.url, PAGE)

    # Another relay was never asked about anything.
    other = settings_for(db, "http://127.0.0.1:9", f"{CARD},{PAGE}")
    assert_run_for(evaluate(instance, other), "http://127.0.0.1:9", f"{CARD},{PAGE}")
    # Wildcards are never asked of a relay: nothing to run for them.
    wildcards = evaluate(instance, settings_for(db, net.url, "app.other.*"))
    assert isinstance(wildcards, dg.SkipReason)


@pytest.mark.parametrize(
    "status",
    [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING],
)
def test_discovery_sensor_waits_while_a_discovery_run_is_in_flight(
    db: Path, instance: dg.DagsterInstance, status: dg.DagsterRunStatus
) -> None:
    settings = settings_for(db, "http://127.0.0.1:9", CARD)
    run = discovery_run(instance, status)
    skipped = evaluate(instance, settings)
    assert isinstance(skipped, dg.SkipReason)
    assert skipped.skip_message == f"a discovery run is in flight; new collections: {[CARD]}"

    instance.report_run_failed(run)
    assert_run_for(evaluate(instance, settings), "http://127.0.0.1:9", CARD)


# -- the discovered_repos asset ---------------------------------------------------------------


def discovery_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [materialization] = result.asset_materializations_for_node("discovered_repos")
    return metadata_of(materialization)


def test_the_asset_reports_what_discovery_queued(
    db: Path, net: AtprotoStandIn, instance: dg.DagsterInstance
) -> None:
    cards = publish(net, [plc(n) for n in range(5)])
    publish(net, [plc(4), plc(5)], collection=PAGE)
    publish(net, ["not-a-did"], collection=PAGE)
    net.list_repos_page_size(2)
    settings = settings_for(db, net.url, f"{CARD},{PAGE},app.other.*")
    mirror = MirrorResource.from_settings(settings)
    # The first pass fails on its second page: the run fails, visibly.
    net.delay(LIST_REPOS_BY_COLLECTION, 0, times=1)
    net.fail(LIST_REPOS_BY_COLLECTION, 500, times=ATTEMPTS)
    failed = dg.materialize(
        [discovered_repos], resources={"mirror": mirror}, instance=instance, raise_on_error=False
    )
    assert not failed.success
    failure = failed.failure_data_for_node("discovered_repos")
    assert failure is not None
    assert "server error 500" in str(failure.error)

    result = dg.materialize([discovered_repos], resources={"mirror": mirror}, instance=instance)

    assert result.success
    metadata = discovery_metadata(result)
    assert {k: v for k, v in metadata.items() if k != "seconds"} == {
        "collections_passed": 2,
        "passes_complete": 2,
        "pages": 2 + 2,  # the rest of the card pass (pages 2 and 3), then the page pass
        "repos_listed": 3 + 3,
        "dids_queued": 3 + 2,
        "invalid_dids": 1,
        "collections": {CARD: {"repos": 3, "queued": 3}, PAGE: {"repos": 3, "queued": 2}},
        "not_discoverable": "app.other.*",
    }
    assert set(backfills(db)) == {
        *((did, CARD) for did in cards),
        (plc(4), PAGE),
        (plc(5), PAGE),
    }
    state = discovery_state(db)
    assert (state[CARD].repos_listed, state[CARD].dids_queued) == (5, 5)
    assert (state[PAGE].repos_listed, state[PAGE].dids_queued) == (3, 2)
