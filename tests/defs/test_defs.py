"""The Dagster definitions load, and hold what the UI should show."""

from __future__ import annotations

import itertools
from pathlib import Path

import dagster as dg
import yaml

from mirror_assets.defs.definitions import defs
from mirror_assets.names import WRITER_TAG
from tests.support.dagster_helpers import lake_definitions

ROOT = Path(__file__).resolve().parents[2]
LAKE_DEFS = lake_definitions()


def _parents(key: str) -> set[str]:
    node = defs.resolve_asset_graph().get(dg.AssetKey(key))
    return {parent.to_user_string() for parent in node.parent_keys}


def test_definitions_load_with_the_lineage_the_data_follows() -> None:
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == {
        "jetstream",
        "pds",
        "relay",
        "identity_sources",
        "records",
        "account_identities",
        "discovered_repos",
        "did_backfill",
        "user_counts",
        "collection_stats",
        "daily_activity",
        "parquet_exports",
        "dagster_history",
    }
    assert _parents("records") == {"jetstream"}
    assert _parents("discovered_repos") == {"relay"}
    assert _parents("account_identities") == {"identity_sources", "records"}
    assert _parents("did_backfill") == {"pds", "records", "discovered_repos"}
    for table in ("user_counts", "collection_stats", "daily_activity"):
        assert _parents(table) == {"records", "did_backfill"}
        assert graph.get(dg.AssetKey(table)).group_name == "analytics"
    assert _parents("parquet_exports") == {"records"}
    backfill = graph.get(dg.AssetKey("did_backfill"))
    assert isinstance(backfill.partitions_def, dg.DynamicPartitionsDefinition)
    assert backfill.partitions_def.name == "dids"


def test_ingest_schedule_runs_every_minute_from_the_start() -> None:
    schedule = defs.resolve_schedule_def("ingest_every_minute")
    assert schedule.cron_schedule == "* * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "ingest"
    assert defs.resolve_job_def("ingest").tags["mirror/writer"] == "ingest"
    # Each ingest cycle rebuilds the analytics tables after `records`, and checks freshness.
    ingest = defs.resolve_job_def("ingest").asset_layer
    assert {key.to_user_string() for key in ingest.executable_asset_keys} == {
        "records",
        "user_counts",
        "collection_stats",
        "daily_activity",
    }
    assert _checks("ingest") == {"records:cursor_fresh"}


def _checks(job: str) -> set[str]:
    """The asset checks a job runs."""
    keys = defs.resolve_job_def(job).asset_layer.asset_graph.asset_check_keys
    return {key.to_user_string() for key in keys}


def test_the_scanning_checks_run_hourly_and_the_exports_on_their_cron() -> None:
    assert _checks("checks") == {
        "records:uris_match_keys",
        "records:only_tracked_collections",
        "records:accounts_shown_as_their_status",
        "records:one_row_per_uri",
        "did_backfill:few_failed_backfills",
    }
    assert not defs.resolve_job_def("checks").asset_layer.executable_asset_keys
    assert not _checks("backfill")
    hourly = defs.resolve_schedule_def("checks_hourly")
    assert (hourly.job_name, hourly.default_status) == ("checks", dg.DefaultScheduleStatus.RUNNING)
    exports = defs.resolve_schedule_def("parquet_exports_schedule")
    assert (exports.job_name, exports.cron_schedule) == ("export", "41 * * * *")
    recluster = defs.resolve_schedule_def("recluster_daily")
    assert (recluster.job_name, recluster.default_status) == (
        "recluster",
        dg.DefaultScheduleStatus.RUNNING,
    )
    assert defs.resolve_job_def("recluster").tags["mirror/writer"] == "recluster"
    # Exports and checks only read: they take no writer slot.
    for job in ("checks", "export"):
        assert "mirror/writer" not in defs.resolve_job_def(job).tags


def test_backfill_discovery_and_identity_checks_run_by_themselves() -> None:
    for name, job in (
        ("backfill_sensor", "backfill"),
        ("discovery_sensor", "discovery"),
        ("identity_sensor", "identities"),
    ):
        sensor = defs.resolve_sensor_def(name)
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        assert sensor.job_name == job
        assert defs.resolve_job_def(job).tags["mirror/writer"] == job
    daily = defs.resolve_schedule_def("discovery_daily")
    assert daily.default_status == dg.DefaultScheduleStatus.RUNNING
    assert daily.job_name == "discovery"


def test_dagster_yaml_limits_each_writer_job_and_only_those() -> None:
    """dagster.yaml's run limits name the jobs by the tag they carry: a limit whose key or
    value no job carries limits nothing, and a writer job without one runs without limit."""
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert limits, "dagster.yaml limits no writer"
    assert [limit["key"] for limit in limits] == [WRITER_TAG] * len(limits)
    limited = [limit["value"] for limit in limits]
    assert len(set(limited)) == len(limited), f"a writer is limited twice: {limited}"
    # Over the jobs of both stores' definitions (the file's and the lake's upkeep differ).
    jobs = {job.name: job for each in (defs, LAKE_DEFS) for job in each.resolve_all_job_defs()}
    for value in limited:
        assert value in jobs, f"no job {value}"
        assert jobs[value].tags.get(WRITER_TAG) == value, (value, jobs[value].tags)
    writers = {name for name, job in jobs.items() if WRITER_TAG in job.tags}
    assert writers == set(limited)


def test_a_mirror_in_a_lake_keeps_the_lake_instead_of_reclustering_a_file() -> None:
    dg.Definitions.validate_loadable(LAKE_DEFS)
    lake_keys = {
        key.to_user_string() for key in LAKE_DEFS.resolve_asset_graph().get_all_asset_keys()
    }
    file_keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    housekeeping = [
        "lake_flushed_inlines",
        "lake_compacted_files",
        "lake_expired_snapshots",
        "lake_deleted_files",
    ]
    assert lake_keys == file_keys | set(housekeeping)
    graph = LAKE_DEFS.resolve_asset_graph()
    for parent, child in itertools.pairwise(housekeeping):
        assert {key.to_user_string() for key in graph.get(dg.AssetKey(child)).parent_keys} == {
            parent
        }
    schedule = LAKE_DEFS.resolve_schedule_def("lake_maintenance_hourly")
    assert (schedule.job_name, schedule.default_status) == (
        "lake_maintenance",
        dg.DefaultScheduleStatus.RUNNING,
    )
    names = {job.name for job in LAKE_DEFS.resolve_all_job_defs()}
    assert "lake_maintenance" in names and "recluster" not in names
    checks = {key.name for key in LAKE_DEFS.resolve_asset_graph().asset_check_keys}
    assert {"few_small_files", "snapshots_expire"} <= checks


def test_the_instance_greets_no_browser_with_a_dialog(tmp_path: Path) -> None:
    """dagster.yaml turns the UI's "join the community" dialog off: an operator's UI is
    opened by many browsers, each would get it."""
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.nux_enabled is False
