"""The Dagster definitions of the mirror: `dagster dev -w workspace.yaml` loads `defs`."""

from __future__ import annotations

import dagster as dg

from mirror_assets.defs.analytics import collection_summaries, daily_activity
from mirror_assets.defs.backfill import did_backfill, pds
from mirror_assets.defs.checks import DATA_CHECKS
from mirror_assets.defs.discovery import discovered_repos, relay
from mirror_assets.defs.exports import parquet_exports
from mirror_assets.defs.history import dagster_history, history_size
from mirror_assets.defs.identities import account_identities, identity_sources
from mirror_assets.defs.ingest import jetstream, records
from mirror_assets.defs.jobs import (
    backfill_job,
    checks_job,
    discovery_job,
    export_job,
    history_job,
    identities_job,
    ingest_job,
    recluster_job,
)
from mirror_assets.defs.lake import (
    LAKE_ASSETS,
    LAKE_CHECKS,
    lake_maintenance_hourly,
    lake_maintenance_job,
)
from mirror_assets.defs.resources import MirrorResource
from mirror_assets.defs.schedules import (
    checks_hourly,
    discovery_daily,
    exports_schedule,
    history_daily,
    ingest_every_minute,
    recluster_daily,
)
from mirror_assets.defs.sensors import backfill_sensor, discovery_sensor, identity_sensor


def build_definitions(mirror: MirrorResource) -> dg.Definitions:
    """The mirror's definitions. The store decides its upkeep: the file is reclustered
    nightly, the lake's files and snapshots are kept few hourly (defs/lake.py)."""
    on_lake = mirror.settings().lake is not None
    return dg.Definitions(
        assets=[
            jetstream,
            pds,
            relay,
            identity_sources,
            records,
            account_identities,
            discovered_repos,
            did_backfill,
            collection_summaries,
            daily_activity,
            parquet_exports,
            dagster_history,
            *(LAKE_ASSETS if on_lake else []),
        ],
        asset_checks=[*DATA_CHECKS, history_size, *(LAKE_CHECKS if on_lake else [])],
        jobs=[
            ingest_job,
            backfill_job,
            discovery_job,
            identities_job,
            checks_job,
            export_job,
            lake_maintenance_job if on_lake else recluster_job,
            history_job,
        ],
        schedules=[
            ingest_every_minute,
            discovery_daily,
            checks_hourly,
            exports_schedule(mirror.export_cron),
            lake_maintenance_hourly if on_lake else recluster_daily,
            history_daily,
        ],
        sensors=[backfill_sensor, discovery_sensor, identity_sensor],
        resources={"mirror": mirror},
    )


defs = build_definitions(MirrorResource.from_env())
