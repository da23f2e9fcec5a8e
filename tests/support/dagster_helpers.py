"""Running the mirror's own Dagster jobs in the test process, as `mirror ingest` does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dagster as dg

from mirror_assets.defs.backfill import DIDS
from mirror_assets.defs.definitions import build_definitions
from mirror_assets.defs.jobs import BACKFILL_JOB
from mirror_assets.defs.resources import MirrorResource
from mirror_assets.defs.sensors import PARTITION, RANGE_END, RANGE_START


def run_job(
    mirror: MirrorResource, job: str, instance: dg.DagsterInstance | None = None
) -> dg.ExecuteInProcessResult:
    """One run of the job, recorded in `instance` (a fresh test instance if none); a failure
    is reported in the result, not raised."""
    definition = build_definitions(mirror).resolve_job_def(job)
    if instance is not None:
        return definition.execute_in_process(instance=instance, raise_on_error=False)
    with dg.instance_for_test() as fresh:
        return definition.execute_in_process(instance=fresh, raise_on_error=False)


def run_backfill_job(
    mirror: MirrorResource, instance: dg.DagsterInstance, dids: Sequence[str]
) -> dg.ExecuteInProcessResult:
    """One backfill run over these DIDs' partitions (added in this order, as the sensor adds
    them), a range run when there are several; a failure is reported in the result."""
    instance.add_dynamic_partitions(
        DIDS, [did for did in dids if not instance.has_dynamic_partition(DIDS, did)]
    )
    tags = {RANGE_START: dids[0], RANGE_END: dids[-1]} if len(dids) > 1 else {PARTITION: dids[0]}
    definition = build_definitions(mirror).resolve_job_def(BACKFILL_JOB)
    return definition.execute_in_process(instance=instance, tags=tags, raise_on_error=False)


def metadata_of(event: dg.AssetMaterialization | dg.AssetObservation) -> dict[str, Any]:
    """An event's metadata as plain values."""
    return {key: getattr(value, "value", value) for key, value in event.metadata.items()}
