"""Two machines on one host (docs/scale-out.md, "From one machine to a cluster"), with real
processes only: each machine a folder of its own with its Dagster processes and an API,
sharing only Postgres (Dagster's storage, deploy/cluster/dagster.yaml, and the lake's
catalog) and the lake's data path.

Machine A runs the daemon (its schedule ingests, its sensors discover and plan backfills)
and a code server; machine B a code server. The cluster's run launcher
(`mirror_assets/ops/worker_pool.py`) places backfill runs on both and every other run on A.
The scenario is the lake concurrency test's: replays, stale revs, deletes before creates,
an account taken down, one deleted and one back, time ties, and users whose history
predates the mirror on a PDS stand-in, found by discovery.

While backfill runs hold listings open on both machines, B is SIGKILLed, with its runs.
Run monitoring marks B's runs failed; the sensor gives their DIDs to A, which finishes
them. B's API comes back, and both APIs serve the state the scenario leads to.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
import pytest

from mirror_assets.config import LakeLocation
from mirror_assets.model.backfills import DONE
from mirror_assets.names import BACKFILL_JOB, INGEST_JOB
from mirror_assets.ops.worker_pool import worker_of
from mirror_assets.store.lake import LakeStore
from tests.store.test_lake_concurrency import (
    CURSOR_KEY,
    TRACKED,
    Expected,
    build_scenario,
    by_uri,
    differences,
    duplicate_keys,
    state_problems,
    walk_records,
)
from tests.support.api_helpers import ApiProcess
from tests.support.atproto_server import AtprotoStandIn
from tests.support.cluster import (
    Group,
    cluster_env,
    migrate,
    new_group,
    start_api,
    start_control,
    start_worker,
)
from tests.support.events_factory import CARD, PAGE
from tests.support.jetstream_server import JetstreamServer
from tests.support.lakes import new_lake
from tests.support.ports import free_port
from tests.support.postgres import PostgresServer
from tests.support.store_helpers import snapshot

pytestmark = pytest.mark.lake

BACKFILL_RUNS = 4
DIDS_PER_RUN = 2
PAGES_BEFORE_HOLD = 3  # listRecords pages answered before the PDS holds every listing
WAIT_SECONDS = 240.0  # a sensor's 30 s, run monitoring's 10 s and a silent worker's 30 s


@pytest.fixture
def dagster_storage(postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A Postgres database for Dagster's runs, event logs and schedules; this process
    reads the same instance, so it is given the same settings."""
    name = "dagster_" + uuid.uuid4().hex[:12]
    postgres.create_database(name)
    url = f"postgresql+psycopg2://{postgres.user}@{postgres.host}:{postgres.port}/{name}"
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", url)
    return url


