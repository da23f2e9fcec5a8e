"""Soak: the production layout under a steady live stream for a long time, with faults.

    .venv/bin/python -m bench.soak [--minutes 60] [--rate 200] [--drop-every 50]
                                   [--kill-every 300] [--history-every 600]

The four services run as their systemd units would (`tests/support/deploy_units.py`), each
started again when it exits, as `Restart=on-failure` does. A Jetstream stand-in in this
process receives `--rate` events a second, stamped with the current time (creates, updates
and deletes over 2,000 users), and breaks its connection every `--drop-every` seconds.
Every `--kill-every` seconds a running run process is SIGKILLed, and once, halfway, the API.
The `history` job is launched every `--history-every` seconds, with successful runs kept 10
minutes. Meanwhile a client asks the API for a first page every second.

Printed every minute: the ingest cursor's lag, the resident memory of each service (with
the runs its processes started), DAGSTER_HOME's size. At the end, after the stream stops and
the mirror catches up: lag p50/p99/max, memory at the start and the end, the API's
latencies and errors, and the mirror's records against the expected state.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from mirror_assets.store.file import FileStore
from tests.support.deploy_units import UNITS, local_environment, start_unit, stop_unit
from tests.support.events_factory import CARD, create, delete, did, update
from tests.support.jetstream_server import JetstreamServer

USERS = 2_000
_LAUNCH_HISTORY = """
mutation { launchRun(executionParams: {selector: {repositoryLocationName: "mirror",
  repositoryName: "__repository__", jobName: "history"}}) { __typename } }
"""


class Stream:
    """Live events into the stand-in, and the state they must leave (URI -> live)."""

    def __init__(self, server: JetstreamServer, rate: float) -> None:
        self.server, self.rate = server, rate
        self.expected: dict[str, bool] = {}
        self.last_us = 0
        self._n = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        period = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.server.add(self._next_event())
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))

    def _next_event(self) -> dict[str, Any]:
        self._n += 1
        n, user = self._n, did(f"soak{self._n % USERS}")
        live = [uri for uri, alive in self.expected.items() if alive] if n % 10 == 0 else []
        if live and n % 20 == 0:  # a delete of some earlier record
            uri = random.choice(live)
            owner, rkey = uri.split("/")[2], uri.rsplit("/", 1)[1]
            event, self.expected[uri] = delete(owner, rkey, rev=n, t=0), False
        elif live:  # an update
            uri = random.choice(live)
            owner, rkey = uri.split("/")[2], uri.rsplit("/", 1)[1]
            event = update(owner, rkey, rev=n, t=0, text=f"edit {n}")
        else:
            rkey = f"s{n}"
            event = create(user, rkey, rev=n, t=0, text=f"card {n}")
            self.expected[f"at://{user}/{CARD}/{rkey}"] = True
        self.last_us = event["time_us"] = time.time_ns() // 1000
        return event


class Services:
    """The four units, each started again when it exits."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = dict.fromkeys(UNITS, 0)

    def start(self) -> None:
        for unit in UNITS:
            self.processes[unit] = start_unit(unit, self.env, self.logs / f"{unit}.log")

    def keep_up(self) -> None:
        for unit, process in self.processes.items():
            if process.poll() is not None:
                self.restarts[unit] += 1
                self.processes[unit] = start_unit(unit, self.env, self.logs / f"{unit}.log")

    def stop(self) -> None:
        for process in self.processes.values():
            stop_unit(process)

    def rss_mib(self) -> dict[str, float]:
        """Resident memory of each service with every process it started."""
        tree = _process_tree()
        return {unit: _rss_of(p.pid, tree) / 1024 for unit, p in self.processes.items()}

    def run_workers(self) -> list[int]:
        tree = _process_tree()
        code = self.processes["code"].pid
        # The code server starts each run in a `multiprocessing` spawn child.
        return [pid for pid in _descendants(code, tree) if "spawn_main" in _cmdline(pid)]


def _process_tree() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry.name))
    return children


