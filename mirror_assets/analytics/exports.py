"""Parquet snapshots of each tracked collection's records, for analysts.

A snapshot is read under the read lock (writers wait for it, one collection at a time) and
written beside its final name, then renamed over it: a reader of the export folder never
sees a half-written file, and nobody needs the live DuckDB file to query it.

The layout is Hive-style, `{EXPORT_DIR}/collection={nsid}/records.parquet`, so DuckDB
(`read_parquet('data/exports/*/*.parquet', hive_partitioning = true)`), Polars
(`pl.scan_parquet`) and pandas (`pd.read_parquet('data/exports')`) read one collection or
all of them, with `collection` as a column.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mirror_assets.config import Settings
from mirror_assets.store.choice import open_store
from mirror_assets.store.contract import MirrorStore

FILE_NAME = "records.parquet"
PREFIX = "collection="

# The `records` view as analysts know it, newest first; `record` stays JSON text.
_COPY = """
COPY (
    SELECT uri, did, rkey, cid, record, rev, time_us, indexed_at FROM records
    WHERE collection = ? ORDER BY time_us DESC, uri
) TO '{path}' (FORMAT parquet, COMPRESSION zstd)
"""


@dataclass(frozen=True)
class CollectionExport:
    collection: str
    path: Path
    rows: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class ExportReport:
    exports: list[CollectionExport]
    removed: list[str]  # folders of collections no longer tracked or without records


def export_parquet(settings: Settings) -> ExportReport:
    """Write a snapshot of every tracked collection that has records; drop stale ones."""
    store = open_store(settings)
    settings.export_dir.mkdir(parents=True, exist_ok=True)
    exports = [
        _export_one(store, collection, settings.export_dir)
        for collection in _tracked_collections(store, settings)
    ]
    removed = _remove_stale(settings.export_dir, {e.collection for e in exports})
    return ExportReport(exports, removed)


def _tracked_collections(store: MirrorStore, settings: Settings) -> list[str]:
    with store.reading() as con:
        rows = con.execute("SELECT DISTINCT collection FROM records ORDER BY 1").fetchall()
    # `matches` takes only NSIDs (letters, digits, hyphens and dots, no empty segment): a
    # name that could leave EXPORT_DIR or break a path (`/`, `..`, NUL) is never a folder.
    return [name for (name,) in rows if settings.collections.matches(name)]


def _export_one(store: MirrorStore, collection: str, root: Path) -> CollectionExport:
    folder = root / f"{PREFIX}{collection}"
    folder.mkdir(exist_ok=True)
    final = folder / FILE_NAME
    partial = folder / f".{FILE_NAME}.partial"
    started = time.perf_counter()
    try:
        with store.reading() as con:
            # A path cannot be a prepared parameter of COPY; it is ours and quoted here.
            quoted = str(partial).replace("'", "''")
            rows = con.execute(_COPY.format(path=quoted), [collection]).fetchall()[0][0]
        partial.replace(final)
    finally:
        partial.unlink(missing_ok=True)
    return CollectionExport(
        collection, final, rows, final.stat().st_size, time.perf_counter() - started
    )


def _remove_stale(root: Path, current: set[str]) -> list[str]:
    """Remove the snapshot folders of collections not exported this time."""
    stale = {
        path.name.removeprefix(PREFIX): path
        for path in root.iterdir()
        if path.is_dir() and path.name.startswith(PREFIX)
    }
    for collection in current:
        stale.pop(collection, None)
    for path in stale.values():
        shutil.rmtree(path)
    return sorted(stale)
