"""The mirror as a Dagster deployment runs it, one step at a time, against a real instance.

Settings come from the environment variables an operator sets (`Settings.from_env`). Each
step does what the deployment's schedule or sensor would, through the same definitions
(`build_definitions`): the `ingest` job, the discovery sensor and its job, the backfill
sensor with its dynamic partitions and range runs. The Dagster instance keeps its storage
in a folder of its own, so a restart (a new `Pipeline` over the same folder and file)
finds the runs and partitions the old one left behind.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg

from mirror_assets.config import Settings
from mirror_assets.defs.definitions import build_definitions
from mirror_assets.defs.jobs import in_flight
from mirror_assets.defs.resources import MirrorResource
from mirror_assets.defs.sensors import backfill_sensor, discovery_sensor, identity_sensor
from mirror_assets.names import BACKFILL_JOB, DISCOVERY_JOB, IDENTITIES_JOB, INGEST_JOB

MAX_SENSOR_TICKS = 20  # a backfill that needs more launches than this does not converge


class Pipeline:
    """The mirror's Dagster side over one instance; `settings` are the operator's."""

    def __init__(self, instance: dg.DagsterInstance, settings: Settings) -> None:
        self.instance = instance
        self.settings = settings
        self.mirror = MirrorResource.from_settings(settings)
        self._defs = build_definitions(self.mirror)

    def with_run_seconds(self, seconds: float) -> Pipeline:
        """The same pipeline with another BACKFILL_RUN_SECONDS: how long a backfill run
        starts new pages."""
        backfill = self.settings.backfill.model_copy(update={"run_seconds": seconds})
        return Pipeline(self.instance, replace(self.settings, backfill=backfill))

    # -- the steps ----------------------------------------------------------------------------
    def ingest(self) -> dict[str, Any]:
        """One run of the `ingest` job (as its schedule starts it); the `records` metadata."""
        result = self._execute(INGEST_JOB, {})
        [materialization] = result.asset_materializations_for_node("records")
        return {key: getattr(v, "value", v) for key, v in materialization.metadata.items()}

    def discover(self) -> bool:
        """Evaluate the discovery sensor and run what it asks for; whether it asked."""
        context = dg.build_sensor_context(instance=self.instance, resources={"mirror": self.mirror})
        request = discovery_sensor(context)
        if not isinstance(request, dg.RunRequest):
            return False
        self._execute(DISCOVERY_JOB, {})
        return True

    def check_identities(self) -> bool:
        """Evaluate the identity sensor and run what it asks for; whether it asked."""
        context = dg.build_sensor_context(instance=self.instance, resources={"mirror": self.mirror})
        if not isinstance(identity_sensor(context), dg.RunRequest):
            return False
        self._execute(IDENTITIES_JOB, {})
        return True

    def backfill(self) -> int:
        """Tick the backfill sensor and run each range it launches until nothing is due;
        the number of runs."""
        runs = 0
        for _ in range(MAX_SENSOR_TICKS):
            launched = self.backfill_tick()
            if not launched:
                return runs
            runs += launched
        raise AssertionError(f"backfills still due after {MAX_SENSOR_TICKS} sensor ticks")

    def backfill_tick(self) -> int:
        """One tick of the backfill sensor, its partitions added and its runs executed."""
        launches = self.plan_backfills()
        for tags in launches:
            self.run_backfill(tags)
        return len(launches)

    def plan_backfills(self) -> list[dict[str, str]]:
        """Evaluate the backfill sensor and add the partitions it asks for, as the daemon
        does; the tags of each run it asks for."""
        context = dg.build_sensor_context(instance=self.instance, resources={"mirror": self.mirror})
        result = backfill_sensor(context)
        if isinstance(result, dg.SkipReason):
            return []
        assert isinstance(result, dg.SensorResult), result
        for request in result.dynamic_partitions_requests or []:
            assert isinstance(request, dg.AddDynamicPartitionsRequest)
            self.instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        return [dict(r.tags) for r in result.run_requests or [] if isinstance(r, dg.RunRequest)]

    def run_backfill(self, tags: dict[str, str]) -> None:
        self._execute(BACKFILL_JOB, tags)

    def catch_up(self) -> None:
        """What a deployment reaches once its schedule and sensors have all had their turn:
        live events in, due backfills done, identities checked, then an ingest cycle, which
        also rebuilds the summaries behind /users and /stats."""
        self.ingest()
        self.discover()
        self.backfill()
        self.check_identities()
        self.ingest()

    def _execute(self, job: str, tags: dict[str, str]) -> dg.ExecuteInProcessResult:
        result = self._defs.resolve_job_def(job).execute_in_process(
            instance=self.instance, tags=tags, raise_on_error=False
        )
        assert result.success, f"the {job} run failed: {_failure(result)}"
        return result


def _failure(result: dg.ExecuteInProcessResult) -> str:
    failures = [
        str(event.step_failure_data.error)
        for event in result.all_events
        if event.is_step_failure and event.step_failure_data is not None
    ]
    return "; ".join(failures) or "no step failed"


def fail_dead_runs(instance: dg.DagsterInstance) -> int:
    """Mark the runs whose process died failed, as the daemon's run monitoring does
    (dagster.yaml enables it); how many there were."""
    dead = in_flight(instance, BACKFILL_JOB) + in_flight(instance, INGEST_JOB)
    for run in dead:
        instance.report_run_failed(run)
    return len(dead)


@contextmanager
def running_pipeline(dagster_home: Path) -> Iterator[Pipeline]:
    """A pipeline with the settings of the environment, over the instance in `dagster_home`
    (created on first use, found again by a later call: a restart)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    with dg.instance_for_test(temp_dir=str(dagster_home)) as instance:
        yield Pipeline(instance, Settings.from_env(env_file=None))


def main(arguments: list[str]) -> None:
    """`python -m tests.interop.pipeline DAGSTER_HOME TAGS_JSON`: one backfill run in a
    process of its own, which a scenario can kill midway."""
    home, tags = Path(arguments[0]), json.loads(arguments[1])
    with running_pipeline(home) as pipeline:
        pipeline.run_backfill(tags)


if __name__ == "__main__":
    main(sys.argv[1:])
