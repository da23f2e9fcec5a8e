"""The Dagster definitions of the mirror: `dagster dev -w workspace.yaml` loads `defs`."""

from __future__ import annotations

import dagster as dg

from mirror_assets.backfill_asset import did_backfill, pds
from mirror_assets.discovery_asset import discovered_repos, relay
from mirror_assets.jobs import backfill_job, discovery_job, ingest_job
from mirror_assets.records_asset import jetstream, records
from mirror_assets.resources import MirrorResource
from mirror_assets.schedules import discovery_daily, ingest_every_minute
from mirror_assets.sensors import backfill_sensor, discovery_sensor
from mirror_assets.summaries_asset import collection_summaries


def build_definitions(mirror: MirrorResource) -> dg.Definitions:
    return dg.Definitions(
        assets=[
            jetstream,
            pds,
            relay,
            records,
            discovered_repos,
            did_backfill,
            collection_summaries,
        ],
        jobs=[ingest_job, backfill_job, discovery_job],
        schedules=[ingest_every_minute, discovery_daily],
        sensors=[backfill_sensor, discovery_sensor],
        resources={"mirror": mirror},
    )


defs = build_definitions(MirrorResource.from_env())
