"""Dagster across machines (docs/scale-out.md), on one host: backfill rate with one worker
group against two, and what a run costs Dagster with Postgres instance storage against SQLite.

    .venv-lake/bin/python -m bench.cluster                  # both parts, full size
    .venv-lake/bin/python -m bench.cluster scale    [--dids 400] [--records 100] [--hosts 4]
    .venv-lake/bin/python -m bench.cluster overhead [--runs 10]

Every "machine" is a group of real processes from tests/support/cluster.py, each with a
DAGSTER_HOME of its own holding deploy/cluster/dagster.yaml (Postgres storage, the
worker-pool run launcher over MIRROR_WORKERS, the queued run coordinator), sharing only a
throwaway Postgres (tests/support/postgres.py: Dagster's database and the lake's catalog)
and the lake's data folder. A child process serves a PLC directory and `--hosts` PDSes, every
answer `--latency-ms` late (30); DID n lives on PDS n % hosts, with `--records` records.

* scale: for each layout a fresh lake has every DID's backfill queued, then a cluster starts:
  1 group (a code server and the daemon) or 2 (the daemon and code server A, code server B),
  with BACKFILL_RUNS = `--runs-per-group` x groups and BACKFILL_DIDS_PER_RUN
  `--dids-per-run`. Only `backfill_sensor` runs (its minimum interval is 30 s): every
  schedule and the other sensors are stopped before the daemon starts, so no ingest,
  discovery or housekeeping run shares the machine. Timed from the sensor's first backfill
  run's creation to the end of the last run once every backfill in the lake is complete
  (also from the daemon's start); DIDs/s of each layout and their ratio, with how much of
  the time no run was in flight (every slot waiting for a sensor tick), the rate over the
  time some run was, how busy the machine's cores were (/proc/stat: other work included)
  and how much of that was this benchmark's (the CPU of its process trees: the groups'
  processes and the runs they started, the Postgres server, the stand-in), the load
  average, and what limited each layout by those numbers.
* overhead: two one-group clusters at once, one with SQLite instance storage (the same
  dagster.yaml with `storage: sqlite`), one with Postgres; the same tiny backfill run (one
  DID, a partition of `backfill_job`) submitted to each in turn, `--runs` times, each waited
  for before the next, as `dagster job launch` submits it (create, then the queue: the
  daemon dequeues and launches it on the code server, which starts a run process). Per run
  from creation to RUN_SUCCESS, split at its events; Dagster's overhead is that less the
  asset's own work (the `seconds` of run_backfill, from the run's observation), also
  without the queue's wait (the daemon dequeues every second, so up to a second at random).

Postgres runs as the tests run it: on loopback, fsync and synchronous_commit off. Everything
is made under bench/out/cluster/ and removed at the end unless `--keep` is given.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from dagster._core.remote_representation.external import RemoteRepository
from dagster._core.workspace.context import WorkspaceProcessContext, WorkspaceRequestContext
from dagster._core.workspace.load_target import GrpcServerTarget

from bench.backfill import COLLECTION, START_US
from mirror_assets.config import LakeLocation
from mirror_assets.model.backfills import DONE, queue
from mirror_assets.names import BACKFILL_JOB, DIDS, PARTITION_TAG
from mirror_assets.store.lake import LakeStore
from tests.support.cluster import Group, cluster_env, migrate, new_group, start_control
from tests.support.cluster import start_worker as start_code_server
from tests.support.events_factory import numbered_did, tid
from tests.support.ports import free_port
from tests.support.postgres import PostgresServer, running_postgres

OUT = Path(__file__).resolve().parent / "out" / "cluster"
TARGET_RATIO = 1.8
SENSOR_SECONDS = 30  # backfill_sensor's minimum_interval_seconds (mirror_assets/defs/sensors.py)
KEPT_SENSOR = "backfill_sensor"


# -- the PLC directory and the PDSes ------------------------------------------------------


def serve(dids: int, records: int, hosts: int, latency: float, ready: Connection) -> None:
    """The child: a PLC directory and `hosts` PDSes (each its own port: a host to the
    mirror's per-host limit), every answer `latency` seconds late, until terminated."""
    from tests.support.atproto_server import AtprotoStandIn

    plc = AtprotoStandIn().start()
    pdses = [AtprotoStandIn().start() for _ in range(hosts)]
    for server in (plc, *pdses):
        server.latency_seconds = latency
    for d in range(dids):
        did, pds = numbered_did(d), pdses[d % hosts]
        plc.add_account(did, handle=f"user{d}.test", pds_url=pds.url)
        pds.add_account(did, handle=f"user{d}.test")
        for i in range(records):
            pds.put_record(did, COLLECTION, tid(START_US + d * records + i), record(d, i))
    ready.send(plc.url)
    while True:
        time.sleep(3600)


def record(d: int, i: int) -> dict[str, str]:
    """bench/backfill.py's card (about 330 bytes of JSON)."""
    return {
        "$type": COLLECTION,
        "title": f"card {i} of user {d}",
        "text": "lorem ipsum dolor sit amet " * 8,
        "url": f"https://example.com/{d}/{i}",
        "createdAt": "2024-08-30T06:40:00.000Z",
    }


def start_stand_in(args: argparse.Namespace) -> tuple[BaseProcess, str]:
    """The stand-in in a spawned child process; its PLC's URL."""
    context = mp.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=serve,
        args=(args.dids, args.records, args.hosts, args.latency_ms / 1000, send),
        daemon=True,
    )
    built = time.perf_counter()
    child.start()
    plc = receive.recv()
    print(
        f"stand-in: PLC and {args.hosts} PDS hosts, {args.dids} DIDs x {args.records} records, "
        f"every answer {args.latency_ms:g} ms late; built in {time.perf_counter() - built:.1f} s",
        flush=True,
    )
    return child, plc


