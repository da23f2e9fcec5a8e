"""`?did=` asks Dagster for backfills within global bounds (docs/api.md, "`?did=`").

A real Dagster webserver (`dagster-webserver` over the project's workspace.yaml) runs on
127.0.0.1 with a fresh instance and no daemon, so every run the API launches stays QUEUED:
exactly the runs that would take the backfill places from the mirror's own work. The API
runs through Litestar's test client and asks that webserver, as `mirror run` wires it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from mirror_api.services import backfill_trigger
from mirror_api.services.backfill_trigger import BackfillTrigger
from mirror_api.services.dagster_client import DagsterClient
from mirror_assets.config import Settings
from tests.support.api_helpers import ROOT, api_client, set_backfill, settings_for
from tests.support.events_factory import CARD, create, did
from tests.support.ports import free_port
from tests.support.store_helpers import apply_events

Client = TestClient[Litestar]
WEBSERVER = str(Path(sys.executable).parent / "dagster-webserver")
API_TAG = {"mirror/requested_by": "api"}


@dataclass(frozen=True)
class Dagster:
    url: str
    home: Path

    def runs_of(self, did_: str) -> list[dg.DagsterRun]:
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            return list(instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": did_})))

    def in_flight(self) -> int:
        """The runs the API asked for that are queued or running, as Dagster counts them."""
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            return len(instance.get_runs(filters=dg.RunsFilter(tags=API_TAG, statuses=_FLYING)))

    def cancel_api_runs(self) -> None:
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            for run in instance.get_runs(filters=dg.RunsFilter(tags=API_TAG, statuses=_FLYING)):
                instance.report_run_canceled(run)

    def wait_for_runs(self, did_: str, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.runs_of(did_)) < count:
            assert time.monotonic() < deadline, f"no run {count} for {did_} within {timeout} s"
            time.sleep(0.1)


_FLYING = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@pytest.fixture(scope="module")
def dagster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dagster]:
    """The project's Dagster webserver, without a daemon, over a fresh instance."""
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MIRROR_DB": str(home / "mirror.duckdb"),
        "PYTHONPATH": str(ROOT),
    }
    with (home / "webserver.log").open("w") as log:
        command = [WEBSERVER, "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1"]
        process = subprocess.Popen(
            [*command, "-p", str(port)],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its code server is in the same group, for the teardown
        )
        try:
            _wait_for(f"http://127.0.0.1:{port}/server_info", process, home / "webserver.log")
            _require_code_location(f"http://127.0.0.1:{port}/graphql")
            yield Dagster(f"http://127.0.0.1:{port}", home)
        finally:
            _stop_group(process)


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer: {log.read_text()[-3000:]}"
        time.sleep(0.25)


_LOCATIONS = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


def _require_code_location(graphql_url: str) -> None:
    """The project's definitions loaded: without them, no run can be launched at all."""
    body = httpx.post(graphql_url, json={"query": _LOCATIONS}, timeout=30).json()
    [entry] = body["data"]["workspaceOrError"]["locationEntries"]
    loaded = entry["locationOrLoadError"]
    assert loaded["__typename"] == "RepositoryLocation", (
        f"mirror_assets.defs.definitions did not load in Dagster: {loaded}"
    )


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "mirror.duckdb"
    apply_events(path, [create(did("someone"), "s1", rev=1, t=1)])
    return path


def _settings(db: Path, dagster: Dagster, in_flight: int) -> Settings:
    """`?did=` asks the test's Dagster; the answer waits only briefly for the backfill (the
    runs stay queued), and the test waits for the asks themselves."""
    return replace(
        settings_for(db, backfill_wait_seconds=0.05),
        dagster_url=dagster.url,
        api_backfills_in_flight=in_flight,
    )


def _ask(client: Client, did_: str) -> dict[str, object]:
    """A first page with `?did=`; returns once the API's ask to Dagster, if any, is over
    (the request itself stops waiting for it after API_BACKFILL_WAIT_SECONDS)."""
    response = client.get(f"/records/{CARD}", params={"did": did_})
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 20
    while _trigger(client).asks_under_way:
        assert time.monotonic() < deadline, "the ask to Dagster did not finish"
        time.sleep(0.02)
    body: dict[str, object] = response.json()
    return body


def _trigger(client: Client) -> BackfillTrigger:
    trigger: BackfillTrigger = client.app.state.services.backfills
    return trigger


