"""Dagster's history kept bounded: old runs deleted, with their event logs and compute logs,
except the runs that hold an asset's, a partition's or a check's latest event; on a real
Dagster instance (SQLite storage, local compute logs) in a temporary folder."""

import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from mirror_assets.config import HistoryLimits
from mirror_assets.defs.definitions import build_definitions, defs
from mirror_assets.defs.history import check_keys, prune_history
from mirror_assets.defs.resources import HistoryConfig, MirrorResource
from mirror_assets.names import DID_BACKFILL, HISTORY_JOB
from tests.support.dagster_helpers import lake_definitions, metadata_of
from tests.support.events_factory import did

NOW_ON = HistoryLimits(keep_success_days=0.0, keep_failure_days=0.0)  # every ended run is old
ALICE, BOB = did("alice"), did("bob")


@dg.op(config_schema={"key": str, "partition": dg.Field(str, is_required=False)})
def _materialize(context: dg.OpExecutionContext) -> None:
    """What a run of the mirror leaves in the event log: a materialization, with a line of
    output in its compute log."""
    print("working")
    config = context.op_config
    context.log_event(
        dg.AssetMaterialization(asset_key=config["key"], partition=config.get("partition"))
    )


@dg.op
def _fail() -> None:
    raise RuntimeError("a run that failed")


@dg.job
def _materializing() -> None:
    _materialize()


@dg.job
def _failing() -> None:
    _fail()


def _run(instance: dg.DagsterInstance, key: str, partition: str | None = None) -> str:
    config = {"key": key} | ({"partition": partition} if partition else {})
    result = _materializing.execute_in_process(
        instance=instance, run_config={"ops": {"_materialize": {"config": config}}}
    )
    return result.run_id


def _failed_run(instance: dg.DagsterInstance) -> str:
    return _failing.execute_in_process(instance=instance, raise_on_error=False).run_id


def _files_of(instance: dg.DagsterInstance, run_id: str) -> list[Path]:
    storage = instance.event_log_storage
    assert isinstance(storage, SqliteEventLogStorage)
    logs = Path(instance.root_directory) / "storage" / run_id
    return [path for path in (Path(storage.path_for_shard(run_id)), logs) if path.exists()]


def _kept(instance: dg.DagsterInstance) -> set[str]:
    return {record.dagster_run.run_id for record in instance.get_run_records()}


def test_old_runs_go_and_the_runs_of_the_latest_events_stay(instance: dg.DagsterInstance) -> None:
    replaced = _run(instance, "records")
    latest = _run(instance, "records")
    alice_first = _run(instance, DID_BACKFILL, ALICE)
    bob_only = _run(instance, DID_BACKFILL, BOB)
    alice_again = _run(instance, DID_BACKFILL, ALICE)
    failed = _failed_run(instance)
    assert _files_of(instance, replaced)  # an event log file and compute logs to free

    pruned = prune_history(instance, NOW_ON, [], time.time())

    assert _kept(instance) == {latest, bob_only, alice_again}
    assert dict(pruned.deleted) == {"success": 2, "failure": 1}
    assert pruned.kept_for_history == 3
    for gone in (replaced, alice_first, failed):
        assert _files_of(instance, gone) == []
    assert pruned.bytes_after < pruned.bytes_before
    # What the UI shows stays: the asset's latest materialization, and each DID's.
    assert instance.get_latest_materialization_event(dg.AssetKey("records")).run_id == latest
    partitions = instance.get_materialized_partitions(dg.AssetKey(DID_BACKFILL))
    assert partitions == {ALICE, BOB}


def test_each_status_keeps_its_own_number_of_days(instance: dg.DagsterInstance) -> None:
    _run(instance, "records")
    latest = _run(instance, "records")
    failed = _failed_run(instance)

    pruned = prune_history(
        instance, HistoryLimits(keep_success_days=0.0, keep_failure_days=30.0), [], time.time()
    )

    assert _kept(instance) == {latest, failed}
    assert dict(pruned.deleted) == {"success": 1}
    # A day later the failure is still within its thirty days.
    prune_history(
        instance, NOW_ON.model_copy(update={"keep_failure_days": 30.0}), [], time.time() + 86_400
    )
    assert failed in _kept(instance)


def test_a_run_not_ended_is_never_deleted(instance: dg.DagsterInstance) -> None:
    not_started = instance.create_run_for_job(
        _materializing, run_config={"ops": {"_materialize": {"config": {"key": "records"}}}}
    )
    prune_history(instance, NOW_ON, [], time.time())
    assert not_started.run_id in _kept(instance)


def test_the_history_job_reports_what_it_deleted_and_checks_the_size(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    old = _run(instance, "records")
    _run(instance, "records")  # now the latest: it stays
    mirror = MirrorResource(
        db_path=str(tmp_path / "mirror.duckdb"),
        collections="app.blento.card",
        jetstream_urls="",
        history=HistoryConfig(keep_success_days=0.0, keep_failure_days=0.0, warn_bytes=1),
    )
    job = build_definitions(mirror).resolve_job_def(HISTORY_JOB)

    result = job.execute_in_process(instance=instance, raise_on_error=False)

    assert result.success
    assert old not in _kept(instance)
    [materialization] = result.asset_materializations_for_node("dagster_history")
    metadata = metadata_of(materialization)
    assert metadata["runs_deleted"] == 1 and metadata["runs_deleted_success"] == 1
    assert metadata["bytes_freed"] > 0
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "history_size"
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert metadata_of(check)["dagster_home_bytes"] > metadata_of(check)["warn_bytes"] == 1


@pytest.mark.parametrize("days", ["0", "-1", "x"])
def test_history_settings_refuse_what_cannot_be_a_number_of_days(
    days: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTORY_KEEP_SUCCESS_DAYS", days)
    with pytest.raises(ValueError, match="HISTORY_KEEP_SUCCESS_DAYS"):
        HistoryLimits.from_env()


def test_the_history_keeps_the_latest_evaluation_of_every_check_of_the_definitions() -> None:
    """Of either store's definitions: the lake's have checks of their own."""
    lake_checks = lake_definitions().resolve_asset_graph().asset_check_keys
    assert set(check_keys()) == set(defs.resolve_asset_graph().asset_check_keys) | lake_checks


def test_the_run_of_a_checks_latest_evaluation_stays(instance: dg.DagsterInstance) -> None:
    result = dg.materialize([_checked, _checked_check], instance=instance, selection=[_checked])
    evaluated = result.run_id
    _run(instance, "other")

    prune_history(instance, NOW_ON, [dg.AssetCheckKey(dg.AssetKey("checked"), "fine")], time.time())

    assert evaluated in _kept(instance)


@dg.asset(name="checked")
def _checked() -> None:
    pass


@dg.asset_check(asset="checked", name="fine")
def _checked_check() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True)
