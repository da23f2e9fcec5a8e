"""The cluster's run launcher (`mirror_assets/ops/worker_pool.py`) on its own: MIRROR_WORKERS
checked at the door, and a worker that stops answering. Placing runs on live code servers,
and run monitoring failing a killed worker's runs, are in test_two_machines.py."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG

from mirror_assets.ops import worker_pool
from mirror_assets.ops.worker_pool import WorkerPoolRunLauncher, parse_workers
from tests.support.ports import free_port


def test_workers_are_host_port_pairs_in_order() -> None:
    assert parse_workers("10.0.0.5:4000, worker-b.internal:4001") == [
        ("10.0.0.5", 4000),
        ("worker-b.internal", 4001),
    ]


@pytest.mark.parametrize(
    "value", ["", "worker-a", "worker-a:", ":4000", "worker-a:http", "worker-a:70000", "a:1,,b:2"]
)
def test_a_worker_that_is_not_host_port_is_refused_by_name(value: str) -> None:
    with pytest.raises(ValueError, match="is not host:port"):
        parse_workers(value)


def test_a_silent_worker_fails_its_runs_only_after_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent = free_port()  # nothing listens there
    launcher = WorkerPoolRunLauncher(workers=f"127.0.0.1:{silent}")
    with dg.DagsterInstance.ephemeral(tempdir=str(tmp_path)) as instance:
        run = instance.create_run_for_job(
            dg.GraphDefinition("nothing").to_job(),
            tags={GRPC_INFO_TAG: json.dumps({"host": "127.0.0.1", "port": silent})},
        )
        first = launcher.check_run_worker_health(run)
        assert first.status == WorkerStatus.RUNNING and first.msg == "its worker is silent"
        monkeypatch.setattr(worker_pool, "UNREACHABLE_GRACE_SECONDS", 0.0)
        later = launcher.check_run_worker_health(run)
        assert later.status == WorkerStatus.FAILED
        assert f"worker 127.0.0.1:{silent} silent for" in str(later.msg)
