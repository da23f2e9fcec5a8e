"""The lake on object storage: its data files in an S3-compatible server on 127.0.0.1
(moto, through DuckDB's httpfs), written by the mirror, read by the API's source and kept
by the housekeeping, with the same result as a lake in a folder."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest

from mirror_assets.config import LakeLocation
from mirror_assets.model.apply import apply_batch
from mirror_assets.store import maintenance
from mirror_assets.store.lake import LakeStore
from tests.support.api_helpers import reader_of
from tests.support.events_factory import account, create, delete, did, update
from tests.support.lakes import bare_lake, new_lake
from tests.support.postgres import PostgresServer
from tests.support.s3 import S3Server, running_s3
from tests.support.store_helpers import batch_of, snapshot

pytestmark = pytest.mark.lake

BUCKET = "mirror-lake"
ALICE, BOB = did("alice"), did("bob")
BATCHES = [
    [create(ALICE, "a", rev=1, t=1), create(BOB, "b", rev=1, t=2)],
    [update(ALICE, "a", rev=2, t=3), delete(BOB, "b", rev=2, t=4)],
    [create(BOB, "b", rev=1, t=2), account(ALICE, active=False, status="takendown", t=5)],
]


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """moto on 127.0.0.1, with the mirror's S3 settings pointing at it."""
    with running_s3() as server:
        server.create_bucket(BUCKET)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret)
        monkeypatch.setenv("AWS_REGION", server.region)
        monkeypatch.setenv("MIRROR_S3_ENDPOINT", server.url)
        yield server


def _write(store: LakeStore) -> None:
    for events in BATCHES:
        store.transact(partial(apply_batch, batch=batch_of(events)))


def test_a_lake_on_s3_holds_what_a_lake_in_a_folder_holds(
    s3: S3Server, postgres: PostgresServer, tmp_path: Path
) -> None:
    folder = LakeStore(new_lake(postgres, tmp_path))
    in_bucket = LakeStore(_in_bucket(bare_lake(postgres, tmp_path), "first"))
    _write(folder)
    _write(in_bucket)
    assert snapshot(in_bucket) == snapshot(folder)
    keys = [item["Key"] for item in s3.client().list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert keys and all(key.startswith("first/") and key.endswith(".parquet") for key in keys)

    reader = reader_of(in_bucket)
    count = reader.query(
        "count", lambda con: con.execute("SELECT count(*) FROM mirror.records").fetchall()[0][0]
    )
    assert count == 0  # bob's b stays deleted (a replayed create), alice is taken down
    reader.close()

    # Housekeeping on the bucket: what no snapshot references leaves it.
    for step in (maintenance.flush_inlined, maintenance.compact):
        in_bucket.housekeep(step)
    in_bucket.housekeep(lambda con: maintenance.expire_snapshots(con, timedelta(0)))
    deleted, _ = in_bucket.housekeep(maintenance.delete_unreferenced)
    with in_bucket.reading() as con:
        kept = maintenance.footprint(con, small_file_bytes=1 << 20)
    listed = s3.client().list_objects_v2(Bucket=BUCKET)["KeyCount"]
    assert deleted > 0
    assert listed == kept.data_files + kept.delete_files
    assert snapshot(in_bucket) == snapshot(folder)
    folder.close()
    in_bucket.close()


def _in_bucket(lake: LakeLocation, prefix: str) -> LakeLocation:
    return LakeLocation(lake.catalog, f"s3://{BUCKET}/{prefix}/")