class _Kept(logging.Handler):
    """The trigger's log records, kept on its own logger: the app's logging setup replaces
    the root logger's handlers, pytest's among them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in message for message in self.messages):
            assert time.monotonic() < deadline, f"never logged: {text}; logged: {self.messages}"
            time.sleep(0.05)


@pytest.fixture
def trigger_log() -> Iterator[_Kept]:
    logger = logging.getLogger(backfill_trigger.__name__)
    kept, level = _Kept(), logger.level
    logger.addHandler(kept)
    logger.setLevel(logging.INFO)
    try:
        yield kept
    finally:
        logger.removeHandler(kept)
        logger.setLevel(level)


def test_the_dagster_client_counts_the_apis_runs_in_flight(dagster: Dagster) -> None:
    client = DagsterClient(f"{dagster.url}/graphql")
    before = asyncio.run(client.backfills_in_flight())
    assert before == dagster.in_flight()
    asyncio.run(client.launch_backfill(did("counted"), CARD))
    assert asyncio.run(client.backfills_in_flight()) == before + 1
    dagster.cancel_api_runs()
    assert asyncio.run(client.backfills_in_flight()) == 0


def test_no_run_is_launched_while_the_apis_runs_fill_their_places(
    dagster: Dagster, db: Path, trigger_log: _Kept, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backfill_trigger, "FULL_RECHECK_SECONDS", 0.2)
    dagster.cancel_api_runs()
    first, second, third, fourth = (did(f"bound{n}") for n in range(4))
    with api_client(_settings(db, dagster, in_flight=2)) as client:
        for user in (first, second):
            _ask(client, user)
            dagster.wait_for_runs(user, 1)
        assert dagster.in_flight() == 2

        body = _ask(client, third)  # two in flight already: answered without a run
        trigger_log.wait_for(f"not asking Dagster to backfill {third}")
        assert body == {
            "records": [],
            "backfill": {"did": third, "collection": CARD, "status": "unknown", "state": None},
        }
        assert dagster.runs_of(third) == []
        assert dagster.in_flight() == 2

        # Once the API's runs are done (here: canceled), its asks launch runs again.
        dagster.cancel_api_runs()
        time.sleep(0.3)  # past FULL_RECHECK_SECONDS: Dagster is counted again
        _ask(client, fourth)
        dagster.wait_for_runs(fourth, 1)
    assert dagster.in_flight() == 1
    dagster.cancel_api_runs()


def test_dids_that_cannot_be_a_user_never_reach_dagster(dagster: Dagster, db: Path) -> None:
    dagster.cancel_api_runs()
    strangers = [
        "did:web:example.com%3A8080",
        "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK",
        "did:plc:" + "a" * 2000,
        "unknown-handle.test",
    ]
    with api_client(_settings(db, dagster, in_flight=100)) as client:
        for stranger in strangers:
            response = client.get(f"/records/{CARD}", params={"did": stranger})
            assert (response.status_code, response.json()) == (
                400,
                {"error": "Invalid did parameter"},
            )
        assert _trigger(client).remembered_asks == 0
    assert dagster.in_flight() == 0


def test_a_pair_is_asked_for_again_once_its_minute_is_over(
    dagster: Dagster, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A "minute" of 3 s: the second ask comes well within it, even on a busy machine.
    monkeypatch.setattr(backfill_trigger, "ASK_AGAIN_AFTER_SECONDS", 3.0)
    user = did("again")
    with api_client(_settings(db, dagster, in_flight=100)) as client:
        _ask(client, user)
        asked = time.monotonic()  # remembered by now
        dagster.wait_for_runs(user, 1)
        _ask(client, user)  # within its "minute": not asked again
        assert _trigger(client).remembered_asks == 1
        time.sleep(max(0.0, asked + 3.1 - time.monotonic()))
        assert _trigger(client).remembered_asks == 0  # forgotten once expired
        _ask(client, user)
        dagster.wait_for_runs(user, 2)
    assert len(dagster.runs_of(user)) == 2
    dagster.cancel_api_runs()


def test_the_memory_of_asks_is_bounded_the_oldest_forgotten_first(
    dagster: Dagster, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backfill_trigger, "MAX_ASKS_REMEMBERED", 2)
    oldest, middle, newest = (did(f"remembered{n}") for n in range(3))
    with api_client(_settings(db, dagster, in_flight=100)) as client:
        for user in (oldest, middle, newest):
            _ask(client, user)
            dagster.wait_for_runs(user, 1)
        assert _trigger(client).remembered_asks == 2
        _ask(client, middle)  # still remembered: no new run
        _ask(client, oldest)  # forgotten, as the oldest: asked again
        dagster.wait_for_runs(oldest, 2)
        assert _trigger(client).remembered_asks == 2
    assert [len(dagster.runs_of(user)) for user in (oldest, middle, newest)] == [2, 1, 1]
    dagster.cancel_api_runs()


# -- waiting only while waiting can help ------------------------------------------------------


def _patient(db: Path, dagster_url: str, wait: float = 10.0) -> Settings:
    """`?did=` waits up to `wait` seconds: long enough that answering at once shows."""
    return replace(
        settings_for(db, backfill_wait_seconds=wait),
        dagster_url=dagster_url,
        api_backfills_in_flight=100,
    )


def _timed_ask(client: Client, did_: str) -> tuple[float, dict[str, object]]:
    started = time.monotonic()
    body = _ask(client, did_)
    return time.monotonic() - started, body


@pytest.mark.parametrize(
    ("state", "status", "error"),
    [
        ("failed", "in_progress", "https://pds.example/xrpc/...: server error 502 (5 attempts)"),
        ("takendown", "complete", "RepoTakendown: Repo has been takendown"),
    ],
)
def test_a_failed_or_ended_backfill_answers_at_once_with_its_error(
    dagster: Dagster, db: Path, state: str, status: str, error: str
) -> None:
    user = did(f"settled{state}")
    set_backfill(db, user, CARD, state, error)
    with api_client(_patient(db, dagster.url)) as client:
        seconds, body = _timed_ask(client, user)
    assert seconds < 2.0
    assert body["backfill"] == {
        "did": user,
        "collection": CARD,
        "status": status,
        "state": state,
        "error": error,
    }
    assert dagster.runs_of(user) == []  # the sensor retries a failure after its delay


def test_the_wait_ends_when_the_run_asked_for_ends_without_the_backfill(
    dagster: Dagster, db: Path
) -> None:
    dagster.cancel_api_runs()
    user = did("canceled")
    answers: list[tuple[float, dict[str, object]]] = []
    with api_client(_patient(db, dagster.url)) as client:
        asking = threading.Thread(target=lambda: answers.append(_timed_ask(client, user)))
        asking.start()
        dagster.wait_for_runs(user, 1)
        dagster.cancel_api_runs()  # as a run that failed before claiming the backfill
        asking.join(timeout=15)
    [(seconds, body)] = answers
    assert seconds < 5.0  # the run's end is seen within RUN_CHECK_SECONDS, not after 10 s
    assert body["backfill"] == {"did": user, "collection": CARD, "status": "unknown", "state": None}


class _FlakyProxy:
    """A real HTTP server in front of Dagster's GraphQL API that answers 503 to the first
    `failures` requests, as a webserver still starting does, then forwards them."""

    def __init__(self, target: str, failures: int) -> None:
        self.failures, self.refused, self.forwarded = failures, 0, 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if proxy.refused < proxy.failures:
                    proxy.refused += 1
                    self._reply(503, b"starting")
                    return
                proxy.forwarded += 1
                answer = httpx.post(
                    f"{target}{self.path}",
                    content=body,
                    headers={"content-type": "application/json"},
                    timeout=30,
                )
                self._reply(answer.status_code, answer.content)

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_ask_dagster_cannot_take_yet_is_tried_again_while_the_request_waits(
    dagster: Dagster, db: Path
) -> None:
    dagster.cancel_api_runs()
    user = did("retried")
    proxy = _FlakyProxy(dagster.url, failures=3)
    answers: list[tuple[float, dict[str, object]]] = []
    try:
        with api_client(_patient(db, proxy.url)) as client:
            asking = threading.Thread(target=lambda: answers.append(_timed_ask(client, user)))
            asking.start()
            dagster.wait_for_runs(user, 1)
            dagster.cancel_api_runs()
            asking.join(timeout=15)
            assert _trigger(client).remembered_asks == 1
    finally:
        proxy.close()
    assert proxy.refused == 3 and proxy.forwarded >= 2  # counted, then launched
    assert len(dagster.runs_of(user)) == 1
    assert len(answers) == 1


def test_an_ask_dagster_never_took_is_not_remembered(db: Path) -> None:
    user = did("unheard")
    never = _FlakyProxy("http://127.0.0.1:9", failures=1_000_000)  # 503 to every request
    try:
        with api_client(_patient(db, never.url, wait=2.0)) as client:
            seconds, body = _timed_ask(client, user)
            assert _trigger(client).remembered_asks == 0  # the next request asks again
    finally:
        never.close()
    assert never.refused >= 3  # tried again while the request waited
    assert seconds < 3.0
    assert body["backfill"] == {"did": user, "collection": CARD, "status": "unknown", "state": None}
