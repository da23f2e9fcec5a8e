"""The mirror's jobs. Each is tagged with the kind of writer it is: dagster.yaml limits how
many runs of each kind share the DuckDB file's writer lock at once."""

import dagster as dg

from mirror_assets.defs.analytics import collection_summaries, daily_activity
from mirror_assets.defs.backfill import did_backfill
from mirror_assets.defs.checks import cursor_fresh, few_failed_backfills, records_integrity
from mirror_assets.defs.clustering import recluster_records
from mirror_assets.defs.discovery import discovered_repos
from mirror_assets.defs.exports import parquet_exports
from mirror_assets.defs.history import dagster_history
from mirror_assets.defs.identities import account_identities
from mirror_assets.defs.ingest import records
from mirror_assets.names import (
    BACKFILL_JOB,
    CHECKS_JOB,
    DISCOVERY_JOB,
    EXPORT_JOB,
    HISTORY_JOB,
    IDENTITIES_JOB,
    INGEST_JOB,
    RECLUSTER_JOB,
    WRITER_TAG,
)

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]

ingest_job = dg.define_asset_job(
    INGEST_JOB,
    # The scanning checks of `records` run hourly in `checks_job`, not every minute.
    selection=(
        dg.AssetSelection.assets(records, collection_summaries, daily_activity).without_checks()
        | dg.AssetSelection.checks(cursor_fresh)
    ),
    description=(
        "One Jetstream ingest cycle into `records`, then the analytics tables and the "
        "freshness check."
    ),
    tags={WRITER_TAG: INGEST_JOB},
    # One step: a subprocess per step would add a second interpreter start to every minute.
    executor_def=dg.in_process_executor,
)

backfill_job = dg.define_asset_job(
    BACKFILL_JOB,
    selection=dg.AssetSelection.assets(did_backfill).without_checks(),
    description="Backfill a range of DIDs from their PDSes.",
    tags={WRITER_TAG: BACKFILL_JOB},
    executor_def=dg.in_process_executor,
)

discovery_job = dg.define_asset_job(
    DISCOVERY_JOB,
    selection=[discovered_repos],
    description="Queue every repo the relay lists for a tracked collection.",
    tags={WRITER_TAG: DISCOVERY_JOB},
    executor_def=dg.in_process_executor,
)

identities_job = dg.define_asset_job(
    IDENTITIES_JOB,
    selection=[account_identities],
    description="Read again the DID documents of changed identities and verify their handles.",
    tags={WRITER_TAG: IDENTITIES_JOB},
    executor_def=dg.in_process_executor,
)

checks_job = dg.define_asset_job(
    CHECKS_JOB,
    selection=dg.AssetSelection.checks(records_integrity, few_failed_backfills),
    description="The integrity and backfill checks, which read the whole file.",
    executor_def=dg.in_process_executor,
)

# Exports only read the file: they take no writer slot.
export_job = dg.define_asset_job(
    EXPORT_JOB,
    selection=[parquet_exports],
    description="Parquet snapshots of every tracked collection, for analysts.",
    executor_def=dg.in_process_executor,
)


# Dagster's own storage, not the DuckDB file: no writer slot.
history_job = dg.define_asset_job(
    HISTORY_JOB,
    selection=[dagster_history],
    description="Delete old runs from Dagster's history, keeping those the assets' history needs.",
    executor_def=dg.in_process_executor,
)


@dg.job(
    name=RECLUSTER_JOB,
    description="Put the records table back in time order, so pages read few row groups.",
    tags={WRITER_TAG: RECLUSTER_JOB},
    executor_def=dg.in_process_executor,
)
def recluster_job() -> None:
    recluster_records()


def in_flight(instance: dg.DagsterInstance, job_name: str) -> list[dg.DagsterRun]:
    """Runs of the job that are queued, starting, running or being canceled."""
    records = instance.get_run_records(filters=dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT))
    return [record.dagster_run for record in records]
