"""Applying event dicts to a real store, and reading back everything a test asserts on.

Each helper takes the store, or the path of a mirror file (a `FileStore` there)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from mirror_assets.atproto.events import BadFrame, CursorGap, decode_frame
from mirror_assets.config import LAKE_PREFIX, Settings
from mirror_assets.model.apply import ApplyResult, apply_batch
from mirror_assets.model.batch import BatchBuilder, EventBatch
from mirror_assets.store.contract import MirrorStore
from mirror_assets.store.file import FileStore
from mirror_assets.store.lake import LakeStore
from tests.support.events_factory import Event, RecordRow, TombstoneRow, latest_us

ENDPOINT = "ws://jetstream.test"

Where = Path | MirrorStore


def store_of(where: Where) -> MirrorStore:
    """The store itself, or the file store at a path."""
    return FileStore(where) if isinstance(where, Path) else where


def settings_on(where: Where, settings: Settings) -> Settings:
    """The settings, naming the store (what `open_store` opens from them): the file at a
    path or of a `FileStore`, or a `LakeStore`'s lake. For the runs a test makes in another
    process, or through Dagster, which open the store from the settings. A lake's settings
    name a file beside its data folder, which nothing makes."""
    store = store_of(where)
    if isinstance(store, LakeStore):
        lake = store.lake
        return replace(
            settings,
            db_path=Path(lake.data_path).with_suffix(".duckdb"),
            store=LAKE_PREFIX + lake.catalog,
            data_path=lake.data_path,
        )
    assert isinstance(store, FileStore), store
    return replace(settings, db_path=store.path, store="", data_path="")


def batch_of(
    events: Iterable[Event], *, endpoint: str = ENDPOINT, gaps: Iterable[CursorGap] = ()
) -> EventBatch:
    """A batch built the way the ingest cycle builds it: decode each frame, add, advance."""
    builder = BatchBuilder()
    for event in events:
        decoded = decode_frame(json.dumps(event), latest_us())
        assert not isinstance(decoded, BadFrame), decoded
        builder.add(decoded)
        builder.advance(decoded.time_us, endpoint)
    for gap in gaps:
        builder.note_gap(gap)
    return builder.build()


def apply_events(
    path: Where,
    events: Iterable[Event],
    *,
    endpoint: str = ENDPOINT,
    gaps: Iterable[CursorGap] = (),
) -> ApplyResult:
    """Apply the events as one batch in one write transaction, through `transact` as the
    ingest's writes go: on the lake, a transaction that conflicted with another writer's
    (a backfill running meanwhile) runs again."""
    batch = batch_of(events, endpoint=endpoint, gaps=gaps)
    return store_of(path).transact(lambda con: apply_batch(con, batch))[0]


def store_cursor(path: Where, cursor_us: int, endpoint: str = ENDPOINT) -> None:
    """Commit a cursor with no events, as a run that read only untracked traffic would."""
    builder = BatchBuilder()
    builder.advance(cursor_us, endpoint)
    with store_of(path).writing() as tx:
        apply_batch(tx.con, builder.build())


@dataclass
class Account:
    handle: str | None  # only a handle checked both ways is kept
    status: str
    hidden: bool
    identity_stale: bool = False  # an identity event asked for a new check of it


@dataclass
class Version:
    """A row of `record_versions`: the newest known version of a URI, live or deleted."""

    rev: str
    deleted: bool
    hidden: bool


@dataclass
class Snapshot:
    """Everything the store holds, minus wall-clock columns (indexed_at, updated_at, ...)."""

    records: dict[str, RecordRow] = field(default_factory=dict)
    tombstones: dict[str, TombstoneRow] = field(default_factory=dict)
    versions: dict[str, Version] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    backfills: dict[tuple[str, str], str] = field(default_factory=dict)
    cursor: int | None = None
    endpoint: str | None = None
    gaps: list[tuple[str, int, int, float]] = field(default_factory=list)


def snapshot(path: Where) -> Snapshot:
    """Read the whole store through the read lock."""
    snap = Snapshot()
    with store_of(path).reading() as con:
        for did_, collection, rkey, cid, record, rev_, time_us in con.execute(
            "SELECT did, collection, rkey, cid, record, rev, time_us FROM records"
        ).fetchall():
            uri = f"at://{did_}/{collection}/{rkey}"
            assert uri not in snap.records, f"two rows for {uri}"
            snap.records[uri] = RecordRow(
                did_, collection, rkey, cid, json.loads(record), rev_, time_us
            )
        for uri, did_, collection, rkey, rev_, time_us in con.execute(
            "SELECT uri, did, collection, rkey, rev, time_us FROM tombstones"
        ).fetchall():
            assert uri not in snap.tombstones, f"two tombstones for {uri}"
            snap.tombstones[uri] = TombstoneRow(did_, collection, rkey, rev_, time_us)
        for uri, rev_, deleted, hidden in con.execute(
            "SELECT uri, rev, deleted, hidden FROM record_versions"
        ).fetchall():
            assert uri not in snap.versions, f"two versions of {uri}"
            snap.versions[uri] = Version(rev_, deleted, hidden)
        for did_, handle, status, hidden, stale in con.execute(
            "SELECT did, handle, status, hidden, identity_stale FROM accounts"
        ).fetchall():
            snap.accounts[did_] = Account(handle, status, hidden, stale)
        for did_, collection, status in con.execute(
            "SELECT did, collection, status FROM backfills"
        ).fetchall():
            snap.backfills[(did_, collection)] = status
        state = con.execute("SELECT cursor_us, endpoint FROM ingest_state").fetchall()
        if state:
            snap.cursor, snap.endpoint = state[0]
        snap.gaps = [
            (endpoint, cursor_us, first_us, gap)
            for endpoint, cursor_us, first_us, gap in con.execute(
                "SELECT endpoint, cursor_us, first_event_us, gap_seconds FROM ingest_gaps "
                "ORDER BY detected_at, first_event_us"
            ).fetchall()
        ]
    return snap
