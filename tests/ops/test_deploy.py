"""The production layout, run as its systemd units would run it
(`tests/support/deploy_units.py`): the code server, the webserver, the daemon and the API as
four separate processes. What it checks is what a deployment needs: the webserver serves
the code location from the code server, the daemon's minute schedule ingests from
Jetstream, and the API answers what was ingested. systemd itself is not run.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.deploy_units import UNITS, local_environment, start_unit, stop_unit
from tests.support.events_factory import CARD, create, did
from tests.support.jetstream_server import JetstreamServer

_LOCATION = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""
_INGEST_RUNS = """
{ runsOrError(filter: {pipelineName: "ingest"}) { ... on Runs { results { status } } } }
"""


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[dict[str, str], JetstreamServer]]:
    with JetstreamServer() as stream:
        env = local_environment(tmp_path, stream.url, INGEST_IDLE_SECONDS="1")
        started: list[subprocess.Popen[bytes]] = []
        try:
            for unit in UNITS:
                started.append(start_unit(unit, env, tmp_path / f"{unit}.log"))
            yield env, stream
        finally:
            for process in started:
                stop_unit(process)


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
