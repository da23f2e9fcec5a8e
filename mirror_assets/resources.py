"""The mirror's settings as a Dagster resource, so every run shows what it read and wrote."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from mirror_assets.config import IngestLimits, Settings
from mirror_assets.nsids import CollectionFilter
from mirror_assets.store import Store


class MirrorResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Where the mirror reads (Jetstream) and writes (the DuckDB file), and its ingest limits.

    Defaults come from the environment (COLLECTIONS, JETSTREAM_URLS, MIRROR_DB, INGEST_*)
    when the code location loads; see `MirrorResource.from_env`.
    """

    db_path: str
    collections: str
    jetstream_urls: str
    rewind_seconds: float = IngestLimits.rewind_seconds
    idle_seconds: float = IngestLimits.idle_seconds
    max_seconds: float = IngestLimits.max_seconds
    max_events: int = IngestLimits.max_events
    flush_events: int = IngestLimits.flush_events
    gap_seconds: float = IngestLimits.gap_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> MirrorResource:
        limits = settings.ingest
        return cls(
            db_path=str(settings.db_path),
            collections=str(settings.collections),
            jetstream_urls=",".join(settings.jetstream_urls),
            rewind_seconds=limits.rewind_seconds,
            idle_seconds=limits.idle_seconds,
            max_seconds=limits.max_seconds,
            max_events=limits.max_events,
            flush_events=limits.flush_events,
            gap_seconds=limits.gap_seconds,
        )

    @classmethod
    def from_env(cls) -> MirrorResource:
        return cls.from_settings(Settings.from_env())

    def settings(self) -> Settings:
        return Settings(
            collections=CollectionFilter.parse(self.collections),
            jetstream_urls=tuple(u.strip() for u in self.jetstream_urls.split(",") if u.strip()),
            db_path=Path(self.db_path),
            ingest=IngestLimits(
                rewind_seconds=self.rewind_seconds,
                idle_seconds=self.idle_seconds,
                max_seconds=self.max_seconds,
                max_events=self.max_events,
                flush_events=self.flush_events,
                gap_seconds=self.gap_seconds,
            ),
        )

    def store(self) -> Store:
        return Store(Path(self.db_path))
