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
        ],
        asset_checks=[*DATA_CHECKS, history_size],
        jobs=[
            ingest_job,
            backfill_job,
            discovery_job,
            identities_job,
            checks_job,
            export_job,
            recluster_job,
            history_job,
        ],
        schedules=[
            ingest_every_minute,
            discovery_daily,
            checks_hourly,
            exports_schedule(mirror.export_cron),
            recluster_daily,
            history_daily,
        ],
        sensors=[backfill_sensor, discovery_sensor, identity_sensor],
        resources={"mirror": mirror},
    )


defs = build_definitions(MirrorResource.from_env())
