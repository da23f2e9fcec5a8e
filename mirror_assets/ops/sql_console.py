"""`mirror sql`: one read-only query on the mirror, through the read lock, as text.

Two fences keep the query from changing anything or reaching outside the mirror:

1. Only a single SELECT (FROM-first, VALUES, SHOW, DESCRIBE and SUMMARIZE parse as SELECT)
   or an EXPLAIN of one is run; any other statement is refused before DuckDB executes it.
   This is what refuses CREATE TEMP TABLE, SET, PRAGMA, CALL and the like, also behind
   `EXPLAIN ANALYZE`, which runs what it explains.
2. DuckDB itself: the file is attached READ_ONLY to an in-memory instance, which then
   loses file-system and extension access (`enable_external_access = false`), and the
   configuration is locked so no statement can turn that back on. This catches what a
   SELECT can still reach: `read_csv('/etc/passwd')`, `read_parquet`, `glob`, sequences.

Two bounds keep it from holding up the mirror: the query is interrupted after
SQL_TIMEOUT_SECONDS (30 s), and DuckDB may use SQL_MEMORY_LIMIT (1GB) for it, with no
spilling to disk. The read lock is held only while the query runs and its rows are fetched:
a waiting writer (the minute's ingest) waits for that, at most the time limit, not for the
printing.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb

from mirror_assets.config import LakeLocation
from mirror_assets.store import extensions
from mirror_assets.store.lake import CATALOG, LAKE_NOT_MADE, attach
from mirror_assets.store.lock import read_lock

ATTACHED_AS = CATALOG
FORMATS = ("table", "csv", "json")
MAX_CELL = 60  # characters of a value shown in the table format (csv and json keep all)
_NUMBERS = (int, float, Decimal)
_ONE_LINE = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})  # a row stays one line


class QueryRefusedError(ValueError):
    """The statement is not a read-only query, or DuckDB refused or failed to run it."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    types: list[str]  # DuckDB's type names: JSON columns are output as nested JSON
    rows: list[tuple[Any, ...]]
    truncated: bool  # more rows matched than were fetched


@dataclass(frozen=True)
class QueryLimits:
    """How long a query may run and how much memory DuckDB may give it."""

    timeout_seconds: float = 30.0
    memory_limit: str = "1GB"


def run_query(
    where: Path | LakeLocation,
    sql: str,
    max_rows: int,
    limits: QueryLimits = QueryLimits(),
    lock_timeout: float = 120.0,
) -> QueryResult:
    """Run one read-only query on the file or the lake, and fetch at most `max_rows` rows."""
    if isinstance(where, Path) and not where.exists():
        raise QueryRefusedError(f"no mirror at {where} yet: run `mirror init` or `mirror run`")
    try:
        with _read_locked(where, lock_timeout), read_only_instance(where, limits) as con:
            check_statement(con, sql)
            if isinstance(where, LakeLocation):
                check_functions(con, sql, _lake_functions(con))
            # The lock is held while the query runs: a query that runs long is stopped, so
            # writers and the API wait at most this long for it.
            timer = threading.Timer(limits.timeout_seconds, con.interrupt)
            timer.start()
            try:
                cursor = con.execute(sql)
                rows = cursor.fetchmany(max_rows + 1)
                description = cursor.description or []
            finally:
                timer.cancel()
    except duckdb.InterruptException:
        raise QueryRefusedError(
            f"the query ran longer than {limits.timeout_seconds:g} s and was stopped "
            "(SQL_TIMEOUT_SECONDS); narrow it, or read the Parquet exports instead"
        ) from None
    except duckdb.OutOfMemoryException:
        raise QueryRefusedError(
            f"the query needs more than {limits.memory_limit} of memory (SQL_MEMORY_LIMIT); "
            "narrow it, or read the Parquet exports instead"
        ) from None
    except duckdb.Error as error:
        if LAKE_NOT_MADE in str(error) and isinstance(where, LakeLocation):
            raise QueryRefusedError(
                f"no mirror in the lake at {where.data_path} yet: run `mirror init` or `mirror run`"
            ) from None
        raise QueryRefusedError(_first_line(error)) from None
    return QueryResult(
        columns=[column[0] for column in description],
        types=[str(column[1]) for column in description],
        rows=rows[:max_rows],
        truncated=len(rows) > max_rows,
    )


