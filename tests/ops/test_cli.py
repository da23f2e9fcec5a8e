"""The `mirror` command as an operator runs it: a real process, a real file, a real Dagster.
What needs no Dagster run (init, status, reset) runs on a lake too."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import httpx
import pytest

from mirror_assets.config import Settings
from mirror_assets.ops.job_runs import job_names
from mirror_assets.runs.discovery import run_discovery
from mirror_assets.store.contract import MirrorStore
from mirror_assets.store.file import FileStore
from tests.support.atproto_server import AtprotoStandIn
from tests.support.cli_helpers import (
    MIRROR,
    OTHER,
    catalog_rows,
    db_of,
    dump,
    fill_mirror,
    lake_if_asked,
    lake_of,
    make_project,
    mirror,
    on_both_stores,
    table_rows,
)
from tests.support.events_factory import CARD, PAGE, account, at, create, did, identity
from tests.support.jetstream_server import JetstreamServer
from tests.support.ports import free_port


def run_statuses(project: Path, job: str = "ingest") -> list[dg.DagsterRunStatus]:
    """The statuses of the job's runs in the project's Dagster instance."""
    with dg.DagsterInstance.from_config(str(project / ".dagster")) as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=job))
    return [run.status for run in runs]


@pytest.fixture
def project(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A project with no mirror yet: these tests start where an operator starts. In its
    file, or (parametrized with "lake", `on_both_stores`) in a new lake its `.env` names."""
    return make_project(tmp_path, monkeypatch, lake_if_asked(request, bare=True))


@on_both_stores
def test_init_then_status_on_an_empty_mirror(project: Path, request: pytest.FixtureRequest) -> None:
    init = mirror(project, "init")
    assert init.returncode == 0, init.stderr
    lake = lake_of(project)
    if lake is None:
        assert init.stdout == f"{db_of(project)}: schema ready\n"
        assert db_of(project).is_file()
    else:
        assert init.stdout == f"the lake at {lake.data_path}: schema ready\n"
        assert not db_of(project).exists()
        tables = catalog_rows(
            request.getfixturevalue("postgres"),
            lake,
            "SELECT table_name FROM ducklake_table WHERE end_snapshot IS NULL",
        )
        assert {"record_versions", "backfills", "ingest_state"} <= set(tables)

    status = mirror(project, "status")
    assert status.returncode == 0, status.stderr
    assert "cursor: none yet" in status.stdout
    assert "backfills: none (0 records in 0 pages)" in status.stdout
    # No command has used Dagster here yet, so there is no instance to read runs from.
    assert f"last runs: no runs yet (no Dagster instance in {project / '.dagster'})" in (
        status.stdout
    )
    assert not (project / ".dagster").exists()  # and reading the status made none


def test_ingest_runs_through_dagster_and_status_shows_it(project: Path) -> None:
    with JetstreamServer() as server:
        server.add(create(did("alice"), "a1", rev=1, t=1))
        server.add(create(did("alice"), "a2", rev=2, t=2))
        server.add(create(did("bob"), "b1", rev=1, t=3, collection=PAGE))
        server.add(account(did("bob"), active=False, status="takendown", t=4))
        server.add(identity(did("alice"), "alice.test", t=4))
        run = mirror(project, "ingest", JETSTREAM_URLS=server.url, INGEST_IDLE_SECONDS="0.5")
    assert run.returncode == 0, run.stdout + run.stderr
    assert ": success" in run.stdout
    assert "rows_upserted: 3" in run.stdout
    assert "accounts_changed: 1" in run.stdout

    # The run is recorded in the project's Dagster instance, as a run of the `ingest` job.
    assert run_statuses(project) == [dg.DagsterRunStatus.SUCCESS]

    status = mirror(project, "status")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert any(line.split() == ["app.blento.card", "2", "0", "0", "1"] for line in lines), lines
    assert any(line.split() == ["app.blento.page", "0", "1", "0", "1"] for line in lines), lines
    assert (
        "accounts: active 1, takendown 1 (0 handles verified, 1 identities to check)"
        in status.stdout
    )
    assert "backfills: pending 2" in status.stdout
    assert f"cursor: {at(4)} " in status.stdout
    runs = _last_runs(status.stdout)
    with dg.DagsterInstance.from_config(str(project / ".dagster")) as instance:
        [ingest] = instance.get_run_records(filters=dg.RunsFilter(job_name="ingest"))
    assert ingest.start_time is not None and ingest.end_time is not None
    started = datetime.fromtimestamp(ingest.start_time, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    took = ingest.end_time - ingest.start_time
    assert runs["ingest"] == f"success, started {started}, took {took:.1f} s"
    # Every job of the Definitions has a line, whether it ran or not.
    assert set(runs) == set(job_names(Settings())) >= {"ingest", "backfill", "discovery"}
    assert runs["backfill"] == runs["discovery"] == "no runs yet"


def _last_runs(status: str) -> dict[str, str]:
    """`mirror status`'s last run of each job: job -> description."""
    lines = status.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("last runs ("))
    runs = {}
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        job, description = line.strip().split(" ", 1)
        runs[job] = description.strip()
    return runs