# -- machines -----------------------------------------------------------------------------


@dataclass
class Cluster:
    """The groups of one cluster (the first runs the daemon), its instance as seen from
    this process, and its lake."""

    groups: list[Group]
    instance: dg.DagsterInstance
    lake: LakeLocation
    storage: str
    daemon_started: float = 0.0
    stopped: list[str] = field(default_factory=list)

    @property
    def control(self) -> Group:
        return self.groups[0]


def dagster_database(server: PostgresServer, name: str) -> str:
    """A database for Dagster's runs, events and ticks; its SQLAlchemy URL."""
    server.create_database(name)
    return f"postgresql+psycopg2://{server.user}@{server.host}:{server.port}/{name}"


@contextmanager
def cluster(
    server: PostgresServer,
    name: str,
    workers: int,
    settings: Mapping[str, str],
    storage: str = "postgres",
) -> Iterator[Cluster]:
    """`workers` groups with their code servers up, a new lake made and Dagster's storage
    migrated; the daemon is not started yet. Every process is stopped on the way out."""
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    lake = LakeLocation(f"postgres:{server.create_database(name)}", f"{folder / 'lake'}/")
    url = dagster_database(server, f"dagster_{name}") if storage == "postgres" else ""
    ports = [free_port() for _ in range(workers)]
    env = cluster_env(url, lake, ports, **settings)
    groups = [new_group(f"g{n}", folder / f"g{n}", env, port) for n, port in enumerate(ports)]
    home = Path(groups[0].env["DAGSTER_HOME"])
    if storage == "sqlite":
        use_sqlite(home)
    with ExitStack() as stack:
        for group in groups:
            stack.callback(group.stop)
        migrate(groups[0])
        for group in groups:
            start_code_server(group)
        # What this process's view of the instance reads from the environment.
        os.environ.update(
            DAGSTER_HOME=str(home), DAGSTER_POSTGRES_URL=url, MIRROR_WORKERS=env["MIRROR_WORKERS"]
        )
        instance = stack.enter_context(dg.DagsterInstance.from_config(str(home)))
        yield Cluster(groups, instance, lake, storage)


