"""Which store the settings name: the DuckDB file (the default) or a DuckLake."""

from __future__ import annotations

from mirror_assets.config import Settings
from mirror_assets.store.contract import MirrorStore
from mirror_assets.store.file import FileStore
from mirror_assets.store.lake import LakeStore


def open_store(settings: Settings) -> MirrorStore:
    """The store of MIRROR_STORE: the file at MIRROR_DB, or the lake it names."""
    lake = settings.lake
    return FileStore(settings.db_path) if lake is None else LakeStore(lake)
