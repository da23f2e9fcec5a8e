"""`mirror sql`: one read-only query on the mirror, through the read lock, as text.

Two fences keep the query from changing anything or reaching outside the mirror:

1. Only a single SELECT (FROM-first, VALUES, SHOW, DESCRIBE and SUMMARIZE parse as SELECT)
   or EXPLAIN is run; any other statement is refused before DuckDB executes it. This is
   what refuses CREATE TEMP TABLE, SET, PRAGMA, CALL and the like.
2. DuckDB itself: the file is attached READ_ONLY to an in-memory instance, which then
   loses file-system and extension access (`enable_external_access = false`), and the
   configuration is locked so no statement can turn that back on. This catches what a
   SELECT can still reach: `read_csv('/etc/passwd')`, `read_parquet`, `glob`, sequences.

The read lock is held only while the query runs and its rows are fetched: a waiting writer
(the minute's ingest) waits for that, not for the printing.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb

from mirror_assets.lock import read_lock

ATTACHED_AS = "mirror"
ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
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


def run_query(db_path: Path, sql: str, max_rows: int, lock_timeout: float = 120.0) -> QueryResult:
    """Run one read-only query and fetch at most `max_rows` rows of it."""
    if not db_path.exists():
        raise QueryRefusedError(f"no mirror at {db_path} yet: run `mirror init` or `mirror run`")
    try:
        with read_lock(db_path, lock_timeout), read_only_instance(db_path) as con:
            check_statement(con, sql)
            cursor = con.execute(sql)
            rows = cursor.fetchmany(max_rows + 1)
            description = cursor.description or []
    except duckdb.Error as error:
        raise QueryRefusedError(_first_line(error)) from None
    return QueryResult(
        columns=[column[0] for column in description],
        types=[str(column[1]) for column in description],
        rows=rows[:max_rows],
        truncated=len(rows) > max_rows,
    )


@contextmanager
def read_only_instance(db_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB with the file attached READ_ONLY as the default database, and no
    way out to the file system. The caller holds the read lock."""
    con = duckdb.connect(":memory:")
    try:
        path = str(db_path.absolute()).replace("'", "''")
        con.execute(f"ATTACH '{path}' AS {ATTACHED_AS} (READ_ONLY)")
        con.execute(f"USE {ATTACHED_AS}")  # so tables answer to their plain names
        con.execute("SET TimeZone = 'UTC'")  # times print as the mirror stores them
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        yield con
    finally:
        con.close()


def check_statement(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but one SELECT or EXPLAIN statement."""
    statements = con.extract_statements(sql)
    if len(statements) != 1:
        raise QueryRefusedError(f"give one statement, not {len(statements)}")
    kind = statements[0].type
    if kind not in ALLOWED:
        raise QueryRefusedError(
            f"only read-only queries (SELECT, EXPLAIN) are run, not {kind.name} statements"
        )


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