def test_ingest_with_no_jetstream_fails_with_a_clear_error(project: Path) -> None:
    with JetstreamServer() as server:
        url = server.url
    # The server is gone: every connection is refused.
    run = mirror(project, "ingest", JETSTREAM_URLS=url)
    assert run.returncode == 1
    assert ": failure" in run.stdout
    assert "error: " in run.stderr
    assert "no Jetstream endpoint answered" in run.stderr
    assert "check JETSTREAM_URLS" in run.stderr
    # The terminal gets the one-line error; Dagster's stack trace stays in the run's log.
    output = run.stdout + run.stderr
    assert "Stack Trace" not in output and "Traceback" not in output
    assert "BetaWarning" not in output and "alembic" not in output
    assert run_statuses(project) == [dg.DagsterRunStatus.FAILURE]


@on_both_stores
def test_reset_asks_first_and_then_empties_the_mirror(
    project: Path, project_store: MirrorStore
) -> None:
    fill_mirror(project_store)

    refused = mirror(project, "reset")
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert table_rows(project_store, "SELECT count(*) FROM records") == [(6,)]

    done = mirror(project, "reset", "--yes")
    assert done.returncode == 0, done.stderr
    assert f"{project_store.name}: all data dropped, schema recreated" in done.stdout
    left = {table: rows for table, rows in dump(project_store).items() if rows}
    assert left.keys() <= {"meta"}, left  # the schema's version, nothing of the data
    assert "cursor: none yet" in mirror(project, "status").stdout


ALICE = did("a" * 24)


def test_backfill_lists_a_did_through_dagster_and_status_shows_it(project: Path) -> None:
    with AtprotoStandIn() as net:
        net.add_account(ALICE, handle="alice.test")
        net.create_records(ALICE, CARD, 250)
        net.create_records(ALICE, PAGE, 3)
        pds = {"PLC_URL": net.url, "MIRROR_ALLOW_PRIVATE_NETWORK": "1"}
        first = mirror(project, "backfill", ALICE, **pds)
        again = mirror(project, "backfill", ALICE, "--collection", CARD, **pds)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "listings_completed: 2" in first.stdout
    assert "rows_upserted: 253" in first.stdout
    assert f"done: {ALICE}" in first.stdout
    # Asked again, the collection is listed anew: nothing changed, so nothing is written.
    assert again.returncode == 0, again.stdout + again.stderr
    assert "listings: 1" in again.stdout
    assert "rows_stale: 250" in again.stdout
    assert run_statuses(project, "backfill") == [dg.DagsterRunStatus.SUCCESS] * 2
    with dg.DagsterInstance.from_config(str(project / ".dagster")) as instance:
        assert instance.get_materialized_partitions(dg.AssetKey("did_backfill")) == {ALICE}

    status = mirror(project, "status")
    assert "backfills: complete 2 (253 records in 4 pages)" in status.stdout
    assert any(line.split() == [CARD, "250", "0", "0", "1"] for line in status.stdout.splitlines())


def test_backfill_of_a_did_gone_from_its_directory_says_so(project: Path) -> None:
    with AtprotoStandIn() as net:
        net.add_account(ALICE)
        net.tombstone_did(ALICE)
        run = mirror(project, "backfill", ALICE, PLC_URL=net.url)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ended_tombstoned: 2" in run.stdout
    assert "tombstoned (the directory answered 410)" in run.stdout
    assert "backfills: tombstoned 2" in mirror(project, "status").stdout


