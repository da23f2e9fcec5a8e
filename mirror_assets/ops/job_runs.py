"""The last run of each of the mirror's jobs, read from the Dagster instance (`mirror status`).

Kept apart from `status.py`, which reads the DuckDB file: the two are read one after the
other, and the file's read lock is never held while Dagster's storage is opened.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from mirror_assets.config import Settings


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
    # Loading the assets warns about Dagster's beta parameters they use: noise in a status.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        from mirror_assets.defs.definitions import build_definitions
        from mirror_assets.defs.resources import MirrorResource

        defs = build_definitions(MirrorResource.from_settings(settings))
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
