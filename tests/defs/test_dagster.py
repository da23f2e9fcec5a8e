"""The `records` asset on a real Dagster instance, the schedule skip rule, the instance config."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from mirror_assets.config import FILE_BACKFILL_RUNS
from mirror_assets.defs.ingest import records
from mirror_assets.defs.resources import MirrorResource
from mirror_assets.defs.schedules import ingest_every_minute
from mirror_assets.store.file import FileStore
from tests.support.dagster_helpers import add_run, ingest_mirror, metadata_of
from tests.support.events_factory import at, create, delete, did, identity
from tests.support.jetstream_server import JetstreamServer

PROJECT = Path(__file__).resolve().parents[2]


def mirror_for(server: JetstreamServer, db: Path) -> MirrorResource:
    return ingest_mirror(db, server.url, "app.blento.*", max_seconds=10)


def test_records_materializes_from_jetstream(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    db = tmp_path / "mirror.duckdb"
    with JetstreamServer() as server:
        for n in range(5):
            server.add(create(did(f"user{n % 2}"), f"r{n}", rev=n, t=n))
        server.add(delete(did("user0"), "r0", rev=9, t=10))
        server.add(identity(did("user1"), "one.example.com", t=11))
        result = dg.materialize(
            [records], instance=instance, resources={"mirror": mirror_for(server, db)}
        )

    assert result.success
    [materialization] = result.asset_materializations_for_node("records")
    metadata = metadata_of(materialization)
    assert metadata["events_commit_create"] == 5
    assert metadata["events_commit_delete"] == 1
    assert metadata["events_identity"] == 1
    # r0's create and delete meet in one batch: only the delete (the newer rev) is written.
    assert metadata["rows_upserted"] == 4
    assert metadata["rows_tombstoned"] == 1
    assert metadata["rows_stale"] == 1
    assert metadata["new_dids"] == 2
    assert metadata["cursor_after"] == at(11)
    assert metadata["stop_reason"] == "idle"
    assert metadata["identities_changed"] == 1
    assert metadata["refused"] == 0 and metadata["refusal_samples"] == {}
    assert sorted(metadata["new_dids_sample"]) == sorted([did("user0"), did("user1")])
    with FileStore(db).reading() as con:
        live = con.execute("SELECT uri FROM records ORDER BY uri").fetchall()
        marked = con.execute(
            "SELECT handle, identity_stale FROM accounts WHERE did = ?", [did("user1")]
        ).fetchall()
    assert [uri for (uri,) in live] == sorted(
        f"at://{did(f'user{n % 2}')}/app.blento.card/r{n}" for n in (1, 2, 3, 4)
    )
    assert marked == [(None, True)]  # its handle waits for a check both ways


def test_records_run_fails_visibly_when_no_jetstream_answers(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    with JetstreamServer() as server:
        mirror = mirror_for(server, tmp_path / "mirror.duckdb")
    # The server is gone: every connection is refused.
    result = dg.materialize(
        [records], instance=instance, resources={"mirror": mirror}, raise_on_error=False
    )
    assert not result.success
    failure = result.failure_data_for_node("records")
    assert failure is not None
    assert "no Jetstream endpoint answered" in str(failure.error)


def _evaluate(instance: dg.DagsterInstance) -> dg.RunRequest | dg.SkipReason:
    tick = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=tick)
    result = ingest_every_minute(context)
    assert isinstance(result, dg.RunRequest | dg.SkipReason)
    return result


@pytest.mark.parametrize(
    "status",
    [
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    ],
)
def test_schedule_skips_while_an_ingest_run_is_in_flight(
    instance: dg.DagsterInstance, status: dg.DagsterRunStatus
) -> None:
    assert isinstance(_evaluate(instance), dg.RunRequest)

    in_flight = add_run(instance, "ingest", status)
    instance.add_run(dg.DagsterRun(job_name="some_other_job", status=dg.DagsterRunStatus.STARTED))
    skipped = _evaluate(instance)
    assert isinstance(skipped, dg.SkipReason)
    assert in_flight.run_id in (skipped.skip_message or "")

    instance.report_run_failed(in_flight)
    assert isinstance(_evaluate(instance), dg.RunRequest)


def test_dagster_yaml_limits_writer_runs_as_the_sensor_does(tmp_path: Path) -> None:
    shutil.copyfile(PROJECT / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert {"key": "mirror/writer", "value": "ingest", "limit": 1} in limits
    assert {"key": "mirror/writer", "value": "backfill", "limit": FILE_BACKFILL_RUNS} in limits
    assert {"key": "mirror/writer", "value": "discovery", "limit": 1} in limits
    assert {"key": "mirror/writer", "value": "identities", "limit": 1} in limits
    assert {"key": "mirror/writer", "value": "recluster", "limit": 1} in limits
