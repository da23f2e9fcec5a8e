"""The production layout, run as its systemd units would run it: the commands of
`deploy/systemd/*.service`, with the paths of this checkout and the variables of
`deploy/mirror.env`, as four separate processes (code server, webserver, daemon, API).

systemd itself is not here: the test reads each unit's ExecStartPre and ExecStart lines,
expands `${VAR}` from the environment file as systemd does, and runs them. What it checks is
what a deployment needs: the webserver serves the code location from the code server, the
daemon's minute schedule ingests from Jetstream, and the API answers what was ingested.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.events_factory import CARD, create, did
from tests.support.jetstream_server import JetstreamServer
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
INSTALLED_AT = "/opt/atproto-mirror"
UNITS = ("code", "webserver", "daemon", "api")  # in the order they are started
_VARIABLE = re.compile(r"\$\{(\w+)\}")
_LOCATION = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""
_INGEST_RUNS = """
{ runsOrError(filter: {pipelineName: "ingest"}) { ... on Runs { results { status } } } }
"""


def environment_file(path: Path) -> dict[str, str]:
    """`NAME=value` lines, as systemd's EnvironmentFile= reads them (# starts a comment)."""
    env = {}
    for line in path.read_text().splitlines():
        name, equals, value = line.partition("=")
        if equals and not name.lstrip().startswith("#"):
            env[name.strip()] = value.strip()
    return env


def unit_commands(unit: str, env: dict[str, str]) -> list[list[str]]:
    """A unit's ExecStartPre and ExecStart commands, with `${VAR}` expanded and the
    install folder replaced by this checkout (its venv by the one running the tests)."""
    text = (DEPLOY / "systemd" / f"atproto-mirror-{unit}.service").read_text()
    venv_bin = str(Path(sys.executable).parent)
    commands = []
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key not in ("ExecStartPre", "ExecStart"):
            continue
        value = _VARIABLE.sub(lambda m: env[m.group(1)], value)
        value = value.replace(f"{INSTALLED_AT}/.venv/bin", venv_bin).replace(
            INSTALLED_AT, str(ROOT)
        )
        commands.append(shlex.split(value))
    assert commands and commands[-1][0].startswith(venv_bin), f"{unit}: no ExecStart of the venv"
    return commands


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[dict[str, str], JetstreamServer]]:
    with JetstreamServer() as stream:
        env = {
            **os.environ,
            **environment_file(DEPLOY / "mirror.env"),
            "DAGSTER_HOME": str(tmp_path / "dagster"),
            "MIRROR_DB": str(tmp_path / "mirror.duckdb"),
            "EXPORT_DIR": str(tmp_path / "exports"),
            "DAGSTER_PORT": str(free_port()),
            "DAGSTER_CODE_PORT": str(free_port()),
            "API_PORT": str(free_port()),
            "COLLECTIONS": CARD,
            "JETSTREAM_URLS": stream.url,
            "RELAY_URL": "http://127.0.0.1:9",  # no discovery here
            "INGEST_IDLE_SECONDS": "1",
        }
        started: list[subprocess.Popen[bytes]] = []
        try:
            for unit in UNITS:
                *pre, command = unit_commands(unit, env)
                for step in pre:
                    subprocess.run(step, env=env, cwd=ROOT, check=True, capture_output=True)
                log = (tmp_path / f"{unit}.log").open("wb")
                started.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        cwd=ROOT,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
                if unit == "code":
                    _wait_for_port(int(env["DAGSTER_CODE_PORT"]), started[-1])
            yield env, stream
        finally:
            for process in started:
                _stop_group(process)


@pytest.mark.timeout(300)  # the schedule ticks at the next minute: up to a minute and a half
def test_the_units_serve_and_the_schedule_ingests(
    services: tuple[dict[str, str], JetstreamServer],
) -> None:
    env, stream = services
    alice = did("alice")
    event = create(alice, "a1", rev=1, t=0)
    event["time_us"] = time.time_ns() // 1000 - 5_000_000  # a moment ago: the first cycle reads it
    stream.add(event)
    dagster = f"http://127.0.0.1:{env['DAGSTER_PORT']}"
    api = f"http://127.0.0.1:{env['API_PORT']}"

    _until(lambda: httpx.get(f"{dagster}/server_info", timeout=2).status_code == 200, 90)
    [location] = _graphql(dagster, _LOCATION)["workspaceOrError"]["locationEntries"]
    assert location["name"] == "mirror"
    assert location["locationOrLoadError"]["__typename"] == "RepositoryLocation"
    _until(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 60)

    # The daemon ticks `ingest_every_minute` at the next minute: the record reaches the API.
    def ingested() -> bool:
        records = httpx.get(f"{api}/records/{CARD}", timeout=5).json()["records"]
        return [record["did"] for record in records] == [alice]

    _until(ingested, 150)

    def ingest_run_succeeded() -> bool:  # after `records`, the run goes on with the summaries
        runs = _graphql(dagster, _INGEST_RUNS)["runsOrError"]
        return "SUCCESS" in {run["status"] for run in runs["results"]}

    _until(ingest_run_succeeded, 60)


def _graphql(url: str, query: str) -> dict[str, object]:
    body = httpx.post(f"{url}/graphql", json={"query": query}, timeout=30).json()
    assert "errors" not in body, body
    data: dict[str, object] = body["data"]
    return data


def _until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (httpx.TransportError, KeyError, ValueError):
            pass
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(1)


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, "the code server exited"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, "the code server did not listen"
        time.sleep(0.25)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a service and what it started (a code server's run processes)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