def use_sqlite(home: Path) -> None:
    """The cluster's dagster.yaml with its Postgres storage replaced by SQLite files in
    DAGSTER_HOME."""
    config = home / "dagster.yaml"
    text = config.read_text()
    start = text.index("storage:\n  postgres:")
    end = text.index("\n\n", start)
    sqlite = f"storage:\n  sqlite:\n    base_dir: {home}\n"
    config.write_text(text[:start] + sqlite + text[end + 1 :])


@contextmanager
def repository(c: Cluster) -> Iterator[tuple[WorkspaceRequestContext, RemoteRepository]]:
    """The code as the daemon sees it: the control group's code server."""
    target = GrpcServerTarget(
        host="127.0.0.1", port=c.control.code_port, socket=None, location_name="mirror"
    )
    with WorkspaceProcessContext(c.instance, target) as process_context:
        workspace = process_context.create_request_context()
        location = workspace.get_code_location("mirror")
        yield workspace, next(iter(location.get_repositories().values()))


def only_sensor(c: Cluster, keep: str | None) -> None:
    """Stop every schedule and sensor but `keep` (None: all of them), before the daemon
    starts: nothing else shares the machine with the runs measured."""
    with repository(c) as (_, repo):
        for schedule in repo.get_schedules():
            c.instance.stop_schedule(
                schedule.get_remote_origin_id(), schedule.selector_id, schedule
            )
            c.stopped.append(schedule.name)
        for sensor in repo.get_sensors():
            if sensor.name != keep:
                c.instance.stop_sensor(sensor.get_remote_origin_id(), sensor.selector_id, sensor)
                c.stopped.append(sensor.name)
    print(f"  {c.storage} instance; stopped before the daemon starts: {', '.join(c.stopped)}")


def start_daemon(c: Cluster) -> None:
    c.daemon_started = time.time()
    start_control(c.control)


def queue_backfills(lake: LakeLocation, dids: Sequence[str]) -> None:
    store = LakeStore(lake)
    try:
        store.transact(lambda con: queue(con, [(did, COLLECTION) for did in dids]))
    finally:
        store.close()


def lake_counts(lake: LakeLocation) -> tuple[int, int]:
    """Backfills not yet done, and records in the lake."""
    store = LakeStore(lake)
    try:
        with store.reading() as con:
            undone = one(
                con,
                "SELECT count(*) FROM backfills WHERE NOT list_contains(?, status)",
                [list(DONE)],
            )
            records = one(con, "SELECT count(*) FROM records", [])
    finally:
        store.close()
    return undone, records


def one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> int:
    return int(con.execute(sql, params).fetchall()[0][0])


# -- the machine --------------------------------------------------------------------------


def cpu_ticks() -> tuple[int, int]:
    """The machine's busy and total CPU ticks so far (/proc/stat, every core)."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def cores_busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    """How many cores were busy on average between two cpu_ticks()."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return (os.cpu_count() or 1) * busy / max(total, 1)


def tree_cpu(roots: Sequence[int]) -> float:
    """CPU seconds of the processes under `roots` (/proc/<pid>/stat): each live one's own
    (utime, stime) and what the children it has reaped used (cutime, cstime)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        pid = int(stat.parent.name)
        parents[pid], ticks[pid] = int(fields[1]), sum(int(n) for n in fields[11:15])
    tree = set(roots) & ticks.keys()
    grown = True
    while grown:
        below = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= below
        grown = bool(below)
    return sum(ticks[pid] for pid in tree) / os.sysconf("SC_CLK_TCK")


def postmaster(server: PostgresServer) -> int:
    """The Postgres server's main process (its backends are its children)."""
    return int((server.data / "postmaster.pid").read_text().split()[0])


