"""The DuckDB schema, created on first use and migrated step by step after that.

`record_versions` holds the newest known version of every record URI, live or deleted:
one replace-if-newer step (`model/records.py`) then decides between a create, an update and a
delete by rev (docs/architecture.md, invariant 2), and a deleted row is the tombstone that
stops a late or replayed create. Analysts and the API read the views: `records` (live
records of visible accounts, one row per record) and `tombstones`.
"""

from __future__ import annotations

import duckdb

SCHEMA_VERSION = 5

# Each entry upgrades the schema by one version; entry i takes version i to version i + 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);

    CREATE TABLE record_versions (
        uri VARCHAR NOT NULL,  -- unique: the apply step keeps one version per URI
        uri_hash UBIGINT NOT NULL,  -- md5_number_lower(uri): how the apply step finds it
        did VARCHAR NOT NULL,
        collection VARCHAR NOT NULL,
        rkey VARCHAR NOT NULL,
        cid VARCHAR,
        record JSON,
        rev VARCHAR NOT NULL,
        time_us BIGINT NOT NULL,
        deleted BOOLEAN NOT NULL,
        hidden BOOLEAN NOT NULL,
        indexed_at TIMESTAMPTZ NOT NULL
    );

    CREATE VIEW records AS
        SELECT uri, did, collection, rkey, cid, record, rev, time_us, indexed_at
        FROM record_versions WHERE NOT deleted AND NOT hidden;

    CREATE VIEW tombstones AS
        SELECT uri, did, collection, rkey, rev, time_us, indexed_at AS deleted_at
        FROM record_versions WHERE deleted;

    CREATE TABLE accounts (
        did VARCHAR PRIMARY KEY,
        handle VARCHAR,
        pds VARCHAR,
        status VARCHAR NOT NULL,
        hidden BOOLEAN NOT NULL,
        account_time TIMESTAMPTZ,
        account_seq BIGINT,
        identity_time TIMESTAMPTZ,
        identity_seq BIGINT,
        first_seen_us BIGINT NOT NULL,  -- time_us of its first live commit seen
        first_seen_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL
    );

    CREATE TABLE backfills (
        did VARCHAR NOT NULL,
        collection VARCHAR NOT NULL,
        status VARCHAR NOT NULL,
        pds_cursor VARCHAR,
        repo_rev VARCHAR,
        pages INTEGER NOT NULL DEFAULT 0,
        records INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error VARCHAR,
        updated_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (did, collection)
    );

    CREATE TABLE ingest_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        cursor_us BIGINT NOT NULL,
        endpoint VARCHAR,
        updated_at TIMESTAMPTZ NOT NULL
    );

    CREATE TABLE ingest_gaps (
        detected_at TIMESTAMPTZ NOT NULL,
        endpoint VARCHAR NOT NULL,
        cursor_us BIGINT NOT NULL,
        first_event_us BIGINT NOT NULL,
        gap_seconds DOUBLE NOT NULL
    );
    """,
    # Version 2: backfills that retry later and remember when they finished, the PDS
    # resolution cache, and the relay discovery's saved position per collection.
    """
    ALTER TABLE backfills ADD COLUMN next_attempt_at TIMESTAMPTZ;
    ALTER TABLE backfills ADD COLUMN completed_at TIMESTAMPTZ;
    ALTER TABLE accounts ADD COLUMN pds_resolved_at TIMESTAMPTZ;

    CREATE TABLE discovery_state (
        collection VARCHAR PRIMARY KEY,
        relay VARCHAR NOT NULL,
        cursor VARCHAR,  -- where the pass in progress continues; NULL between passes
        repos_listed BIGINT NOT NULL,  -- in the pass in progress, or the last complete one
        dids_queued BIGINT NOT NULL,
        pass_started_at TIMESTAMPTZ NOT NULL,
        completed_at TIMESTAMPTZ,  -- of the last complete pass
        updated_at TIMESTAMPTZ NOT NULL
    );
    """,
    # Version 3: per-collection summaries behind /users and /stats, rebuilt by Dagster
    # (analytics/summaries.py), because counting 10,000,000 records per request is too slow; and an
    # index on `did`, so one user's page (`?did=`) reads their rows instead of every row.
    """
    CREATE TABLE user_counts (
        collection VARCHAR NOT NULL,
        did VARCHAR NOT NULL,
        record_count BIGINT NOT NULL
    );

    CREATE TABLE collection_stats (
        collection VARCHAR PRIMARY KEY,
        unique_users BIGINT NOT NULL,
        total_records BIGINT NOT NULL,
        last_record_time_us BIGINT
    );
    CREATE INDEX record_versions_did ON record_versions (did);
    """,
    # Version 4: the first record time per collection, and the apply log behind daily
    # activity: each transaction appends what it changed per collection and day (model/records.py),
    # and the `daily_activity` asset rolls the log up (analytics/activity.py).
    """
    ALTER TABLE collection_stats ADD COLUMN first_record_time_us BIGINT;

    CREATE TABLE activity_log (
        source VARCHAR NOT NULL,  -- 'live' (Jetstream) or 'backfill' (a PDS listing)
        collection VARCHAR NOT NULL,
        day DATE NOT NULL,  -- UTC day of the version's time_us
        creates BIGINT NOT NULL,
        updates BIGINT NOT NULL,
        deletes BIGINT NOT NULL
    );

    CREATE TABLE daily_activity (
        collection VARCHAR NOT NULL,
        day DATE NOT NULL,
        creates BIGINT NOT NULL,
        updates BIGINT NOT NULL,
        deletes BIGINT NOT NULL,
        backfilled_creates BIGINT NOT NULL,  -- of `creates`, those first found by a backfill
        PRIMARY KEY (collection, day)
    );
    """,
    # Version 5: a handle counts only once it resolves back to its DID (docs/validation.md).
    # An identity event marks the DID for a new check (runs/identities.py); handles stored before
    # they were checked both ways are believed no longer, and are checked again.
    """
    ALTER TABLE accounts ADD COLUMN identity_stale BOOLEAN DEFAULT false;
    UPDATE accounts SET identity_stale = true, handle = NULL WHERE handle IS NOT NULL;
    """,
)

TABLES = (
    "record_versions",
    "accounts",
    "backfills",
    "ingest_state",
    "ingest_gaps",
    "discovery_state",
    "user_counts",
    "collection_stats",
    "activity_log",
    "daily_activity",
    "meta",
)
VIEWS = ("records", "tombstones")
# The lake's one-row table that every write transaction updates, so that any two at once
# conflict (store/lake.py): DuckLake lets two transactions that only insert both commit,
# and two writers could then each add the same account, backfill or record.
LAKE_WRITES = "lake_writes"


class SchemaTooNewError(RuntimeError):
    """The file was written by a newer version of the mirror."""


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'meta' AND schema_name = 'main'"
        " AND database_name = current_database()"
    ).fetchall()[0][0]
    if not exists:
        return 0
    rows = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    return int(rows[0][0]) if rows else 0


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Bring the schema to SCHEMA_VERSION in the caller's transaction; return the old version."""
    version = current_version(con)
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"the database has schema version {version}, this mirror knows up to "
            f"{SCHEMA_VERSION}: upgrade the mirror, or point MIRROR_DB at another file"
        )
    if version == SCHEMA_VERSION:
        return version
    if _is_lake(con):
        _create_lake_schema(con, version)
    else:
        for script in MIGRATIONS[version:]:
            con.execute(script)
    set_meta(con, "schema_version", str(SCHEMA_VERSION))
    return version


