"""The Dagster definitions of the mirror: `dagster dev -w workspace.yaml` loads `defs`."""

from __future__ import annotations

import dagster as dg

from mirror_assets.records_asset import jetstream, records
from mirror_assets.resources import MirrorResource
from mirror_assets.schedules import ingest_every_minute, ingest_job


def build_definitions(mirror: MirrorResource) -> dg.Definitions:
    return dg.Definitions(
        assets=[jetstream, records],
        jobs=[ingest_job],
        schedules=[ingest_every_minute],
        resources={"mirror": mirror},
    )


defs = build_definitions(MirrorResource.from_env())
