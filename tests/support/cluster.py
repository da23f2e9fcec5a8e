"""Machines of a mirror cluster on one host (docs/scale-out.md): groups of processes, each in
a working folder of its own, sharing only Postgres (Dagster's storage and the lake's
catalog) and the lake's data path.

A worker group runs a code server (`dagster code-server start`, as deploy/systemd and the
Helm values start it), where the cluster's run launcher places runs; the control group
also runs the daemon (schedules, sensors, the run queue, run monitoring) against
deploy/cluster/workspace.yaml. Every Dagster process reads deploy/cluster/dagster.yaml
from its own DAGSTER_HOME. For the two-machine test and the cluster benchmark.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mirror_assets.config import LAKE_PREFIX, LakeLocation
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "cluster"
BIN = Path(sys.executable).parent
START_SECONDS = 90.0  # a code server's imports and first load, on a loaded 2-core machine


def code_server_command(port: int) -> list[str]:
    """The worker's code server, as the deployment recipes start it."""
    return [
        str(BIN / "dagster"),
        *("code-server", "start", "-h", "127.0.0.1", "-p", str(port)),
        *("-m", "mirror_assets.defs.definitions", "--location-name", "mirror"),
    ]


def cluster_env(
    dagster_url: str, lake: LakeLocation, workers: list[int], **settings: str
) -> dict[str, str]:
    """What every machine of the cluster is given: where Dagster keeps its runs, the lake,
    the workers' code servers; `settings` on top."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DAGSTER_POSTGRES_URL": dagster_url,
        "MIRROR_STORE": LAKE_PREFIX + lake.catalog,
        "MIRROR_DATA_PATH": lake.data_path,
        "MIRROR_WORKERS": ",".join(f"127.0.0.1:{port}" for port in workers),
        **settings,
    }


@dataclass
class Group:
    """One machine: its folder, environment and processes (each in a session of its own)."""

    name: str
    folder: Path
    env: dict[str, str]
    code_port: int
    api_port: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self, name: str, command: list[str], env: Mapping[str, str] = {}) -> None:
        with (self.folder / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                command,
                env={**self.env, **env},
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL every process of the machine, and what each started (runs, API workers)."""
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self.processes.clear()

    def stop(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
        self.kill()


def new_group(name: str, folder: Path, env: Mapping[str, str], code_port: int) -> Group:
    """A machine's folder with its own DAGSTER_HOME holding the cluster's dagster.yaml."""
    folder.mkdir(parents=True)
    home = folder / "dagster"
    home.mkdir()
    shutil.copyfile(CLUSTER / "dagster.yaml", home / "dagster.yaml")
    machine_env = {
        **env,
        "DAGSTER_HOME": str(home),
        "MIRROR_DB": str(folder / "unused.duckdb"),  # the lake is the store
        "EXPORT_DIR": str(folder / "exports"),
    }
    return Group(name, folder, machine_env, code_port, free_port())


def migrate(group: Group) -> None:
    """Dagster's tables in Postgres and the lake's schema, made once before any service."""
    for command in ([str(BIN / "dagster"), "instance", "migrate"], [str(BIN / "mirror"), "init"]):
        done = subprocess.run(command, env=group.env, cwd=group.folder, capture_output=True)
        assert done.returncode == 0, f"{command}: {done.stderr.decode()[-3000:]}"


def start_worker(group: Group) -> None:
    """The machine's code server, waited for until it listens."""
    group.start("code", code_server_command(group.code_port))
    _wait_for_port(group, "code", group.code_port)


def start_control(group: Group) -> None:
    """The daemon, loading the code from this machine's code server."""
    workspace = str(CLUSTER / "workspace.yaml")
    code = {"DAGSTER_CODE_HOST": "127.0.0.1", "DAGSTER_CODE_PORT": str(group.code_port)}
    group.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", workspace], code)


def start_api(group: Group) -> None:
    """`mirror api` on the machine's port, waited for until it listens."""
    group.start("api", [str(BIN / "mirror"), "api"], {"API_PORT": str(group.api_port)})
    _wait_for_port(group, "api", group.api_port)


def _wait_for_port(group: Group, name: str, port: int) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        assert group.processes[name].poll() is None, f"{name} exited:\n{group.log(name)}"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, f"{name} did not listen:\n{group.log(name)}"
        time.sleep(0.25)
