"""Running the mirror's own Dagster jobs in the test process, as `mirror ingest` does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg

# Internal, but the only way to build a queued run without a running code server.
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from mirror_assets.config import Settings
from mirror_assets.defs.definitions import build_definitions
from mirror_assets.defs.resources import IngestConfig, MirrorResource
from mirror_assets.defs.sensors import RANGE_END, RANGE_START
from mirror_assets.names import BACKFILL_JOB, DIDS, PARTITION_TAG, REPOSITORY
from tests.support.events_factory import CARD


def lake_definitions() -> dg.Definitions:
    """The definitions of a mirror in a DuckLake (building them connects to nothing)."""
    lake = Settings(store="ducklake:postgres:dbname=mirror", data_path="/srv/lake/")
    return build_definitions(MirrorResource.from_settings(lake))


def ingest_mirror(
    db: Path, jetstream_url: str, collections: str = CARD, **ingest: Any
) -> MirrorResource:
    """A mirror of `db` that ingests `collections` from one Jetstream and ends a cycle after
    half a second without events; `ingest` sets other IngestConfig fields."""
    return MirrorResource(
        db_path=str(db),
        collections=collections,
        jetstream_urls=jetstream_url,
        ingest=IngestConfig(**{"idle_seconds": 0.5, **ingest}),
    )


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
    tags = (
        {RANGE_START: dids[0], RANGE_END: dids[-1]} if len(dids) > 1 else {PARTITION_TAG: dids[0]}
    )
    definition = build_definitions(mirror).resolve_job_def(BACKFILL_JOB)
    return definition.execute_in_process(instance=instance, tags=tags, raise_on_error=False)


def metadata_of(
    event: dg.AssetMaterialization | dg.AssetObservation | dg.AssetCheckEvaluation,
) -> dict[str, Any]:
    """An event's metadata (or a check evaluation's) as plain values."""
    return {key: getattr(value, "value", value) for key, value in event.metadata.items()}


def add_run(
    instance: dg.DagsterInstance,
    job: str,
    status: dg.DagsterRunStatus,
    tags: dict[str, str] | None = None,
) -> dg.DagsterRun:
    """A run of the job that the instance holds with this status (queued, running, ...), as
    the daemon leaves it. Dagster requires a queued run to name where its job's code lives."""
    location = InProcessCodeLocationOrigin(
        loadable_target_origin=LoadableTargetOrigin(module_name="mirror_assets.defs.definitions")
    )
    origin = RemoteJobOrigin(
        repository_origin=RemoteRepositoryOrigin(
            code_location_origin=location, repository_name=REPOSITORY
        ),
        job_name=job,
    )
    run = dg.DagsterRun(job_name=job, status=status, tags=tags, remote_job_origin=origin)
    return instance.add_run(run)
