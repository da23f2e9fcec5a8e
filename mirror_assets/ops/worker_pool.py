"""Runs placed on other machines: a run launcher over a pool of code servers.

Dagster's default launcher starts each run in a subprocess of the code server that serves
its code location, so every run lands on that one machine. On a cluster of plain machines
each worker runs the same code server (`dagster code-server start`, docs/scale-out.md), and
this launcher hands each run to one of them by its address: backfill runs to the live
worker with the fewest runs in flight, every other run to the first live worker. Only the
lake store may have several writers on several machines (docs/scale-out.md).

Run monitoring asks it whether a run's worker still runs it. A worker that does not answer
for UNREACHABLE_GRACE_SECONDS, or answers that the run is not among its executions, failed
it: Dagster marks the run failed and the backfill sensor gives its DIDs to a live worker.
On Kubernetes or Docker, Dagster's own launchers do this job instead.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Self

import dagster as dg
from dagster._core.errors import DagsterUserCodeUnreachableError
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._core.launcher.default_run_launcher import DefaultRunLauncher
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._grpc.client import DagsterGrpcClient
from dagster._grpc.types import CanCancelExecutionRequest, CanCancelExecutionResult
from dagster._serdes import ConfigurableClassData, deserialize_value

from mirror_assets.names import BACKFILL_JOB, WRITER_TAG

UNREACHABLE_GRACE_SECONDS = 30.0  # a worker silent this long has lost its runs
ANSWER_TIMEOUT_SECONDS = 5
_RUNNING = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def parse_workers(value: str) -> list[tuple[str, int]]:
    """`host:port,host:port` as (host, port) pairs, in order; a clear error otherwise."""
    workers = []
    for item in (part.strip() for part in value.split(",")):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"worker {item!r} in {value!r} is not host:port (the address of a code server)"
            )
        workers.append((host, int(port)))
    return workers


class WorkerPoolRunLauncher(DefaultRunLauncher):
    """Dagster's default launcher, with the code server chosen per run from a pool."""

    def __init__(self, workers: str, inst_data: ConfigurableClassData | None = None) -> None:
        super().__init__(inst_data=inst_data)
        self._workers = parse_workers(workers)
        self._silent_since: dict[tuple[str, int], float] = {}

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"workers": dg.StringSource}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> Self:
        return cls(workers=config_value["workers"], inst_data=inst_data)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        worker = self._choose(spread=run.tags.get(WRITER_TAG) == BACKFILL_JOB)
        DefaultRunLauncher.launch_run_from_grpc_client(self._instance, run, _client(worker))
        self._run_ids.add(run.run_id)

    def _choose(self, spread: bool) -> tuple[str, int]:
        live = [worker for worker in self._workers if _answers(worker)]
        if not live:
            raise dg.DagsterError(
                f"no worker of MIRROR_WORKERS answers: {_addresses(self._workers)}"
            )
        if not spread:
            return live[0]
        runs = self._instance.get_runs(dg.RunsFilter(statuses=_RUNNING))
        load = Counter(worker_of(run.tags) for run in runs)
        return min(live, key=lambda worker: load[worker])  # min keeps the first of ties

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        worker = worker_of(run.tags)
        if worker is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "the run names no worker")
        try:
            answer = _ask(worker, run.run_id)
        except DagsterUserCodeUnreachableError:
            silent_for = time.monotonic() - self._silent_since.setdefault(worker, time.monotonic())
            if silent_for < UNREACHABLE_GRACE_SECONDS:
                return CheckRunHealthResult(WorkerStatus.RUNNING, "its worker is silent")
            return CheckRunHealthResult(
                WorkerStatus.FAILED, f"worker {_address(worker)} silent for {silent_for:.0f} s"
            )
        self._silent_since.pop(worker, None)
        if answer:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"worker {_address(worker)} no longer runs it"
        )


def _client(worker: tuple[str, int]) -> DagsterGrpcClient:
    return DagsterGrpcClient(host=worker[0], port=worker[1])


def _ask(worker: tuple[str, int], run_id: str) -> bool:
    """Whether the worker runs the run now; raises if it does not answer in time."""
    answer = _client(worker).can_cancel_execution(
        CanCancelExecutionRequest(run_id=run_id), timeout=ANSWER_TIMEOUT_SECONDS
    )
    return deserialize_value(answer, CanCancelExecutionResult).can_cancel


def _answers(worker: tuple[str, int]) -> bool:
    """Whether the worker answers at all (the cheapest question that takes a timeout)."""
    try:
        _ask(worker, "")
    except DagsterUserCodeUnreachableError:
        return False
    return True


def worker_of(tags: Mapping[str, str]) -> tuple[str, int] | None:
    """The worker a launched run was handed to (the default launcher tags its address)."""
    if GRPC_INFO_TAG not in tags:
        return None
    info = json.loads(tags[GRPC_INFO_TAG])
    return (str(info.get("host")), int(info.get("port") or 0))


def _address(worker: tuple[str, int]) -> str:
    return f"{worker[0]}:{worker[1]}"


def _addresses(workers: Sequence[tuple[str, int]]) -> str:
    return ", ".join(map(_address, workers))