def _descendants(pid: int, tree: dict[int, list[int]]) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _rss_of(pid: int, tree: dict[int, list[int]]) -> float:
    """KiB resident, the process and its descendants."""
    total = 0.0
    for each in [pid, *_descendants(pid, tree)]:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += float(line.split()[1])
        except OSError:
            continue
    return total


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _bytes_under(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else (values or [0])[0]


class ApiProbe:
    """A first page every second: latency and status of each."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.wait(1.0):
                started = time.perf_counter()
                try:
                    ok = client.get(self.url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies.append((time.perf_counter() - started) * 1000)
                self.errors += not ok

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def soak(args: argparse.Namespace, folder: Path) -> None:
    with JetstreamServer() as server:
        env = local_environment(folder, server.url, HISTORY_KEEP_SUCCESS_DAYS=str(600 / 86_400))
        dagster, api = (
            f"http://127.0.0.1:{env['DAGSTER_PORT']}",
            f"http://127.0.0.1:{env['API_PORT']}",
        )
        stream, services = Stream(server, args.rate), Services(env, folder)
        services.start()
        stream.start()
        probe = ApiProbe(f"{api}/records/{CARD}")
        started = time.monotonic()
        end = started + args.minutes * 60
        lags: list[float] = []
        memory: list[dict[str, float]] = []
        kills, api_killed, last = (
            0,
            False,
            {"drop": started, "kill": started, "history": started, "report": 0.0},
        )
        try:
            lag: float | None = None
            last["lag"] = 0.0
            while (now := time.monotonic()) < end:
                time.sleep(1)
                services.keep_up()
                if now - last["lag"] >= 5:
                    lag, last["lag"] = _lag(api), now
                    if lag is not None:
                        lags.append(lag)
                if now - last["drop"] >= args.drop_every:
                    server.drop_after(random.randint(50, 2_000))
                    last["drop"] = now
                if now - last["kill"] >= args.kill_every and (workers := services.run_workers()):
                    os.kill(random.choice(workers), signal.SIGKILL)
                    kills, last["kill"] = kills + 1, now
                if not api_killed and now - started >= args.minutes * 30:
                    services.processes["api"].kill()
                    api_killed = True
                if now - last["history"] >= args.history_every:
                    httpx.post(f"{dagster}/graphql", json={"query": _LAUNCH_HISTORY}, timeout=30)
                    last["history"] = now
                if now - last["report"] >= 60:
                    memory.append(services.rss_mib())
                    home = _bytes_under(folder / "dagster") / 2**20
                    rss = {unit: round(mib) for unit, mib in memory[-1].items()}
                    print(
                        f"{(now - started) / 60:5.1f} min  lag {lag} s  rss MiB {rss}  "
                        f"DAGSTER_HOME {home:.1f} MiB  kills {kills}  "
                        f"restarts {services.restarts}",
                        flush=True,
                    )
                    last["report"] = now
            stream.stop()
            caught_up = _catch_up(api, stream.last_us, timeout=300)
        finally:
            probe.stop()
            final_memory = services.rss_mib()
            services.stop()
        _report(args, lags, memory, final_memory, probe, kills, services, folder, stream, caught_up)


def _lag(api: str) -> float | None:
    try:
        body = httpx.get(f"{api}/cursor", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return None
    return float(body["seconds_ago"]) if body.get("time_us") else None


def _catch_up(api: str, last_us: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if int(httpx.get(f"{api}/cursor", timeout=10).json().get("time_us") or 0) >= last_us:
                return True
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(5)
    return False


def _report(
    args: argparse.Namespace,
    lags: list[float],
    memory: list[dict[str, float]],
    final_memory: dict[str, float],
    probe: ApiProbe,
    kills: int,
    services: Services,
    folder: Path,
    stream: Stream,
    caught_up: bool,
) -> None:
    with FileStore(folder / "mirror.duckdb").reading() as con:
        stored = {uri for (uri,) in con.execute("SELECT uri FROM records").fetchall()}
    expected = {uri for uri, live in stream.expected.items() if live}
    print("== summary")
    print(
        f"  {args.minutes} min at {args.rate} events/s; {kills} run processes killed; "
        f"API killed once; restarts {services.restarts}"
    )
    print(
        f"  lag s: p50 {_percentile(lags, 50):.1f}  p99 {_percentile(lags, 99):.1f}  "
        f"max {max(lags, default=0):.1f}  (caught up at the end: {caught_up})"
    )
    first = memory[0] if memory else {}
    for unit in UNITS:
        peak = max((m.get(unit, 0) for m in memory), default=0)
        start, final = first.get(unit, 0), final_memory.get(unit, 0)
        print(f"  {unit:<10} rss MiB start {start:7.0f}  end {final:7.0f}  max {peak:7.0f}")
    print(f"  DAGSTER_HOME {_bytes_under(folder / 'dagster') / 2**20:.1f} MiB at the end")
    lat = probe.latencies
    print(
        f"  API first pages: {len(lat)} requests, {probe.errors} not 200, "
        f"p50 {_percentile(lat, 50):.1f} ms  p99 {_percentile(lat, 99):.1f} ms"
    )
    state = (
        "ok" if stored == expected else f"MISMATCH ({len(stored)} stored, {len(expected)} expected)"
    )
    print(f"  records: {len(stored)} live, expected {len(expected)}: {state}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--drop-every", type=float, default=50)
    parser.add_argument("--kill-every", type=float, default=300)
    parser.add_argument("--history-every", type=float, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as folder:
        soak(args, Path(folder))


if __name__ == "__main__":
    main()
