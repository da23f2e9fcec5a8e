"""The mirror's settings as a Dagster resource, so every run shows what it read and wrote."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

import dagster as dg

from mirror_assets.config import IngestLimits, Settings
from mirror_assets.nsids import CollectionFilter


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
        return cls(
            db_path=str(settings.db_path),
            collections=str(settings.collections),
            jetstream_urls=",".join(settings.jetstream_urls),
            **asdict(settings.ingest),
        )

    @classmethod
    def from_env(cls) -> MirrorResource:
        return cls.from_settings(Settings.from_env())

    def settings(self) -> Settings:
        return Settings(
            collections=CollectionFilter.parse(self.collections),
            jetstream_urls=tuple(u.strip() for u in self.jetstream_urls.split(",") if u.strip()),
            db_path=Path(self.db_path),
            ingest=IngestLimits(**{f.name: getattr(self, f.name) for f in fields(IngestLimits)}),
        )