def own_cpu(c: Cluster, server: PostgresServer, stand_in: BaseProcess) -> dict[str, float]:
    """CPU seconds so far of this benchmark's parts: the cluster's Dagster processes and
    their runs, the Postgres server, the stand-in."""
    dagster = [p.pid for group in c.groups for p in group.processes.values()]
    return {
        "Dagster and its runs": tree_cpu(dagster),
        "Postgres": tree_cpu([postmaster(server)]),
        "the stand-in": tree_cpu([stand_in.pid or 0]),
    }


def load() -> str:
    return " / ".join(f"{value:.1f}" for value in os.getloadavg())


# -- scale: one group against two ---------------------------------------------------------


@dataclass
class Layout:
    groups: int
    slots: int
    dids: int
    records: int
    seconds: float  # first run's creation to the last run's end
    from_daemon: float  # the daemon's start to the last run's end
    runs: list[dg.RunRecord]
    cores: float
    load_before: str
    load_after: str
    cpu: dict[str, float]  # CPU seconds of this benchmark's parts in the window
    window: float  # the daemon's start to the end seen: where `cores` and `cpu` were read

    @property
    def rate(self) -> float:
        return self.dids / self.seconds


def backfill_settings(
    plc: str, runs: int, per_run: int, args: argparse.Namespace
) -> dict[str, str]:
    return {
        "PLC_URL": plc,
        "RELAY_URL": plc,
        "HANDLE_RESOLVER_URL": plc,
        "MIRROR_ALLOW_PRIVATE_NETWORK": "1",
        "COLLECTIONS": COLLECTION,
        "JETSTREAM_URLS": "ws://127.0.0.1:9",  # no ingest runs: its schedule is stopped
        "BACKFILL_RUNS": str(runs),
        "BACKFILL_DIDS_PER_RUN": str(per_run),
        "BACKFILL_PER_HOST": str(args.per_host),
    }


def backfill_runs(instance: dg.DagsterInstance) -> list[dg.RunRecord]:
    return list(instance.get_run_records(filters=dg.RunsFilter(job_name=BACKFILL_JOB)))


def created(run: dg.RunRecord) -> float:
    return run.create_timestamp.timestamp()


def until_complete(c: Cluster, deadline: float) -> list[dg.RunRecord]:
    """Wait until no backfill run is in flight and every backfill in the lake is done (the
    lake is read once each time the runs in flight drain); the runs."""
    checked = -1
    while True:
        runs = backfill_runs(c.instance)
        finished = [run for run in runs if run.dagster_run.is_finished]
        if runs and len(finished) == len(runs) and len(runs) != checked:
            checked = len(runs)
            if lake_counts(c.lake)[0] == 0:
                return runs
        if time.time() > deadline:
            raise RuntimeError(f"not complete in time:\n{c.control.log('daemon')}")
        time.sleep(1)


def scale_layout(
    server: PostgresServer, stand_in: BaseProcess, plc: str, groups: int, args: argparse.Namespace
) -> Layout:
    slots = args.runs_per_group * groups
    dids = [numbered_did(d) for d in range(args.dids)]
    settings = backfill_settings(plc, slots, args.dids_per_run, args)
    with cluster(server, f"scale_{groups}", groups, settings) as c:
        queue_backfills(c.lake, dids)
        only_sensor(c, KEPT_SENSOR)
        load_before, ticks, cpu = load(), cpu_ticks(), own_cpu(c, server, stand_in)
        began = time.time()
        start_daemon(c)
        runs = until_complete(c, c.daemon_started + args.max_minutes * 60)
        cores = cores_busy(ticks, cpu_ticks())
        cpu = {part: used - cpu[part] for part, used in own_cpu(c, server, stand_in).items()}
        window, load_after = time.time() - began, load()
        records = lake_counts(c.lake)[1]
    first, last = min(map(created, runs)), max(run.end_time or 0.0 for run in runs)
    return Layout(
        groups,
        slots,
        len(dids),
        records,
        last - first,
        last - c.daemon_started,
        runs,
        cores,
        load_before,
        load_after,
        cpu,
        window,
    )


