"""The throwaway servers of tests/support work: Postgres (tests/support/postgres.py) answers
psql and leaves nothing behind, and the S3 stand-in (tests/support/s3.py) keeps the bytes
it is given.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.postgres import running_postgres
from tests.support.s3 import running_s3


def _psql(bin_dir: Path, conninfo: str, sql: str) -> str:
    # -X: no ~/.psqlrc; -At: bare values, one row a line; ON_ERROR_STOP: a bad statement fails.
    command = [str(bin_dir / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo]
    result = subprocess.run(
        [*command, "-c", sql], check=True, capture_output=True, text=True, timeout=30
    )
    return result.stdout


def test_postgres_serves_a_database_and_is_gone_after(tmp_path: Path) -> None:
    with running_postgres(tmp_path) as server:
        conninfo = server.create_database("records")
        assert conninfo == f"dbname=records host=127.0.0.1 port={server.port} user=mirror"
        _psql(server.bin_dir, conninfo, "create table post (uri text primary key, n int)")
        _psql(server.bin_dir, conninfo, "insert into post values ('at://a', 1), ('at://b', 2)")
        answer = _psql(server.bin_dir, conninfo, "select uri, n from post order by uri")
        assert answer.splitlines() == ["at://a|1", "at://b|2"]
        port, data = server.port, server.data

    assert not data.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_s3_keeps_the_bytes_it_is_given() -> None:
    payload = bytes(range(256)) * 1000
    with running_s3() as server:
        assert server.url == f"http://{server.endpoint}"
        server.create_bucket("mirror-records")
        client = server.client()
        client.put_object(Bucket="mirror-records", Key="dir/records.parquet", Body=payload)
        got = client.get_object(Bucket="mirror-records", Key="dir/records.parquet")
        assert got["Body"].read() == payload