def set_meta(con: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
    """Set one `meta` entry (a MERGE: the lake has no keys to conflict on)."""
    con.execute(
        """MERGE INTO meta USING (SELECT $key AS key, $value AS value) AS new USING (key)
        WHEN MATCHED THEN UPDATE SET value = new.value
        WHEN NOT MATCHED THEN INSERT (key, value) VALUES (new.key, new.value)""",
        {"key": key, "value": value},
    )


def _is_lake(con: duckdb.DuckDBPyConnection) -> bool:
    rows = con.execute(
        "SELECT type FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchall()
    return bool(rows) and rows[0][0] == "ducklake"


def lake_schema() -> list[str]:
    """The statements that create the current schema in a DuckLake: the tables and views the
    migrations make, without what DuckLake has no use for (keys, checks, indexes: one writer
    keeps a URI to one row by the same replace-if-newer step on either store).

    Derived from `MIGRATIONS` run in memory, so the two stores cannot drift apart.
    """
    con = duckdb.connect(":memory:")
    try:
        for script in MIGRATIONS:
            con.execute(script)
        columns = con.execute(
            """SELECT table_name, list(column_name || ' ' || data_type
                || CASE WHEN is_nullable THEN '' ELSE ' NOT NULL' END
                || coalesce(' DEFAULT ' || column_default, '') ORDER BY column_index)
            FROM duckdb_columns() WHERE database_name = 'memory' AND NOT internal
              AND table_name IN (SELECT table_name FROM duckdb_tables())
            GROUP BY table_name ORDER BY table_name"""
        ).fetchall()
        views = con.execute(
            "SELECT sql FROM duckdb_views() WHERE NOT internal AND database_name = 'memory'"
            " ORDER BY view_name"
        ).fetchall()
    finally:
        con.close()
    tables = [f"CREATE TABLE {name} ({', '.join(cols)})" for name, cols in columns]
    return tables + [sql for (sql,) in views]


def _create_lake_schema(con: duckdb.DuckDBPyConnection, version: int) -> None:
    if version != 0:
        raise SchemaTooNewError(
            f"the lake has schema version {version}; this mirror makes lakes at version "
            f"{SCHEMA_VERSION} and cannot migrate an older one: copy it into a new lake "
            "with `mirror migrate-to-lake`"
        )
    for statement in lake_schema():
        con.execute(statement)
    con.execute(f"CREATE TABLE {LAKE_WRITES} (commits BIGINT NOT NULL)")
    con.execute(f"INSERT INTO {LAKE_WRITES} VALUES (0)")


def drop_all(con: duckdb.DuckDBPyConnection) -> None:
    """Remove every table and view of the mirror (for `mirror reset`)."""
    for view in VIEWS:
        con.execute(f"DROP VIEW IF EXISTS {view}")
    for table in (*TABLES, LAKE_WRITES):
        con.execute(f"DROP TABLE IF EXISTS {table}")