def slot_use(layout: Layout) -> tuple[float, float]:
    """The share of slot-time (BACKFILL_RUNS x the window) runs held a slot (queued to
    ended), and the share they ran (started to ended)."""
    window = layout.slots * layout.seconds
    held = sum((run.end_time or 0.0) - created(run) for run in layout.runs)
    ran = sum((run.end_time or 0.0) - (run.start_time or 0.0) for run in layout.runs)
    return held / window, ran / window


def in_flight_seconds(layout: Layout) -> float:
    """The time at least one run was in flight (created to ended): the window less the
    time no run existed, every slot waiting for the sensor's next tick."""
    spans = sorted((created(run), run.end_time or 0.0) for run in layout.runs)
    total, reached = 0.0, spans[0][0]
    for start, end in spans:
        total += max(0.0, end - max(start, reached))
        reached = max(reached, end)
    return total


def limit_of(layout: Layout) -> str:
    """What held the layout's rate back, from its numbers."""
    idle = 1 - in_flight_seconds(layout) / layout.seconds
    cores = os.cpu_count() or 1
    limits = []
    if idle >= 0.2:
        limits.append(
            f"the sensor's cadence (no run in flight {idle:.0%} of the time, every slot "
            f"waiting for the next tick, {SENSOR_SECONDS} s apart)"
        )
    if layout.cores >= 0.9 * cores:
        limits.append(
            f"the CPU ({layout.cores:.2f} of {cores} cores busy, {own_cores(layout):.2f} "
            "by this benchmark)"
        )
    return " and ".join(limits) or "the runs' own work (neither the sensor nor the CPU)"


def sensor_ceiling(layout: Layout, per_run: int) -> float:
    """DIDs/s if every tick launched BACKFILL_RUNS full runs and each ended before the next."""
    return layout.slots * per_run / SENSOR_SECONDS


def print_layout(layout: Layout, args: argparse.Namespace) -> None:
    expected = layout.dids * args.records
    ok = "ok" if layout.records == expected else f"MISMATCH, expected {expected:,}"
    held, ran = slot_use(layout)
    runs = layout.runs
    waits = [(run.start_time or 0.0) - created(run) for run in runs]
    spans = [(run.end_time or 0.0) - (run.start_time or 0.0) for run in runs]
    failed = sum(run.dagster_run.status != dg.DagsterRunStatus.SUCCESS for run in runs)
    print(
        f"  {layout.groups} group(s), BACKFILL_RUNS {layout.slots}: {layout.dids} DIDs "
        f"({layout.records:,} records, {ok}) in {layout.seconds:.1f} s from the first run's "
        f"creation = {layout.rate:.2f} DIDs/s ({layout.dids / layout.from_daemon:.2f} DIDs/s "
        f"over {layout.from_daemon:.1f} s from the daemon's start)\n"
        f"    {len(runs)} runs ({failed} not successful); per run: created to started "
        f"median {statistics.median(waits):.1f} s, started to ended median "
        f"{statistics.median(spans):.1f} s (max {max(spans):.1f})\n"
        f"    run slots held {held:.0%} of the time (queued to ended), running {ran:.0%}; "
        f"the rest waited for a sensor tick; {layout.dids / in_flight_seconds(layout):.2f} "
        f"DIDs/s over the {in_flight_seconds(layout):.1f} s some run was in flight\n"
        f"    machine: {layout.cores:.2f} of {os.cpu_count()} cores busy, "
        f"{own_cores(layout):.2f} of them by this benchmark (CPU s: "
        + ", ".join(f"{part} {used:.0f}" for part, used in layout.cpu.items())
        + f"), the rest by other work on the machine; load {layout.load_before} before, "
        f"{layout.load_after} after",
        flush=True,
    )


def own_cores(layout: Layout) -> float:
    return sum(layout.cpu.values()) / layout.window