def test_status_shows_failed_backfills_and_discovery(project: Path) -> None:
    with AtprotoStandIn() as net:
        url = net.url
        net.add_account(ALICE)
        net.create_records(ALICE, CARD, 1)
        net.fail("plc", 503, times=2)
        env = {"PLC_URL": net.url, "RELAY_URL": net.url, "BACKFILL_HTTP_ATTEMPTS": "1"}
        failed = mirror(project, "backfill", ALICE, "--collection", CARD, **env)
        settings = Settings(db_path=project / "data" / "mirror.duckdb", relay_url=net.url)
        run_discovery(settings)
    assert failed.returncode == 0, failed.stdout + failed.stderr
    assert "ended_failed: 1" in failed.stdout

    status = mirror(project, "status").stdout
    assert "backfills: failed 1 (0 records in 0 pages)" in status
    assert f"  failed: {ALICE} {CARD} (1 attempts, retry " in status
    assert "server error 503 (1 attempts)" in status
    assert f"discovery: {CARD} on {url}: 1 repos listed, 0 new (last complete pass" in status
    assert f"discovery: {PAGE} on {url}: 0 repos listed, 0 new (last complete pass" in status


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["not-a-did"], "'not-a-did' is not a DID"),
        ([ALICE, "--collection", "com.example.other"], "com.example.other is not tracked"),
    ],
)
def test_backfill_refuses_what_it_cannot_do(project: Path, args: list[str], message: str) -> None:
    result = mirror(project, "backfill", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (project / ".dagster").exists()  # refused before any run


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("JETSTREAM_URLS", "http://example.com", "must start with ws:// or wss://"),
        ("COLLECTIONS", "not a collection", "is neither an NSID"),
        ("INGEST_IDLE_SECONDS", "soon", "is not a number"),
        ("PLC_URL", "plc.directory", "must start with http:// or https://"),
        ("BACKFILL_PER_HOST", "0", "must be greater than zero"),
        ("COLLECTIONS", "app.blento.card-v2", "is neither an NSID"),
        ("DNS_SERVERS", "dns.example.com", "is not an IP address with an optional port"),
        ("DNS_SERVERS", "127.0.0.1:99999", "is not an IP address with an optional port"),
        ("HANDLE_RESOLVER_URL", "bsky.social", "must start with http:// or https://"),
        ("SQL_MEMORY_LIMIT", "a lot", "is not a size such as 512MB or 2GB"),
        ("API_CACHE_BYTES", "-1", "must be greater than zero"),
        ("INGEST_CLOCK_SKEW_SECONDS", "later", "is not a number"),
        ("INGEST_FLUSH_BYTES", "0", "must be greater than zero"),
        ("API_BACKFILLS_IN_FLIGHT", "many", "is not a number"),
        ("SQL_TIMEOUT_SECONDS", "-5", "must be greater than zero"),
        ("MIRROR_STORE", "postgres:dbname=mirror", "must be `file` or `ducklake:<catalog>`"),
        ("MIRROR_STORE", "ducklake:postgres:dbname=mirror", "set MIRROR_DATA_PATH"),
        ("API_CURSOR_KEY", "short", "API_CURSOR_KEY has 5 characters"),
        ("LAKE_SMALL_FILES_WARN", "none", "is not a number"),
        ("BACKFILL_RUNS", "3", "the file store takes one writer at a time"),
        ("BACKFILL_PER_HOST", "1", "BACKFILL_PER_HOST=1 is below BACKFILL_RUNS=2"),
    ],
)
def test_bad_configuration_is_a_clear_error(
    project: Path, variable: str, value: str, message: str
) -> None:
    result = mirror(project, "status", **{variable: value})
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_run_serves_backfills_keeps_its_children_up_and_sigterm_stops_everything(
    project: Path, tmp_path: Path
) -> None:
    """`mirror run` against stand-ins: the API and the UI answer; discovery finds a user the
    stream never showed, ingest sees another, and the sensors backfill both from their PDS;
    then `?did=` on the API has Dagster backfill a third user nothing else would find (a
    wildcard collection is not discoverable), once for many concurrent callers. A killed API
    is started again. A service manager stops it all with SIGTERM (handled as Ctrl-C):
    nothing may be left serving."""
    api_port, dagster_port = free_port(), free_port()
    seen_live, discovered, asked = did("l" * 24), did("d" * 24), did("q" * 24)
    with AtprotoStandIn() as net, JetstreamServer() as stream:
        net.add_account(seen_live)
        net.create_records(seen_live, CARD, 250)
        net.add_account(discovered)
        net.create_records(discovered, PAGE, 30)
        net.add_account(asked)
        net.create_records(asked, OTHER, 120)
        [rkey] = net.create_records(seen_live, CARD, 1, start_us=at(100))
        live = create(seen_live, rkey, rev=1, t=0)
        live["time_us"] = time.time_ns() // 1000 - 10_000_000  # ten seconds ago
        live["commit"]["rev"] = net.rev(seen_live)
        stream.add(live)
        env = {
            **os.environ,
            "MIRROR_DB": str(project / "data" / "mirror.duckdb"),
            "API_PORT": str(api_port),
            "DAGSTER_PORT": str(dagster_port),
            "JETSTREAM_URLS": stream.url,
            "PLC_URL": net.url,
            "RELAY_URL": net.url,
            "MIRROR_ALLOW_PRIVATE_NETWORK": "1",
            "COLLECTIONS": f"{CARD},{PAGE},app.other.*",
        }
        output = tmp_path / "run.log"
        with output.open("wb") as log:
            process = subprocess.Popen(
                [MIRROR, "run"], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            api = _wait_for(f"http://127.0.0.1:{api_port}/health")
            assert api.json() == {"status": "ok"}
            ui = _wait_for(f"http://127.0.0.1:{dagster_port}/server_info")
            assert "dagster_webserver_version" in ui.json()
            assert (project / ".dagster" / "dagster.yaml").is_file()
            backfills = _wait_for_backfills(project, {seen_live, discovered}, timeout=150)
            assert backfills == {(seen_live, CARD, 251), (discovered, PAGE, 30)}

            url = f"http://127.0.0.1:{api_port}/records/{OTHER}"
            with ThreadPoolExecutor(5) as pool:
                answers = list(pool.map(lambda _: _get_all(url, asked), range(5)))
            for status, records, backfill in answers:
                assert status == 200
                assert backfill == {
                    "did": asked,
                    "collection": OTHER,
                    "status": "complete",
                    "state": "complete",
                }
                assert records == 120

            [api] = _children_of(process.pid, "mirror_assets.ops.cli api")
            os.kill(api, signal.SIGKILL)
            _wait_for(f"http://127.0.0.1:{api_port}/health")  # started again
            [again] = _children_of(process.pid, "mirror_assets.ops.cli api")
            assert again != api
            assert "api exited with -9; starting it again" in output.read_text()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) is not None
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    for port in (api_port, dagster_port):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
    with dg.DagsterInstance.from_config(str(project / ".dagster")) as instance:
        done = instance.get_materialized_partitions(dg.AssetKey("did_backfill"))
        asked_runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": asked}))
    assert done == {seen_live, discovered, asked}
    assert len(asked_runs) == 1  # five callers, one backfill


