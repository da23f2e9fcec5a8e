"""What the parts of bench/lake.py share: a throwaway Postgres for the catalogs, new lakes in
it, the catalog's rows, per-statement timers, and a count of the lake's conflicts.

Nothing here changes the mirror: the timers and counters wrap its functions in this
process only, for one measurement.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

import mirror_assets.store.contract as contract_module
import mirror_assets.store.file as file_module
import mirror_assets.store.lake as lake_module
import mirror_assets.store.schema as schema_module
from bench.ingest import _statement_names
from mirror_assets.config import LakeLocation
from mirror_assets.store.lake import LakeStore
from tests.support.postgres import PostgresServer, running_postgres

OUT = Path(__file__).resolve().parent / "out"
LAKE_OUT = OUT / "lake"


@contextmanager
def catalog_server() -> Iterator[PostgresServer]:
    """A Postgres cluster for the bench's catalogs, removed at the end (as root it lives
    under the system temp folder, owned by postgres; tests/support/postgres.py)."""
    LAKE_OUT.mkdir(parents=True, exist_ok=True)
    with running_postgres(LAKE_OUT) as server:
        yield server


@dataclass(frozen=True)
class BenchLake:
    """A lake of the bench: its catalog database and its data folder."""

    server: PostgresServer
    database: str
    location: LakeLocation

    @property
    def data_path(self) -> Path:
        return Path(self.location.data_path)


MADE: list[Path] = []  # the data folders of this run's lakes, removed at its end


def new_lake(server: PostgresServer, name: str) -> BenchLake:
    """A new, empty lake: a database of its own, a data folder under bench/out/lake/."""
    data = LAKE_OUT / name
    shutil.rmtree(data, ignore_errors=True)
    MADE.append(data)
    dsn = server.create_database(name)
    return BenchLake(server, name, LakeLocation(f"postgres:{dsn}", str(data)))


def psql(lake: BenchLake, sql: str) -> list[list[str]]:
    """Rows of one query in the catalog database, through the server's own psql."""
    command = [
        str(lake.server.bin_dir / "psql"),
        *lake.server.client_args(),
        "-d",
        lake.database,
        "-At",
        "-F",
        "\t",
        "-c",
        sql,
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in output.splitlines() if line]


def catalog_rows(lake: BenchLake) -> dict[str, int]:
    """Rows of every ducklake_* table of the catalog (inlined data tables included)."""
    tables = [
        row[0]
        for row in psql(
            lake,
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_name LIKE 'ducklake%' ORDER BY 1",
        )
    ]
    if not tables:
        return {}
    union = " UNION ALL ".join(f"SELECT '{name}', count(*) FROM {name}" for name in tables)
    return {name: int(count) for name, count in psql(lake, union)}


def catalog_bytes(lake: BenchLake) -> int:
    return int(psql(lake, f"SELECT pg_database_size('{lake.database}')")[0][0])


def files_on_disk(lake: BenchLake) -> tuple[int, int]:
    """Parquet files under the data path, and their bytes (what a listing would find)."""
    paths = list(lake.data_path.rglob("*.parquet"))
    return len(paths), sum(path.stat().st_size for path in paths)


def summarize_catalog(rows: dict[str, int]) -> str:
    """The total and the largest tables, for one line."""
    inlined = sum(n for name, n in rows.items() if name.startswith("ducklake_inlined_data"))
    named = {
        name.removeprefix("ducklake_"): n
        for name, n in rows.items()
        if not name.startswith("ducklake_inlined_data")
    }
    top = sorted(named.items(), key=lambda item: -item[1])[:6]
    parts = [f"{name} {n:,}" for name, n in top] + [f"inlined data {inlined:,}"]
    return f"{sum(rows.values()):,} rows: " + ", ".join(parts)


# -- timers -----------------------------------------------------------------------------