def politeness(args: argparse.Namespace, slots: int) -> str:
    """What BACKFILL_PER_HOST allows, whatever the runs: each run gets per_host // runs."""
    per_second = args.per_host / (args.latency_ms / 1000)
    return (
        f"per run {args.per_host // slots} requests per host; the cluster at most "
        f"{per_second:,.0f} requests/s per host: the PLC host (2 a DID) caps it at "
        f"{per_second / 2:,.0f} DIDs/s, the {args.hosts} PDS hosts (getLatestCommit and "
        f"{pages(args.records)} listRecords pages a DID) at "
        f"{args.hosts * per_second / (1 + pages(args.records)):,.0f}"
    )


def pages(records: int) -> int:
    return records // 100 + 1  # 100 a page, then one that says there are no more


def run_scale(args: argparse.Namespace, server: PostgresServer) -> None:
    stand_in, plc = start_stand_in(args)
    try:
        layouts = []
        for groups in (1, 2):
            print(f"\nscale: {groups} group(s) ...", flush=True)
            print(f"  politeness: {politeness(args, args.runs_per_group * groups)}")
            layouts.append(scale_layout(server, stand_in, plc, groups, args))
            print_layout(layouts[-1], args)
    finally:
        stand_in.terminate()
    print_scale(layouts[0], layouts[1], args.dids_per_run)


def print_scale(one_group: Layout, two: Layout, per_run: int) -> None:
    ratio = two.rate / one_group.rate
    one_daemon, two_daemon = (x.dids / x.from_daemon for x in (one_group, two))
    print(
        f"\nscale: 1 group {one_group.rate:.2f} DIDs/s, 2 groups {two.rate:.2f} DIDs/s, "
        f"2 / 1 = {ratio:.2f} (target >= {TARGET_RATIO}: "
        f"{'met' if ratio >= TARGET_RATIO else 'MISSED'}); from the daemon's start "
        f"{one_daemon:.2f} and {two_daemon:.2f}, {two_daemon / one_daemon:.2f}\n"
        f"  The sensor launches runs at most every {SENSOR_SECONDS} s, so a slot freed "
        f"between ticks stays empty until the next: at BACKFILL_RUNS runs of {per_run} DIDs "
        f"a tick it allows {sensor_ceiling(one_group, per_run):.2f} and "
        f"{sensor_ceiling(two, per_run):.2f} DIDs/s (a layout of n waves takes (n - 1) x "
        f"{SENSOR_SECONDS} s and its last wave). Both groups' runs share this machine's "
        f"{os.cpu_count()} cores, which bound the ratio whatever Dagster does.\n"
        f"  What limited it: 1 group, {limit_of(one_group)}; 2 groups, {limit_of(two)}."
    )


# -- overhead: Postgres against SQLite ----------------------------------------------------

# From create_run to the end of submit_run (this process, this clock); to RUN_STARTING: the
# queue, until the daemon dequeues the run (every second) and the launcher hands it to the
# code server; to RUN_START: the run process starts and loads the code; to STEP_START:
# resources; STEP_START to STEP_SUCCESS less the asset's own work; to RUN_SUCCESS.
PHASES = (
    "create and submit",
    "queued",
    "process start",
    "before step",
    "step less work",
    "after step",
)
MARKS = (
    dg.DagsterEventType.RUN_STARTING,
    dg.DagsterEventType.RUN_START,
    dg.DagsterEventType.STEP_START,
    dg.DagsterEventType.STEP_SUCCESS,
    dg.DagsterEventType.RUN_SUCCESS,
)


@dataclass
class RunCost:
    wall: float  # created to RUN_SUCCESS
    work: float  # run_backfill's own seconds
    phases: dict[str, float]
    events: int

    @property
    def overhead(self) -> float:
        return self.wall - self.work


