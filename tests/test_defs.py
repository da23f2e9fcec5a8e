"""The Dagster definitions load, and hold what the UI should show."""

from __future__ import annotations

import dagster as dg

from mirror_assets.definitions import defs


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
        "records",
        "discovered_repos",
        "did_backfill",
        "user_counts",
        "collection_stats",
    }
    assert _parents("records") == {"jetstream"}
    assert _parents("discovered_repos") == {"relay"}
    assert _parents("did_backfill") == {"pds", "records", "discovered_repos"}
    for summary in ("user_counts", "collection_stats"):
        assert _parents(summary) == {"records", "did_backfill"}
    backfill = graph.get(dg.AssetKey("did_backfill"))
    assert isinstance(backfill.partitions_def, dg.DynamicPartitionsDefinition)
    assert backfill.partitions_def.name == "dids"


def test_ingest_schedule_runs_every_minute_from_the_start() -> None:
    schedule = defs.resolve_schedule_def("ingest_every_minute")
    assert schedule.cron_schedule == "* * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "ingest"
    assert defs.resolve_job_def("ingest").tags["mirror/writer"] == "ingest"
    # Each ingest cycle rebuilds the summaries behind /users and /stats after `records`.
    ingest_assets = defs.resolve_job_def("ingest").asset_layer.executable_asset_keys
    assert {key.to_user_string() for key in ingest_assets} == {
        "records",
        "user_counts",
        "collection_stats",
    }


def test_backfill_and_discovery_run_by_themselves() -> None:
    for name, job in (("backfill_sensor", "backfill"), ("discovery_sensor", "discovery")):
        sensor = defs.resolve_sensor_def(name)
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        assert sensor.job_name == job
        assert defs.resolve_job_def(job).tags["mirror/writer"] == job
    daily = defs.resolve_schedule_def("discovery_daily")
    assert daily.default_status == dg.DefaultScheduleStatus.RUNNING
    assert daily.job_name == "discovery"
