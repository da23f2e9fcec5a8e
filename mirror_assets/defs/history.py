"""`dagster_history`: Dagster's own history, kept bounded (docs/operations.md).

Dagster keeps every run with its event log and compute logs: a minute schedule alone makes
1,440 runs a day, about half a megabyte each with their logs, never deleted. This asset
deletes old runs the way Dagster's deployment docs clean an instance (`delete_run`, then
the run's compute logs and, on SQLite storage, its event log file): successful runs after
HISTORY_KEEP_SUCCESS_DAYS, failed and canceled ones after HISTORY_KEEP_FAILURE_DAYS.

A run's events are also the assets' history. A run that holds the latest materialization
or observation of an asset, the latest materialization of one of its partitions (a `dids`
partition: a DID's finished backfill) or the latest evaluation of a check is never
deleted, however old: the UI would show the asset as never materialized, the backfill as
missing.
"""

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from mirror_assets.config import HistoryLimits
from mirror_assets.defs.checks import DATA_CHECKS
from mirror_assets.defs.lake import LAKE_CHECKS
from mirror_assets.defs.resources import MirrorResource

MAX_RUNS_PER_PASS = 10_000  # per status group: one pass stays short; the next takes the rest
_STORAGE_IDS_PER_QUERY = 1_000
_DAY = 86_400.0
_ENDED = {
    "success": [dg.DagsterRunStatus.SUCCESS],
    "failure": [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED],
}


@dataclass
class Pruned:
    """What one pass deleted and kept."""

    deleted: Counter[str] = field(default_factory=Counter)  # runs, by status
    kept_for_history: int = 0  # old enough, but holding an asset's or a check's latest event
    bytes_before: int = 0
    bytes_after: int = 0


def runs_holding_latest_events(
    instance: dg.DagsterInstance, check_keys: Iterable[dg.AssetCheckKey]
) -> set[str]:
    """The runs whose events the UI shows as the assets' and checks' current state."""
    held: set[str] = set()
    for key in instance.get_asset_keys():
        latest = instance.get_latest_materialization_event(key)
        if latest is not None:
            held.add(latest.run_id)
        observed = instance.fetch_observations(key, limit=1).records
        held.update(record.run_id for record in observed)
        held.update(_runs_of_latest_partitions(instance, key))
    latest_checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        list(check_keys)
    )
    held.update(record.run_id for record in latest_checks.values())
    return held


def _runs_of_latest_partitions(instance: dg.DagsterInstance, key: dg.AssetKey) -> set[str]:
    """The runs of each partition's latest materialization (none for an unpartitioned key)."""
    by_partition = instance.get_latest_storage_id_by_partition(
        key, DagsterEventType.ASSET_MATERIALIZATION
    )
    storage_ids = sorted(by_partition.values())
    runs: set[str] = set()
    for start in range(0, len(storage_ids), _STORAGE_IDS_PER_QUERY):
        chunk = storage_ids[start : start + _STORAGE_IDS_PER_QUERY]
        found = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, storage_ids=chunk), limit=len(chunk)
        )
        runs.update(record.run_id for record in found.records)
    return runs


def prune_history(
    instance: dg.DagsterInstance,
    limits: HistoryLimits,
    check_keys: Sequence[dg.AssetCheckKey],
    now: float,
) -> Pruned:
    """Delete the runs past their time that hold no latest event; what was done."""
    home = Path(instance.root_directory)
    pruned = Pruned(bytes_before=home_bytes(home))
    held = runs_holding_latest_events(instance, check_keys)
    for status, days in (
        ("success", limits.keep_success_days),
        ("failure", limits.keep_failure_days),
    ):
        ended_before = datetime.fromtimestamp(now - days * _DAY, tz=UTC)
        records = instance.get_run_records(
            filters=dg.RunsFilter(statuses=_ENDED[status], updated_before=ended_before),
            limit=MAX_RUNS_PER_PASS,
        )
        for record in records:
            run_id = record.dagster_run.run_id
            if run_id in held:
                pruned.kept_for_history += 1
                continue
            _delete_run(instance, run_id)
            pruned.deleted[record.dagster_run.status.value.lower()] += 1
    pruned.bytes_after = home_bytes(home)
    return pruned


def _delete_run(instance: dg.DagsterInstance, run_id: str) -> None:
    """The run, its events, its compute logs and, on SQLite storage, its event log file
    (emptied by `delete_run`, but a file per run all the same)."""
    instance.delete_run(run_id)
    instance.compute_log_manager.delete_logs(prefix=[run_id])
    storage = instance.event_log_storage
    if isinstance(storage, SqliteEventLogStorage):
        Path(storage.path_for_shard(run_id)).unlink(missing_ok=True)


def home_bytes(home: Path) -> int:
    """The bytes of every file under DAGSTER_HOME."""
    return sum(path.stat().st_size for path in home.rglob("*") if path.is_file())


@dg.asset(
    group_name="operations",
    kinds={"dagster"},
    description=(
        "Dagster's history of runs, event logs and compute logs, with old runs deleted "
        "(HISTORY_KEEP_SUCCESS_DAYS, HISTORY_KEEP_FAILURE_DAYS); runs holding an asset's, a "
        "partition's or a check's latest event are kept."
    ),
)
def dagster_history(
    context: dg.AssetExecutionContext, mirror: MirrorResource
) -> dg.MaterializeResult[None]:
    started = time.monotonic()
    pruned = prune_history(context.instance, mirror.settings().history, check_keys(), time.time())
    deleted = sum(pruned.deleted.values())
    context.log.info(
        f"{deleted} runs deleted ({dict(pruned.deleted)}), {pruned.kept_for_history} kept for "
        f"the assets' history; {pruned.bytes_before - pruned.bytes_after} bytes freed"
    )
    return dg.MaterializeResult(
        metadata={
            "runs_deleted": deleted,
            **{f"runs_deleted_{status}": n for status, n in sorted(pruned.deleted.items())},
            "runs_kept_for_history": pruned.kept_for_history,
            "bytes_freed": pruned.bytes_before - pruned.bytes_after,
            "dagster_home_bytes": pruned.bytes_after,
            "seconds": round(time.monotonic() - started, 2),
        }
    )


@dg.asset_check(
    asset=dagster_history,
    description="Warns when DAGSTER_HOME is larger than HISTORY_WARN_BYTES.",
)
def history_size(
    context: dg.AssetCheckExecutionContext, mirror: MirrorResource
) -> dg.AssetCheckResult:
    size = home_bytes(Path(context.instance.root_directory))
    bound = mirror.settings().history.warn_bytes
    return dg.AssetCheckResult(
        passed=size <= bound,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"dagster_home_bytes": size, "warn_bytes": bound},
    )


def check_keys() -> list[dg.AssetCheckKey]:
    """Every check of the mirror, whose latest evaluation the history keeps."""
    every = (*DATA_CHECKS, history_size, *LAKE_CHECKS)
    return [key for checks in every for key in checks.check_keys]
