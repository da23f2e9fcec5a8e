"""The Dagster definitions load, and hold what the UI should show."""

from __future__ import annotations

import dagster as dg

from mirror_assets.definitions import defs


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == {"jetstream", "records"}
    assert graph.get(dg.AssetKey("records")).parent_keys == {dg.AssetKey("jetstream")}


def test_ingest_schedule_runs_every_minute_from_the_start() -> None:
    schedule = defs.resolve_schedule_def("ingest_every_minute")
    assert schedule.cron_schedule == "* * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "ingest"
    assert defs.resolve_job_def("ingest").tags["mirror/writer"] == "ingest"
