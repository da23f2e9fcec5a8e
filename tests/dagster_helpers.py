"""Running the mirror's own Dagster jobs in the test process, as `mirror ingest` does."""

from __future__ import annotations

import dagster as dg

from mirror_assets.definitions import build_definitions
from mirror_assets.resources import MirrorResource


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
