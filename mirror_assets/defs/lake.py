"""The lake's housekeeping as assets, hourly (store/maintenance.py, docs/scale-out.md): a
chain of four steps, each showing what the lake holds after it, and two checks that warn
when housekeeping falls behind. Only in the definitions of a mirror that lives in a lake.
"""

from collections.abc import Callable
from datetime import timedelta

import dagster as dg
import duckdb

from mirror_assets.defs.resources import MirrorResource
from mirror_assets.names import LAKE_MAINTENANCE_JOB, WRITER_TAG
from mirror_assets.store import maintenance
from mirror_assets.store.lake import LakeStore

GROUP = "lake"
# A snapshot older than the expiry by this much means expiry is not running.
EXPIRY_SLACK = timedelta(hours=2)


def _lake(mirror: MirrorResource) -> LakeStore:
    lake = mirror.settings().lake
    assert lake is not None, "the lake's assets are only in a lake's definitions"
    return LakeStore(lake)


def _step(
    mirror: MirrorResource, name: str, step: Callable[[duckdb.DuckDBPyConnection], int]
) -> dg.MaterializeResult[None]:
    """Run one housekeeping step in a transaction; its count and the lake's footprint."""
    store = _lake(mirror)
    try:
        done, conflict_seconds = store.housekeep(step)
        after = _footprint(mirror, store)
    finally:
        store.close()
    return dg.MaterializeResult(
        metadata={
            name: done,
            "data_files": after.data_files,
            "data_bytes": dg.MetadataValue.int(after.data_bytes),
            "small_files": after.small_files,
            "delete_files": after.delete_files,
            "snapshots": after.snapshots,
            "oldest_snapshot_hours": round(after.oldest_snapshot_hours, 2),
            "conflict_wait_seconds": round(conflict_seconds, 2),
        }
    )


@dg.asset(
    group_name=GROUP,
    description="Rows small commits kept in the catalog (inlined), written out as Parquet.",
)
def lake_flushed_inlines(mirror: MirrorResource) -> dg.MaterializeResult[None]:
    return _step(mirror, "tables_flushed", maintenance.flush_inlined)


@dg.asset(
    group_name=GROUP,
    deps=[lake_flushed_inlines],
    description="Adjacent small data files merged; files mostly of replaced rows rewritten.",
)
def lake_compacted_files(mirror: MirrorResource) -> dg.MaterializeResult[None]:
    return _step(mirror, "files_written", maintenance.compact)


@dg.asset(
    group_name=GROUP,
    deps=[lake_compacted_files],
    description="Snapshots older than LAKE_KEEP_SNAPSHOT_HOURS expired.",
)
def lake_expired_snapshots(mirror: MirrorResource) -> dg.MaterializeResult[None]:
    keep = timedelta(hours=mirror.settings().lake_limits.keep_snapshot_hours)
    return _step(mirror, "snapshots_expired", lambda con: maintenance.expire_snapshots(con, keep))


@dg.asset(
    group_name=GROUP,
    deps=[lake_expired_snapshots],
    description="Files no snapshot references any more, deleted from the data path.",
)
def lake_deleted_files(mirror: MirrorResource) -> dg.MaterializeResult[None]:
    return _step(mirror, "files_deleted", maintenance.delete_unreferenced)


def _footprint(mirror: MirrorResource, store: LakeStore) -> maintenance.LakeFootprint:
    with store.reading() as con:
        return maintenance.footprint(con, mirror.settings().lake_limits.small_file_bytes)


def _footprint_now(mirror: MirrorResource) -> maintenance.LakeFootprint:
    store = _lake(mirror)
    try:
        return _footprint(mirror, store)
    finally:
        store.close()


@dg.asset_check(
    asset=lake_compacted_files,
    description="Warns when compaction leaves more small data files than LAKE_SMALL_FILES_WARN.",
)
def few_small_files(mirror: MirrorResource) -> dg.AssetCheckResult:
    small = _footprint_now(mirror).small_files
    bound = mirror.settings().lake_limits.small_files_warn
    return dg.AssetCheckResult(
        passed=small <= bound,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"small_files": small, "small_files_warn": bound},
    )


@dg.asset_check(
    asset=lake_expired_snapshots,
    description="Warns when a snapshot outlives LAKE_KEEP_SNAPSHOT_HOURS by two hours.",
)
def snapshots_expire(mirror: MirrorResource) -> dg.AssetCheckResult:
    oldest = _footprint_now(mirror).oldest_snapshot_hours
    bound = mirror.settings().lake_limits.keep_snapshot_hours + EXPIRY_SLACK.total_seconds() / 3600
    return dg.AssetCheckResult(
        passed=oldest <= bound,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"oldest_snapshot_hours": round(oldest, 2), "warn_hours": bound},
    )


LAKE_ASSETS = [
    lake_flushed_inlines,
    lake_compacted_files,
    lake_expired_snapshots,
    lake_deleted_files,
]
LAKE_CHECKS = [few_small_files, snapshots_expire]

lake_maintenance_job = dg.define_asset_job(
    LAKE_MAINTENANCE_JOB,
    selection=dg.AssetSelection.assets(*LAKE_ASSETS),
    description="The lake's housekeeping: flush, compact, expire snapshots, delete old files.",
    tags={WRITER_TAG: LAKE_MAINTENANCE_JOB},
    executor_def=dg.in_process_executor,
)

lake_maintenance_hourly = dg.ScheduleDefinition(
    name="lake_maintenance_hourly",
    job=lake_maintenance_job,
    cron_schedule="17 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every hour: keep the lake's files and snapshots few.",
)
