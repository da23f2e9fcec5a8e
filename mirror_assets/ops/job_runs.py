"""The mirror's jobs as Dagster runs seen from the command line: one run in this process,
recorded in the instance (`mirror ingest`, `mirror backfill`), and the last run of each job
(`mirror status`).

Kept apart from `status.py`, which reads the DuckDB file: the two are read one after the
other, and the file's read lock is never held while Dagster's storage is opened. Imported
only by the commands that need Dagster, so the others start fast.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from mirror_assets.config import Settings
from mirror_assets.names import DIDS, WRITER_TAG
from mirror_assets.ops.instance import dagster_home


@dataclass(frozen=True)
class LastRun:
    job: str
    status: str | None  # None: the job has no run yet
    created_at: float | None = None  # Unix times
    started_at: float | None = None
    ended_at: float | None = None

    def describe(self, now: float) -> str:
        if self.status is None:
            return "no runs yet"
        if self.started_at is None:  # queued, or never started
            return f"{self.status}, created {_utc(self.created_at)}"
        started = f"{self.status}, started {_utc(self.started_at)}"
        if self.ended_at is None:
            return f"{started}, running for {now - self.started_at:.1f} s"
        return f"{started}, took {self.ended_at - self.started_at:.1f} s"


def _utc(timestamp: float | None) -> str:
    if timestamp is None:
        return "at an unknown time"
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def job_names(settings: Settings) -> list[str]:
    """The jobs the Definitions declare (not Dagster's implicit asset job)."""
    defs = _definitions(settings)
    return [job.name for job in defs.jobs or ()]


def last_runs(home: Path, jobs: list[str]) -> list[LastRun] | None:
    """The newest run of each job, or None when `home` holds no Dagster instance yet."""
    if not (home / "dagster.yaml").is_file():
        return None
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return [_last_run(instance, job) for job in jobs]


def _last_run(instance: dg.DagsterInstance, job: str) -> LastRun:
    records = instance.get_run_records(filters=dg.RunsFilter(job_name=job), limit=1)
    if not records:
        return LastRun(job, None)
    record = records[0]
    return LastRun(
        job,
        record.dagster_run.status.value.lower(),
        created_at=record.create_timestamp.timestamp(),
        started_at=record.start_time,
        ended_at=record.end_time,
    )


def execute_job(
    settings: Settings,
    job_name: str,
    asset: str,
    partition: str | None = None,
    config: Mapping[str, object] | None = None,
) -> int:
    """Run a job in this process, recorded in the instance; print its metadata or error."""
    dagster_home()
    defs = _definitions(settings)
    job = defs.resolve_job_def(job_name)
    run_config: dict[str, object] = {
        # The run's own event log keeps every detail; the terminal gets the summary.
        "loggers": {"console": {"config": {"log_level": "CRITICAL"}}},
    }
    if config is not None:
        run_config["ops"] = {asset: {"config": config}}
    with dg.DagsterInstance.get() as instance:
        if partition is not None and not instance.has_dynamic_partition(DIDS, partition):
            instance.add_dynamic_partitions(DIDS, [partition])
        result = job.execute_in_process(
            instance=instance,
            tags={WRITER_TAG: job_name},
            run_config=run_config,
            partition_key=partition,
            raise_on_error=False,
        )
    print(f"run {result.run_id}: {'success' if result.success else 'failure'}")
    events: list[dg.AssetObservation | dg.AssetMaterialization] = [
        *result.asset_observations_for_node(asset),
        *result.asset_materializations_for_node(asset),
    ]
    for event in events:
        if event.metadata:
            for key, value in event.metadata.items():
                print(f"  {key}: {getattr(value, 'value', value)}")
        elif event.partition:
            print(f"  done: {event.partition}")
    failure = None if result.success else result.failure_data_for_node(asset)
    if failure is not None and failure.error is not None:
        error = failure.error.cause or failure.error  # the asset's own error, not the wrapper
        print(f"  error: {error.message.strip()}", file=sys.stderr)
    return 0 if result.success else 1


def _definitions(settings: Settings) -> dg.Definitions:
    """The mirror's definitions. Loading the assets warns about the beta parameters of
    Dagster's they use: noise in a terminal, so it is silenced here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        from mirror_assets.defs.definitions import build_definitions
        from mirror_assets.defs.resources import MirrorResource

        return build_definitions(MirrorResource.from_settings(settings))