def _get_all(url: str, did_: str) -> tuple[int, int, dict[str, str]]:
    """One `?did=` request (which waits for the backfill), then every page after it: the
    status, how many records, and the backfill field."""
    first = httpx.get(url, params={"did": did_, "limit": 100}, timeout=60)
    body = first.json()
    records, cursor = len(body["records"]), body.get("cursor")
    while cursor:
        page = httpx.get(url, params={"did": did_, "limit": 100, "cursor": cursor}).json()
        records, cursor = records + len(page["records"]), page.get("cursor")
    return first.status_code, records, body.get("backfill", {})


def _wait_for_backfills(project: Path, dids: set[str], timeout: float) -> set[tuple[str, str, int]]:
    """The complete backfills (did, collection, records), once every DID has one."""
    deadline = time.monotonic() + timeout
    while True:
        with FileStore(project / "data" / "mirror.duckdb").reading() as con:
            rows = con.execute(
                "SELECT did, collection, records FROM backfills WHERE status = 'complete'"
            ).fetchall()
        if {row[0] for row in rows} >= dids or time.monotonic() > deadline:
            return set(rows)
        time.sleep(2)


def _wait_for(url: str, timeout: float = 90.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer within {timeout} s")
        time.sleep(0.5)


def _children_of(pid: int, command: str) -> list[int]:
    """The processes whose parent is `pid` and whose command line holds `command`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and command in cmdline:
            found.append(int(entry.name))
    return found