def submit(c: Cluster, did: str) -> tuple[str, float, float]:
    """Create a run of `backfill_job` for one DID and submit it to the queue, as `dagster
    job launch` does; its id, and when its creation began and its submission ended."""
    with repository(c) as (workspace, repo):
        job = repo.get_full_job(BACKFILL_JOB)
        location = workspace.get_code_location("mirror")
        plan = location.get_execution_plan(
            job, {}, step_keys_to_execute=None, known_state=None, instance=c.instance
        )
        began = time.time()
        run = c.instance.create_run(
            job_name=job.name,
            run_id=None,
            run_config={},
            resolved_op_selection=None,
            step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute,
            op_selection=None,
            status=None,
            root_run_id=None,
            parent_run_id=None,
            tags={**job.tags, PARTITION_TAG: did},
            job_snapshot=job.job_snapshot,
            execution_plan_snapshot=plan.execution_plan_snapshot,
            parent_job_snapshot=job.parent_job_snapshot,
            remote_job_origin=job.get_remote_origin(),
            job_code_origin=job.get_python_origin(),
            asset_selection=None,
            asset_check_selection=None,
            asset_graph=repo.asset_graph,
        )
        c.instance.submit_run(run.run_id, workspace)
        submitted = time.time()
    return run.run_id, began, submitted


def until_finished(c: Cluster, run_id: str, seconds: float) -> dg.DagsterRun:
    deadline = time.monotonic() + seconds
    while True:
        run = c.instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            return run
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} not finished:\n{c.control.log('daemon')}")
        time.sleep(0.2)


def run_cost(c: Cluster, run_id: str, began: float, submitted: float) -> RunCost:
    """The run's phases from its events' times, and the asset's own work."""
    entries = c.instance.all_logs(run_id)
    at: dict[dg.DagsterEventType, float] = {}
    work = 0.0
    for entry in entries:
        event = entry.dagster_event
        if event is None:
            continue
        at.setdefault(event.event_type, entry.timestamp)
        if event.event_type == dg.DagsterEventType.ASSET_OBSERVATION:
            seconds = event.asset_observation_data.asset_observation.metadata["seconds"]
            work = float(str(seconds.value))  # run_backfill's own time (defs/backfill.py)
    marks = [began, submitted, *(at[mark] for mark in MARKS)]
    phases = {name: marks[i + 1] - marks[i] for i, name in enumerate(PHASES)}
    phases["step less work"] -= work
    return RunCost(at[dg.DagsterEventType.RUN_SUCCESS] - began, work, phases, len(entries))


def one_run(c: Cluster, did: str) -> RunCost:
    run_id, began, submitted = submit(c, did)
    run = until_finished(c, run_id, 300)
    if run.status != dg.DagsterRunStatus.SUCCESS:
        raise RuntimeError(f"run {run_id} {run.status.value}:\n{c.control.log('code')}")
    return run_cost(c, run_id, began, submitted)


def prepare(c: Cluster, dids: Sequence[str]) -> None:
    """The DIDs queued in the lake and known to Dagster as partitions; no sensor or
    schedule; the daemon started."""
    queue_backfills(c.lake, dids)
    c.instance.add_dynamic_partitions(DIDS, list(dids))
    only_sensor(c, None)
    start_daemon(c)


def median_cost(costs: Sequence[RunCost]) -> dict[str, float]:
    values = {
        "wall": statistics.median(c.wall for c in costs),
        "work": statistics.median(c.work for c in costs),
        "overhead": statistics.median(c.overhead for c in costs),
        "unqueued": statistics.median(c.overhead - c.phases["queued"] for c in costs),
        "events": statistics.median(c.events for c in costs),
    }
    for phase in PHASES:
        values[phase] = statistics.median(c.phases[phase] for c in costs)
    return values


