"""Handles are believed only once verified both ways: a backfill keeps a DID document's
handle when it resolves back to the DID, an identity event marks the DID for a check, and the
`identities` job (launched by its sensor) checks it, all against a real PLC stand-in and a
real DNS stand-in on 127.0.0.1, and what is written on each store (`store`)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb

from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.config import BackfillLimits, Settings
from mirror_assets.defs.resources import MirrorResource
from mirror_assets.defs.sensors import identity_sensor
from mirror_assets.model.backfills import queue
from mirror_assets.runs.backfill import run_backfill
from mirror_assets.runs.identities import run_identity_checks
from mirror_assets.store.contract import MirrorStore
from mirror_assets.store.file import FileStore
from mirror_assets.store.schema import MIGRATIONS
from tests.support.atproto_server import PLC, AtprotoStandIn
from tests.support.dagster_helpers import metadata_of, run_job
from tests.support.dns_server import DnsStandIn
from tests.support.events_factory import CARD, create, identity, numbered_did
from tests.support.store_helpers import Account, Where, apply_events, settings_on, snapshot

ALICE, BOB, CAROL = numbered_did(1), numbered_did(2), numbered_did(3)


def settings_for(where: Where, net: AtprotoStandIn, dns: DnsStandIn) -> Settings:
    settings = Settings(
        collections=CollectionFilter.parse(CARD),
        plc_url=net.url,
        allow_private_network=True,
        dns_servers=(dns.server,),
        backfill=BackfillLimits(http_backoff_seconds=0.01, http_attempts=2),
    )
    return settings_on(where, settings)


def _claim(dns: DnsStandIn, handle: str, did: str) -> None:
    """`handle` resolves to `did` (DNS TXT `_atproto.<handle>`)."""
    dns.set(f"_atproto.{handle}", "TXT", f"did={did}")


def _seen_and_verified(
    settings: Settings, store: MirrorStore, net: AtprotoStandIn, dns: DnsStandIn
) -> None:
    """ALICE seen live, then backfilled: her handle `alice.test` verified on the way."""
    net.add_account(ALICE, handle="alice.test")
    _claim(dns, "alice.test", ALICE)
    apply_events(store, [create(ALICE, "3kcard", rev=1, t=1)])
    run_backfill(settings, [ALICE], store=store)


def handles(where: Where) -> dict[str, str | None]:
    return {did: account.handle for did, account in snapshot(where).accounts.items()}


def test_a_backfill_keeps_a_handle_only_when_it_resolves_back_to_the_did(
    store: MirrorStore, net: AtprotoStandIn, dns: DnsStandIn
) -> None:
    net.add_account(ALICE, handle="alice.test")
    net.add_account(BOB, handle="famous.test")  # claims a handle that names someone else
    net.add_account(CAROL, handle="carol.test")  # claims a handle that resolves nowhere
    _claim(dns, "alice.test", ALICE)
    _claim(dns, "famous.test", ALICE)
    for did in (ALICE, BOB, CAROL):
        net.create_records(did, CARD, 2)
    with store.writing() as tx:
        queue(tx.con, [(did, CARD) for did in (ALICE, BOB, CAROL)])

    report = run_backfill(settings_for(store, net, dns), [ALICE, BOB, CAROL], store=store)

    assert report.completed == 3
    assert handles(store) == {ALICE: "alice.test", BOB: None, CAROL: None}


def test_an_identity_event_leads_to_a_check_of_the_new_handle(
    store: MirrorStore, net: AtprotoStandIn, dns: DnsStandIn
) -> None:
    settings = settings_for(store, net, dns)
    _seen_and_verified(settings, store, net, dns)
    assert snapshot(store).accounts[ALICE] == Account("alice.test", "active", hidden=False)

    # The account takes a new handle: the document claims it, and its DNS says so.
    net.set_did_document(ALICE, _document(ALICE, net.url, "alice.example.com"))
    _claim(dns, "alice.example.com", ALICE)
    apply_events(store, [identity(ALICE, "alice.example.com", t=2)])
    assert snapshot(store).accounts[ALICE] == Account(None, "active", False, identity_stale=True)

    report = run_identity_checks(settings, store)

    assert (report.checked, report.verified, report.unverified, report.failed) == (1, 1, 0, 0)
    assert snapshot(store).accounts[ALICE] == Account("alice.example.com", "active", hidden=False)
    assert run_identity_checks(settings, store).checked == 0  # nothing is marked any more


def test_a_document_that_cannot_be_read_ends_the_check_and_keeps_what_was_known(
    store: MirrorStore, net: AtprotoStandIn, dns: DnsStandIn
) -> None:
    settings = settings_for(store, net, dns)
    _seen_and_verified(settings, store, net, dns)
    apply_events(store, [identity(ALICE, "alice.test", t=2)])  # the same handle: kept meanwhile
    net.fail(PLC, 500, times=10)

    report = run_identity_checks(settings, store)

    assert (report.checked, report.failed) == (1, 1)
    assert ALICE in report.errors
    assert snapshot(store).accounts[ALICE] == Account("alice.test", "active", hidden=False)


def test_the_sensor_launches_the_identities_job_only_while_dids_are_marked(
    tmp_path: Path, net: AtprotoStandIn, dns: DnsStandIn
) -> None:
    db = tmp_path / "mirror.duckdb"
    mirror = MirrorResource.from_settings(settings_for(db, net, dns))
    net.add_account(ALICE, handle="alice.test")
    _claim(dns, "alice.test", ALICE)
    apply_events(db, [create(ALICE, "3kcard", rev=1, t=1)])
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"mirror": mirror})
        assert isinstance(identity_sensor(context), dg.SkipReason)

        apply_events(db, [identity(ALICE, "alice.test", t=2)])
        assert isinstance(identity_sensor(context), dg.RunRequest)

        result = run_job(mirror, "identities", instance)
        assert result.success
        [materialization] = result.asset_materializations_for_node("account_identities")
        assert metadata_of(materialization)["handles_verified"] == 1
        assert isinstance(identity_sensor(context), dg.SkipReason)
    assert handles(db) == {ALICE: "alice.test"}


def test_handles_stored_before_they_were_verified_are_dropped_and_checked_again(
    tmp_path: Path,
) -> None:
    db = tmp_path / "mirror.duckdb"
    con = duckdb.connect(str(db))
    for script in MIGRATIONS[:4]:  # a file written by version 4 of the schema
        con.execute(script)
    con.execute("INSERT INTO meta VALUES ('schema_version', '4')")
    con.execute(
        "INSERT INTO accounts (did, handle, status, hidden, first_seen_us, first_seen_at, "
        "updated_at) VALUES (?, 'someone-famous.test', 'active', false, 1, now(), now()), "
        "(?, NULL, 'active', false, 1, now(), now())",
        [ALICE, BOB],
    )
    con.close()

    FileStore(db).init()

    assert snapshot(db).accounts == {
        ALICE: Account(None, "active", hidden=False, identity_stale=True),
        BOB: Account(None, "active", hidden=False),
    }


def _document(did: str, pds: str, handle: str) -> dict[str, object]:
    return {
        "id": did,
        "alsoKnownAs": [f"at://{handle}"],
        "service": [
            {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds}
        ],
    }