@dataclass
class Steps:
    """Seconds per SQL statement of the wrapped writes, named as bench/ingest.py names them."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    names: dict[str, str] = field(default_factory=_statement_names)

    def add(self, sql: str, seconds: float) -> None:
        key = self.names.get(sql) or " ".join(sql.split()[:3]).lower()
        self.seconds[key] += seconds


class TimedConnection:
    """A connection whose `execute` is timed by statement; everything else passes through."""

    def __init__(self, con: duckdb.DuckDBPyConnection, steps: Steps) -> None:
        self._con = con
        self._steps = steps

    def execute(self, sql: str, *args: Any) -> Any:
        started = time.perf_counter()
        result = self._con.execute(sql, *args)
        self._steps.add(sql, time.perf_counter() - started)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


@dataclass
class Flush:
    """One write transaction through `transact`: when, how long its parts took."""

    started: float  # time.monotonic()
    ended: float
    write_seconds: float  # the caller's `write(con)` (the apply)
    waited: float  # what transact reported waiting for conflicts
    result: Any


@contextmanager
def timed_transact(store: Any, steps: Steps | None = None) -> Iterator[list[Flush]]:
    """Wrap `store.transact` of this one store: each transaction's span and its write's
    time (the rest is BEGIN, the schema check, COMMIT and the cursor); statements timed
    into `steps` if given, and the schema check (`migrate`) of every write."""
    flushes: list[Flush] = []
    real = store.transact
    real_migrate = schema_module.migrate
    # Wherever the stores call it from (the module that imported it by name).
    modules = [m for m in (contract_module, lake_module, file_module) if hasattr(m, "migrate")]

    def transact(write: Callable[[Any], Any]) -> Any:
        spent = [0.0]

        def timed_write(con: duckdb.DuckDBPyConnection) -> Any:
            began = time.perf_counter()
            try:
                return write(TimedConnection(con, steps) if steps is not None else con)
            finally:
                spent[0] += time.perf_counter() - began

        started = time.monotonic()
        result, waited = real(timed_write)
        flushes.append(Flush(started, time.monotonic(), spent[0], waited, result))
        return result, waited

    def migrate(con: duckdb.DuckDBPyConnection) -> int:
        began = time.perf_counter()
        try:
            return real_migrate(con)
        finally:
            if steps is not None:
                steps.seconds["schema check (migrate)"] += time.perf_counter() - began

    store.transact = transact
    for module in modules:
        module.migrate = migrate  # type: ignore[assignment]
    try:
        yield flushes
    finally:
        del store.transact
        for module in modules:
            module.migrate = real_migrate  # type: ignore[assignment]


# -- conflicts --------------------------------------------------------------------------


@dataclass
class ConflictCount:
    """The lake's transactions in this process: how many, how many conflicted (each one is
    run again by `LakeStore.transact`), the seconds waited, and the conflicts' messages."""

    transactions: int = 0
    conflicts: int = 0
    waited_seconds: float = 0.0
    longest_wait_seconds: float = 0.0
    messages: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "transactions": self.transactions,
            "conflicts": self.conflicts,
            "waited_seconds": self.waited_seconds,
            "longest_wait_seconds": self.longest_wait_seconds,
            "messages": dict(self.messages.most_common(5)),
        }


@contextmanager
def counted_conflicts() -> Iterator[ConflictCount]:
    """Count every LakeStore transaction and conflict of this process while inside:
    `LakeStore.transact` is wrapped (transactions, seconds waited) and the lake module's
    `is_conflict` (each True is one retry)."""
    count = ConflictCount()
    real_transact = LakeStore.transact
    real_is_conflict = lake_module.is_conflict

    def transact(self: LakeStore, write: Callable[[Any], Any]) -> Any:
        result, waited = real_transact(self, write)
        count.transactions += 1
        count.waited_seconds += waited
        count.longest_wait_seconds = max(count.longest_wait_seconds, waited)
        return result, waited

    def is_conflict(error: duckdb.Error) -> bool:
        conflict = real_is_conflict(error)
        if conflict:
            count.conflicts += 1
            count.messages[_conflict_kind(str(error))] += 1
        return conflict

    LakeStore.transact = transact  # type: ignore[method-assign]
    lake_module.is_conflict = is_conflict
    try:
        yield count
    finally:
        LakeStore.transact = real_transact  # type: ignore[method-assign]
        lake_module.is_conflict = real_is_conflict


def _conflict_kind(message: str) -> str:
    """A conflict's message without its numbers (table ids, snapshot ids)."""
    text = " ".join(message.split())
    return "".join(ch for ch in text if not ch.isdigit())[:400]


# -- numbers ----------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(seconds: float) -> str:
    return f"{1000 * seconds:,.1f} ms"


def timed_runs(
    action: Callable[[], object], count: int, max_seconds: float
) -> tuple[list[float], int]:
    """Seconds of each call of `action`, up to `count` calls or `max_seconds` in all."""
    times: list[float] = []
    deadline = time.monotonic() + max_seconds
    while len(times) < count and time.monotonic() < deadline:
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return times, len(times)