@contextmanager
def _read_locked(where: Path | LakeLocation, timeout: float) -> Iterator[None]:
    """The file's read lock; the lake needs none (a read sees one snapshot)."""
    if isinstance(where, LakeLocation):
        yield
        return
    with read_lock(where, timeout):
        yield


@contextmanager
def read_only_instance(
    where: Path | LakeLocation,
    limits: QueryLimits = QueryLimits(),
) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB with the file or the lake attached READ_ONLY as the default
    database, and no way out to the file system (but for the lake's own data files). The
    caller holds the file's read lock."""
    con = duckdb.connect(":memory:", config=extensions.NO_DOWNLOADS)
    try:
        if isinstance(where, LakeLocation):
            attach(con, where, read_only=True)
            con.execute("SET allowed_directories = ?", [[where.data_path]])
        else:
            path = str(where.absolute()).replace("'", "''")
            con.execute(f"ATTACH '{path}' AS {ATTACHED_AS} (READ_ONLY)")
        con.execute(f"USE {ATTACHED_AS}")  # so tables answer to their plain names
        con.execute("SET TimeZone = 'UTC'")  # times print as the mirror stores them
        con.execute("SET memory_limit = ?", [limits.memory_limit])
        con.execute("SET temp_directory = ''")  # past the limit it fails, never spills
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        yield con
    finally:
        con.close()


def check_statement(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but one SELECT, or an EXPLAIN of one."""
    statements = con.extract_statements(sql)
    if len(statements) != 1:
        raise QueryRefusedError(f"give one statement, not {len(statements)}")
    kind = statements[0].type
    if kind == duckdb.StatementType.EXPLAIN:
        check_statement(con, _explained(sql))
    elif kind != duckdb.StatementType.SELECT:
        raise QueryRefusedError(
            f"only read-only queries (SELECT, EXPLAIN) are run, not {kind.name} statements"
        )


# Core functions that run SQL given as text: what they run is not in the statement checked.
_RUNS_TEXT = frozenset({"query", "query_table"})


def _lake_functions(con: duckdb.DuckDBPyConnection) -> frozenset[str]:
    """The functions the lake's extensions brought (`postgres_execute`, `postgres_query`,
    `ducklake_*`, ...): a query could reach the catalog's database through them, past the
    read-only attach, with the mirror's own credentials. So could the core functions that
    run SQL text."""
    core = duckdb.connect(":memory:", config=extensions.NO_DOWNLOADS)
    try:
        built_in = _function_names(core)
    finally:
        core.close()
    return frozenset(_function_names(con) - built_in) | _RUNS_TEXT


def _function_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {
        row[0] for row in con.execute("SELECT function_name FROM duckdb_functions()").fetchall()
    }


def check_functions(con: duckdb.DuckDBPyConnection, sql: str, refused: frozenset[str]) -> None:
    """Refuse a query that calls any of `refused`, or whose calls DuckDB cannot list (only
    SELECTs serialize: a PIVOT must be written as one)."""
    if con.extract_statements(sql)[0].type == duckdb.StatementType.EXPLAIN:
        check_functions(con, _explained(sql), refused)
        return
    tree = json.loads(con.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchall()[0][0])
    if tree.get("error"):
        raise QueryRefusedError(
            "on a lake only queries DuckDB can read as a SELECT are run (write a PIVOT as "
            "a SELECT with GROUP BY)"
        )
    called = set(_names_of_calls(tree)) & refused
    if called:
        raise QueryRefusedError(
            f"{', '.join(sorted(called))}: the lake's catalog is not for queries; read the "
            "mirror's tables"
        )


def _names_of_calls(node: object) -> Iterator[str]:
    """Every `function_name` in DuckDB's JSON form of a statement."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "function_name" and isinstance(value, str):
                yield value.lower()
            else:
                yield from _names_of_calls(value)
    elif isinstance(node, list):
        for item in node:
            yield from _names_of_calls(item)


def _explained(sql: str) -> str:
    """The statement an EXPLAIN explains: after `EXPLAIN`, an optional `ANALYZE` and an
    optional parenthesised list of options, found with DuckDB's own tokenizer."""
    starts = [offset for offset, _ in duckdb.tokenize(sql)]
    words = [sql[a:b].strip() for a, b in zip(starts, [*starts[1:], len(sql)], strict=True)]
    position = 1  # past EXPLAIN
    if position < len(words) and words[position].upper() in ("ANALYZE", "ANALYSE"):
        position += 1
    position = _past_options(words, position)
    if position >= len(words):
        raise QueryRefusedError("EXPLAIN of nothing")
    return sql[starts[position] :]


def _past_options(words: Sequence[str], position: int) -> int:
    """The position after the parenthesised list of options at `position`, if there is one."""
    if position >= len(words) or words[position] != "(":
        return position
    depth = 0
    for index in range(position, len(words)):
        depth += {"(": 1, ")": -1}.get(words[index], 0)
        if depth == 0:
            return index + 1
    return len(words)


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# --- values as JSON and as text ------------------------------------------------------------


def json_value(value: object) -> object:
    """A value as JSON: numbers and booleans as such, exact decimals and non-finite floats
    as strings, times as ISO 8601, intervals as seconds, blobs as base64, nested as nested."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    return str(value)


def text_value(value: object) -> str:
    """A non-NULL value as one CSV field or table cell: JSON's form, nested values as JSON."""
    converted = json_value(value)
    if isinstance(converted, str):
        return converted
    return json.dumps(converted, ensure_ascii=False)


def _json_cell(value: object, column_type: str) -> object:
    # A JSON column arrives as its text; output it as the object it is.
    if column_type == "JSON" and isinstance(value, str):
        return json.loads(value)
    return json_value(value)


# --- output formats ------------------------------------------------------------------------


def format_result(result: QueryResult, output: str) -> str:
    if output == "csv":
        return as_csv(result)
    if output == "json":
        return as_json(result)
    return as_table(result)


def as_csv(result: QueryResult) -> str:
    """RFC 4180 CSV with a header; NULL is an empty field."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow("" if value is None else text_value(value) for value in row)
    return buffer.getvalue()


def as_json(result: QueryResult) -> str:
    """A JSON list with one object per row (a repeated column name keeps its last value)."""
    objects = [
        {
            name: None if value is None else _json_cell(value, kind)
            for name, kind, value in zip(result.columns, result.types, row, strict=True)
        }
        for row in result.rows
    ]
    return json.dumps(objects, ensure_ascii=False, indent=2) + "\n"


def as_table(result: QueryResult) -> str:
    """Columns aligned under a header, numbers to the right, one line per row."""
    cells = [[_cell(value) for value in row] for row in result.rows]
    widths = [
        max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(result.columns)
    ]
    right = [_numeric_column(result.rows, i) for i in range(len(result.columns))]
    lines = [
        _line(result.columns, widths, [False] * len(widths)),
        "  ".join("-" * width for width in widths),
        *(_line(row, widths, right) for row in cells),
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    text = text_value(value).translate(_ONE_LINE)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _numeric_column(rows: Sequence[tuple[Any, ...]], index: int) -> bool:
    values = [row[index] for row in rows if row[index] is not None]
    return bool(values) and all(
        isinstance(value, _NUMBERS) and not isinstance(value, bool) for value in values
    )


def _line(values: Sequence[str], widths: Sequence[int], right: Sequence[bool]) -> str:
    return "  ".join(
        value.rjust(width) if align_right else value.ljust(width)
        for value, width, align_right in zip(values, widths, right, strict=True)
    )
