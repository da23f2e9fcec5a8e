"""`mirror sql`: read-only queries on a real mirror, run as the operator runs them; the
file, and in representative cases a lake (attached read-only, files only in its data path)."""

from __future__ import annotations

import csv
import io
import json
import time
from contextlib import nullcontext
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mirror_assets.ops.sql_console import read_only_instance
from mirror_assets.store.contract import MirrorStore
from mirror_assets.store.file import FileStore
from mirror_assets.store.lake import CATALOG
from mirror_assets.store.lock import read_lock
from tests.support.cli_helpers import (
    STORES,
    across_stores,
    catalog_rows,
    db_of,
    dump,
    lake_of,
    lake_too,
    make_project,
    mirror,
    on_both_stores,
    table_rows,
)
from tests.support.lakes import bare_lake
from tests.support.postgres import PostgresServer

RECORDS = "SELECT uri, did, collection, rkey, cid, record, rev, time_us FROM records ORDER BY uri"


def parse_table(text: str) -> list[dict[str, str]]:
    """The table format read back: column spans come from the dashes under the header."""
    header, dashes, *rows = text.splitlines()
    spans, start = [], 0
    for dash in dashes.split("  "):
        spans.append((start, start + len(dash)))
        start += len(dash) + 2
    names = [header[a:b].strip() for a, b in spans]
    assert rows[-1].startswith("("), rows[-1]  # the footer counts the rows
    return [
        {name: line[a:b].strip() for name, (a, b) in zip(names, spans, strict=True)}
        for line in rows[:-1]
    ]