@pytest.mark.timeout(600)
def test_two_machines_share_the_backfills_and_one_killed_loses_nothing(
    postgres: PostgresServer,
    dagster_storage: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lake = new_lake(postgres, tmp_path)
    with ExitStack() as stack:
        net = stack.enter_context(AtprotoStandIn())
        jetstream = stack.enter_context(JetstreamServer())
        scenario = build_scenario(net)
        for event in scenario.events:
            jetstream.add(event)
        release = net.hold_list_records(after_pages=PAGES_BEFORE_HOLD)
        stack.callback(release.set)
        ports = [free_port(), free_port()]
        env = cluster_env(
            dagster_storage,
            lake,
            ports,
            PLC_URL=net.url,
            RELAY_URL=net.url,
            MIRROR_ALLOW_PRIVATE_NETWORK="1",
            COLLECTIONS=TRACKED,
            JETSTREAM_URLS=jetstream.url,
            INGEST_IDLE_SECONDS="1",
            BACKFILL_RUNS=str(BACKFILL_RUNS),
            BACKFILL_DIDS_PER_RUN=str(DIDS_PER_RUN),
            BACKFILL_HTTP_BACKOFF_SECONDS="0.01",
            BACKFILL_RETRY_SECONDS="1",
            API_CURSOR_KEY=CURSOR_KEY,
        )
        monkeypatch.setenv("MIRROR_WORKERS", env["MIRROR_WORKERS"])
        a, b = (new_group(n, tmp_path / n, env, port) for n, port in zip("ab", ports, strict=True))
        stack.callback(a.stop)
        stack.callback(b.stop)
        migrate(a)
        for group in (a, b):
            start_worker(group)
        start_control(a)
        for group in (a, b):
            start_api(group)
        monkeypatch.setenv("DAGSTER_HOME", a.env["DAGSTER_HOME"])  # this process reads A's
        instance = stack.enter_context(dg.DagsterInstance.from_config(a.env["DAGSTER_HOME"]))

        # Backfill runs hold listings open on both machines at once.
        _until(lambda: {ports[0], ports[1]} <= _workers(instance, BACKFILL_JOB, started=True), a)
        on_b = [run.run_id for run in _runs(instance, BACKFILL_JOB) if _worker(run) == ports[1]]
        b.kill()
        release.set()

        # Run monitoring fails B's runs; A finishes their DIDs and everything else.
        _until(lambda: all(_status(instance, run_id) == "FAILURE" for run_id in on_b), a)
        _until(lambda: _settled(lake, scenario.cursor_us), a)
        start_api(b)  # B comes back

        store = LakeStore(lake)
        try:
            assert not duplicate_keys(store)
            got = snapshot(store)
        finally:
            store.close()
        want = Expected.of(scenario.versions, scenario.statuses)
        problems = state_problems(got, want, scenario.statuses)
        assert not problems, "\n".join(problems)
        complete = {pair: status for pair, status in got.backfills.items() if status == "complete"}
        assert complete == {
            (did, c): "complete" for group in scenario.groups for did in group for c in (CARD, PAGE)
        }
        assert set(got.backfills) == set(scenario.backfills)

        apis = [ApiProcess(g.api_url, g.processes["api"], g.folder / "api.log") for g in (a, b)]
        for collection, limit in ((CARD, 100), (PAGE, 25)):
            expected = want.api_items(collection)
            for api in apis:
                items, pages = walk_records(api, collection, limit)
                assert items == expected, (
                    f"{api.base_url}: /records/{collection} in {pages} pages: "
                    f"{differences('items', by_uri(items), by_uri(expected))}"
                )

        # Ingest ran on A only, from the schedule ticking against Postgres.
        ingests = _runs(instance, INGEST_JOB)
        assert ingests and {_worker(run) for run in ingests} == {ports[0]}
        assert any(run.tags.get("dagster/schedule_name") for run in ingests)
        print(
            f"\nbackfill runs: {len(_runs(instance, BACKFILL_JOB))}, of which "
            f"{len(on_b)} were on B when it was killed; ingest runs: {len(ingests)}"
        )


def _runs(instance: dg.DagsterInstance, job: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(dg.RunsFilter(job_name=job)))


def _worker(run: dg.DagsterRun) -> int | None:
    """The port of the code server the run was placed on."""
    worker = worker_of(run.tags)
    return None if worker is None else worker[1]


def _workers(instance: dg.DagsterInstance, job: str, started: bool) -> set[int | None]:
    runs = _runs(instance, job)
    if started:
        runs = [run for run in runs if run.status == dg.DagsterRunStatus.STARTED]
    return {_worker(run) for run in runs}


def _status(instance: dg.DagsterInstance, run_id: str) -> str:
    run = instance.get_run_by_id(run_id)
    return run.status.value if run else "gone"


def _settled(lake: LakeLocation, cursor_us: int) -> bool:
    """The stream read to its end and no backfill left to do."""
    store = LakeStore(lake)
    try:
        with store.reading() as con:
            cursor = con.execute("SELECT max(cursor_us) FROM ingest_state").fetchall()[0][0]
            undone = con.execute(
                "SELECT count(*) FROM backfills WHERE NOT list_contains(?, status)", [list(DONE)]
            ).fetchall()[0][0]
    finally:
        store.close()
    return bool(cursor == cursor_us and undone == 0)


def _until(condition: Callable[[], bool], control: Group) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT_SECONDS} s:\n{control.log('daemon')}"
        time.sleep(1)