def run_overhead(args: argparse.Namespace, server: PostgresServer) -> None:
    overhead_args = argparse.Namespace(**{**vars(args), "dids": args.runs + 1})
    stand_in, plc = start_stand_in(overhead_args)
    dids = [numbered_did(d) for d in range(args.runs + 1)]
    settings = backfill_settings(plc, 2, 1, args)
    costs: dict[str, list[RunCost]] = {"sqlite": [], "postgres": []}
    try:
        with ExitStack() as stack:
            clusters = [
                stack.enter_context(cluster(server, f"overhead_{kind}", 1, settings, kind))
                for kind in costs
            ]
            for c in clusters:
                prepare(c, dids)
            print(f"\noverhead: warm-up run on each, then {args.runs} each, alternately ...")
            for c in clusters:
                one_run(c, dids[-1])
            started, before = load(), cpu_ticks()
            for did in dids[: args.runs]:
                for c in clusters:
                    costs[c.storage].append(one_run(c, did))
            cores = cores_busy(before, cpu_ticks())
    finally:
        stand_in.terminate()
    print_overhead(costs, cores, started)


def print_overhead(costs: dict[str, list[RunCost]], cores: float, started: str) -> None:
    medians = {kind: median_cost(runs) for kind, runs in costs.items()}
    for kind, values in medians.items():
        walls = sorted(round(c.wall, 2) for c in costs[kind])
        print(
            f"  {kind:8}: per run (median of {len(costs[kind])}) {values['wall']:.2f} s from "
            f"creation to RUN_SUCCESS, the asset's work {values['work']:.2f} s, Dagster "
            f"{values['overhead']:.2f} s; {values['events']:.0f} events a run; all: {walls}\n"
            "            " + ", ".join(f"{phase} {values[phase]:.2f} s" for phase in PHASES)
        )
    sqlite, postgres = medians["sqlite"]["overhead"], medians["postgres"]["overhead"]
    unqueued = {kind: values["unqueued"] for kind, values in medians.items()}
    print(
        f"\noverhead: Dagster per run, Postgres {postgres:.2f} s, SQLite {sqlite:.2f} s: "
        f"difference {postgres - sqlite:+.2f} s, Postgres / SQLite = {postgres / sqlite:.2f}; "
        f"less the queue (the daemon looks every second): {unqueued['postgres']:.2f} s and "
        f"{unqueued['sqlite']:.2f} s, {unqueued['postgres'] / unqueued['sqlite']:.2f}; "
        f"{cores:.2f} of {os.cpu_count()} cores busy meanwhile, load {started} before, "
        f"{load()} after (Postgres on this host's loopback: another machine adds its round "
        "trip to every storage call)"
    )


# -- the command --------------------------------------------------------------------------


def scale_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dids", type=int, default=400)
    parser.add_argument("--dids-per-run", type=int, default=25, help="BACKFILL_DIDS_PER_RUN")
    parser.add_argument("--runs-per-group", type=int, default=2, help="BACKFILL_RUNS a group")
    parser.add_argument("--max-minutes", type=float, default=8.0, help="a layout's time bound")


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=int, default=100, help="records a DID")
    parser.add_argument("--hosts", type=int, default=4, help="PDS hosts")
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--per-host", type=int, default=8, help="BACKFILL_PER_HOST")


def overhead_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=10, help="measured runs per instance")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--keep", action="store_true", help="keep bench/out/cluster/")
    parts = parser.add_subparsers(dest="part")
    for name, adders in {
        "all": (scale_arguments, overhead_arguments),
        "scale": (scale_arguments,),
        "overhead": (overhead_arguments,),
    }.items():
        part = parts.add_parser(name)
        for add in (*adders, common_arguments):
            add(part)
    args = parser.parse_args(argv)
    if args.part is None:
        args = parser.parse_args([*(argv or sys.argv[1:]), "all"])
    return args


def code() -> str:
    """The commit the code is at (read only)."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    print(
        f"bench.cluster {args.part}: dagster {dg.__version__}, duckdb {duckdb.__version__}, "
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load {load()}, "
        f"code {code()}, {time.strftime('%Y-%m-%d %H:%M')}",
        flush=True,
    )
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        with running_postgres(OUT) as server:
            if args.part in ("all", "scale"):
                run_scale(args, server)
            if args.part in ("all", "overhead"):
                run_overhead(args, server)
    finally:
        if not args.keep:
            shutil.rmtree(OUT, ignore_errors=True)
    print(f"load average at the end {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
