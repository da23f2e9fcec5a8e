"""Account lifecycle and identity on the reference PDS: deactivation, reactivation, a handle
change and a deletion, each followed by the full comparison with the network."""

from __future__ import annotations

from pathlib import Path

from litestar.testing import TestClient

from mirror_api.app import create_app
from mirror_assets.store.file import FileStore
from tests.interop.harness import Network
from tests.interop.pipeline import running_pipeline
from tests.interop.records import CARD, PAGE, create_many
from tests.interop.truth import api_records, assert_mirror_equals_network


def account_row(db_path: Path, did: str) -> tuple[str | None, str]:
    """The mirror's (handle, status) of a DID."""
    with FileStore(db_path).reading() as con:
        [row] = con.execute("SELECT handle, status FROM accounts WHERE did = ?", [did]).fetchall()
    return row[0], row[1]


def test_deactivation_reactivation_handle_change_and_deletion(
    network: Network, mirror_env: Path
) -> None:
    pds = network.pds
    resting = pds.create_account("resting")
    create_many(pds, resting, CARD, 5)
    create_many(pds, resting, PAGE, 2)
    renamed = pds.create_account("renamed")
    create_many(pds, renamed, CARD, 3)
    leaving = pds.create_account("leaving")
    create_many(pds, leaving, CARD, 4)

    with running_pipeline(mirror_env / "dagster") as pipeline:
        settings = pipeline.settings
        network.first_ingest(pipeline)
        pipeline.catch_up()
        before = assert_mirror_equals_network(pds, settings)
        assert {r.did for r in before.values()} >= {resting.did, renamed.did, leaving.did}

        # Deactivated: the PDS lists no records, the mirror hides them.
        pds.deactivate(resting)
        pipeline.ingest()
        hidden = assert_mirror_equals_network(pds, settings)
        assert not [r for r in hidden.values() if r.did == resting.did]
        assert account_row(settings.db_path, resting.did)[1] == "deactivated"

        # Reactivated: all of them back, unchanged.
        pds.activate(resting)
        pipeline.ingest()
        back = assert_mirror_equals_network(pds, settings)
        assert len([r for r in back.values() if r.did == resting.did]) == 7
        assert account_row(settings.db_path, resting.did)[1] == "active"

        # A new handle: believed only once it resolves back to the DID, then `?did=` takes it.
        pds.update_handle(renamed, "renamed-again")
        pipeline.ingest()
        assert account_row(settings.db_path, renamed.did)[0] is None  # not checked yet
        assert pipeline.check_identities()
        assert account_row(settings.db_path, renamed.did)[0] == pds.handle_of(renamed.did)
        with TestClient(app=create_app(settings)) as client:
            by_handle, _ = api_records(client, CARD, did=renamed.handle)
        assert {r.did for r in by_handle.values()} == {renamed.did}
        assert len(by_handle) == 3

        # Deleted: gone from the PDS, purged from the mirror, and a resync brings nothing back.
        pds.delete_account(leaving)
        pipeline.ingest()
        assert_mirror_equals_network(pds, settings)
        assert account_row(settings.db_path, leaving.did)[1] == "deleted"
        pipeline.catch_up()
        after = assert_mirror_equals_network(pds, settings)
        assert not [r for r in after.values() if r.did == leaving.did]
        with FileStore(settings.db_path).reading() as con:
            rows = con.execute(
                "SELECT count(*) FROM record_versions WHERE did = ?", [leaving.did]
            ).fetchall()
        assert rows == [(0,)]