@on_both_stores
def test_table_csv_and_json_outputs_parse_back_to_the_rows(
    project: Path, project_store: MirrorStore
) -> None:
    expected = table_rows(project_store, RECORDS)
    assert len(expected) == 6

    table = mirror(project, "sql", RECORDS)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[-1] == "(6 rows)"
    shown = parse_table(table.stdout)
    as_csv = mirror(project, "sql", RECORDS, "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    from_csv = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    as_json = mirror(project, "sql", RECORDS, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    from_json = json.loads(as_json.stdout)

    assert len(shown) == len(from_csv) == len(from_json) == len(expected)
    for row, cells, fields, obj in zip(expected, shown, from_csv, from_json, strict=True):
        uri, did_, collection, rkey, cid, record, rev, time_us = row
        text = {"uri": uri, "did": did_, "collection": collection, "rkey": rkey, "cid": cid}
        text |= {"rev": rev, "time_us": str(time_us)}
        assert {k: fields[k] for k in text} == text
        assert json.loads(fields["record"]) == json.loads(record)
        # The table cuts long values (the record JSON); the rest is shown whole.
        assert {k: cells[k] for k in text} == text
        assert cells["record"].endswith("…")
        # JSON keeps types: numbers as numbers, a JSON column as the object it holds.
        assert obj == {**text, "time_us": time_us, "record": json.loads(record)}


def test_values_convert_the_documented_way(project: Path) -> None:
    query = (
        "SELECT 1.50::DECIMAL(10, 2) AS amount, TIMESTAMPTZ '2024-08-30 06:40:00+02' AS at, "
        "DATE '2024-08-30' AS day, INTERVAL 90 SECOND AS wait, [1, 2] AS list, "
        "{'a': 'x'} AS struct, NULL AS nothing, true AS yes, 'nan'::DOUBLE AS nan, "
        "'\\x01\\xff'::BLOB AS blob, 'two\nlines' AS text, 42 AS n"
    )
    from_json = json.loads(mirror(project, "sql", query, "--format", "json").stdout)
    assert from_json == [
        {
            "amount": "1.50",
            "at": "2024-08-30T04:40:00+00:00",
            "day": "2024-08-30",
            "wait": 90.0,
            "list": [1, 2],
            "struct": {"a": "x"},
            "nothing": None,
            "yes": True,
            "nan": "nan",
            "blob": "Af8=",
            "text": "two\nlines",
            "n": 42,
        }
    ]
    [from_csv] = csv.DictReader(
        io.StringIO(mirror(project, "sql", query, "--format", "csv").stdout)
    )
    assert from_csv == {
        **{k: str(v) for k, v in from_json[0].items()},
        "list": "[1, 2]",
        "struct": '{"a": "x"}',
        "nothing": "",
        "yes": "true",
    }
    [cells] = parse_table(mirror(project, "sql", query).stdout)
    assert cells["nothing"] == "NULL"
    assert cells["text"] == "two\\nlines"  # one line per row


@on_both_stores
def test_the_mirror_tables_and_views_answer_to_their_plain_names(
    project: Path, project_store: MirrorStore
) -> None:
    names = [
        "records",
        "tombstones",
        "record_versions",
        "accounts",
        "backfills",
        "user_counts",
        "collection_stats",
        "discovery_state",
        "ingest_state",
    ]
    query = "SELECT " + ", ".join(f"(SELECT count(*) FROM {n}) AS {n}" for n in names)
    result = mirror(project, "sql", query, "--format", "json")
    assert result.returncode == 0, result.stderr
    expected = dict(zip(names, table_rows(project_store, query)[0], strict=True))
    assert json.loads(result.stdout) == [expected]
    assert expected["records"] == 6 and expected["tombstones"] == 1


@across_stores(["output"], [lake_too("table"), "csv", "json"])
def test_max_rows_caps_the_output_and_says_so(project: Path, output: str) -> None:
    capped = mirror(project, "sql", RECORDS, "--format", output, "--max-rows", "4")
    whole = mirror(project, "sql", RECORDS, "--format", output, "--max-rows", "6")
    assert capped.returncode == whole.returncode == 0, capped.stderr + whole.stderr
    if output == "table":
        assert len(parse_table(capped.stdout)) == 4
        assert capped.stdout.splitlines()[-1] == "(4 rows; more rows match: raise --max-rows)"
        assert whole.stdout.splitlines()[-1] == "(6 rows)"
        return
    parse = json.loads if output == "json" else lambda t: list(csv.DictReader(io.StringIO(t)))
    assert len(parse(capped.stdout)) == 4
    assert len(parse(whole.stdout)) == 6
    assert "only the first 4 rows; more rows match: raise --max-rows" in capped.stderr
    assert whole.stderr == ""


def _parquet(tmp_path: Path) -> Path:
    path = tmp_path / "outside.parquet"
    pq.write_table(pa.table({"secret": ["x"]}), path)
    return path


@across_stores(
    ("query", "message"),
    [
        lake_too("INSERT INTO accounts (did, status) VALUES ('did:plc:x', 'active')", "not INSERT"),
        ("UPDATE backfills SET status = 'complete'", "not UPDATE"),
        ("DELETE FROM record_versions", "not DELETE"),
        ("CREATE TABLE copy AS SELECT * FROM records", "not CREATE"),
        ("CREATE TEMP TABLE scratch (a INTEGER)", "not CREATE"),
        ("DROP VIEW records", "not DROP"),
        ("COPY records TO '{tmp}/out.csv'", "not COPY"),
        ("ATTACH '{tmp}/other.duckdb' AS other", "not ATTACH"),
        ("INSTALL httpfs", "not LOAD"),
        ("LOAD httpfs", "not LOAD"),
        ("SET enable_external_access = true", "not SET"),
        ("RESET lock_configuration", "not SET"),
        ("PRAGMA enable_profiling", "not PRAGMA"),
        ("SELECT 1; DELETE FROM records", "give one statement, not 2"),
        # EXPLAIN ANALYZE runs what it explains: that is checked like the statement itself.
        ("EXPLAIN ANALYZE CREATE TEMP TABLE scratch AS SELECT 1", "not CREATE"),
        ("EXPLAIN ANALYZE INSERT INTO meta VALUES ('a', 'b')", "not INSERT"),
        ("explain (format json) DELETE FROM record_versions", "not DELETE"),
        ("EXPLAIN ANALYZE SET threads = 1", "not SET"),
        # DuckDB's own fence: on the lake, files are reachable only in its data path.
        lake_too("SELECT * FROM read_csv('/etc/passwd')", 'Cannot access file "/etc/passwd"'),
        lake_too("SELECT * FROM read_parquet('{parquet}')", "file system operations are disabled"),
        lake_too("SELECT * FROM glob('{tmp}/*')", "file system operations are disabled"),
        ("SELEC 1", "Parser Error"),
        ("SELECT * FROM no_such_table", "no_such_table does not exist"),
    ],
)
def test_anything_but_a_read_of_the_mirror_is_refused(
    project: Path, project_store: MirrorStore, tmp_path: Path, query: str, message: str
) -> None:
    before = dump(project_store)
    sql = query.format(tmp=tmp_path, parquet=_parquet(tmp_path))
    result = mirror(project, "sql", sql)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("mirror sql: ")
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1  # one clear line, no traceback
    assert dump(project_store) == before
    assert not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "other.duckdb").exists()


@across_stores(
    ["statement"],
    [
        lake_too(
            "INSERT INTO accounts (did, status, hidden, first_seen_us, first_seen_at, "
            "updated_at) VALUES ('did:plc:x', 'active', false, 0, now(), now())"
        ),
        lake_too("COPY (SELECT 1) TO '{tmp}/out.csv'"),
        "SET enable_external_access = true",
        lake_too("SET lock_configuration = false"),
        "ATTACH '{tmp}/other.duckdb' AS other",
        lake_too("CREATE TABLE mirror.main.copy AS SELECT 1"),
    ],
)
def test_duckdb_itself_refuses_writes_and_files_behind_the_statement_check(
    project: Path, project_store: MirrorStore, tmp_path: Path, statement: str
) -> None:
    """The second fence on its own: what got past the statement check would still fail."""
    before = dump(project_store)
    lake = lake_of(project)
    locked = read_lock(db_of(project)) if lake is None else nullcontext()
    with locked, read_only_instance(lake or db_of(project)) as con, pytest.raises(duckdb.Error):
        con.execute(statement.format(tmp=tmp_path))
    assert dump(project_store) == before
    assert not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "other.duckdb").exists()


CATALOG_WRITE = "'COMMIT; CREATE TABLE written_by_sql (a INTEGER)'"


@pytest.mark.parametrize("project", [pytest.param("lake", marks=pytest.mark.lake)], indirect=True)
@pytest.mark.parametrize(
    "sql",
    [
        f"SELECT * FROM postgres_execute('__ducklake_metadata_{CATALOG}', {CATALOG_WRITE})",
        # The same inside SQL text that a core function runs, and behind an EXPLAIN ANALYZE.
        "SELECT * FROM query('SELECT * FROM postgres_execute(''__ducklake_metadata_"
        + CATALOG
        + "'', ''COMMIT; CREATE TABLE written_by_sql (a INTEGER)'')')",
        f"EXPLAIN ANALYZE FROM postgres_execute('__ducklake_metadata_{CATALOG}', {CATALOG_WRITE})",
    ],
    ids=["postgres_execute", "query", "explain"],
)
def test_the_lake_s_catalog_cannot_be_written_through_its_postgres_connection(
    project: Path, project_store: MirrorStore, postgres: PostgresServer, sql: str
) -> None:
    """The read-only instance reaches the lake's catalog over a connection of the Postgres
    extension, whose table functions parse as a SELECT. Its transaction is read-only; a
    COMMIT sent along must not open a way to write past it."""
    lake = lake_of(project)
    assert lake is not None
    before = dump(project_store)
    result = mirror(project, "sql", sql)
    written = "SELECT count(*) FROM pg_tables WHERE tablename = 'written_by_sql'"
    assert catalog_rows(postgres, lake, written) == ["0"], "mirror sql wrote to the catalog"
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith("mirror sql: ")
    assert dump(project_store) == before


@pytest.mark.parametrize("kind", STORES)
def test_no_mirror_yet_is_a_clear_error_and_creates_nothing(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    lake = None if kind == "file" else bare_lake(request.getfixturevalue("postgres"), tmp_path)
    project = make_project(tmp_path, monkeypatch, lake)
    result = mirror(project, "sql", "SELECT 1")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "run `mirror init` or `mirror run`" in result.stderr
    assert not db_of(project).exists()
    if lake is None:
        assert f"no mirror at {db_of(project)} yet" in result.stderr
        return
    # The lake named as messages name it, by its data path, never by its catalog: the
    # catalog's connection string may hold a password.
    assert "no mirror" in result.stderr and lake.data_path in result.stderr
    assert lake.catalog not in result.stderr
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    assert catalog_rows(request.getfixturevalue("postgres"), lake, tables) == ["0"]


@pytest.mark.parametrize(
    "query",
    ["EXPLAIN SELECT count(*) FROM records", "EXPLAIN ANALYZE SELECT count(*) FROM records"],
)
def test_an_explain_of_a_read_is_run(project: Path, query: str) -> None:
    result = mirror(project, "sql", query, "--format", "json")
    assert result.returncode == 0, result.stderr
    [plan] = json.loads(result.stdout)
    assert plan["explain_key"] in ("physical_plan", "analyzed_plan")
    assert "count_star()" in plan["explain_value"]


def test_a_query_past_its_time_is_stopped_and_lets_the_writers_in(project: Path) -> None:
    """It holds the read lock while it runs: stopped, it gives the file back."""
    started = time.monotonic()
    result = mirror(
        project,
        "sql",
        "SELECT count(*) FROM range(1000000000000) a",
        SQL_TIMEOUT_SECONDS="1",
    )
    assert result.returncode == 2
    assert "ran longer than 1 s and was stopped (SQL_TIMEOUT_SECONDS)" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert time.monotonic() - started < 30
    with FileStore(db_of(project)).writing():  # the lock is free again at once
        pass


def test_a_query_past_its_memory_is_stopped(project: Path) -> None:
    result = mirror(
        project,
        "sql",
        "SELECT count(*) FROM (SELECT range % 5000000 AS k, list(range) AS l "
        "FROM range(20000000) GROUP BY k)",
        SQL_MEMORY_LIMIT="64MB",
    )
    assert result.returncode == 2
    assert "needs more than 64MB of memory (SQL_MEMORY_LIMIT)" in result.stderr
    assert not list(project.rglob("*.tmp")) and not (project / ".tmp").exists()


def test_a_memory_limit_that_is_not_a_size_is_a_clear_error(project: Path) -> None:
    result = mirror(project, "sql", "SELECT 1", SQL_MEMORY_LIMIT="lots")
    assert result.returncode == 2
    assert "SQL_MEMORY_LIMIT='lots' is not a size such as 512MB or 2GB" in result.stderr
