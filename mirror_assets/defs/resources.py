"""The mirror's settings as a Dagster resource, so every run shows what it read and wrote."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.config import (
    BackfillLimits,
    CheckLimits,
    HistoryLimits,
    IngestLimits,
    LakeLimits,
    Settings,
)


# Each group of limits as nested config: the same fields, shown and set in the launchpad.
class IngestConfig(dg.Config, IngestLimits):
    """INGEST_*: when one ingest cycle stops reading and how it resumes."""


class BackfillLimitsConfig(dg.Config, BackfillLimits):
    """BACKFILL_*, IDENTITY_TTL_SECONDS: how backfills press PDSes."""


class ChecksConfig(dg.Config, CheckLimits):
    """CHECK_*: when the asset checks warn and when they fail."""


class HistoryConfig(dg.Config, HistoryLimits):
    """HISTORY_*: how long Dagster keeps the runs it made."""


class LakeLimitsConfig(dg.Config, LakeLimits):
    """LAKE_*: how the lake's housekeeping keeps its files and snapshots few."""


class MirrorResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Where the mirror reads (Jetstream, PLC, PDSes, the relay) and writes (the DuckDB file),
    with its ingest, backfill and check limits and where its Parquet snapshots go.

    Defaults come from the environment (COLLECTIONS, JETSTREAM_URLS, MIRROR_DB, MIRROR_STORE,
    MIRROR_DATA_PATH, PLC_URL,
    RELAY_URL, MIRROR_ALLOW_PRIVATE_NETWORK, DNS_SERVERS, HANDLE_RESOLVER_URL, EXPORT_DIR,
    EXPORT_CRON, INGEST_*, BACKFILL_*, CHECK_*, HISTORY_*, LAKE_*) when the code location loads; see
    `MirrorResource.from_env`.
    """

    db_path: str
    store: str = ""  # MIRROR_STORE: "" is the file at db_path, else `ducklake:<catalog>`
    data_path: str = ""  # MIRROR_DATA_PATH: where a lake's Parquet files go
    collections: str
    jetstream_urls: str  # comma separated
    plc_url: str = Settings.plc_url
    relay_url: str = Settings.relay_url
    allow_private_network: bool = False
    dns_servers: str = ""  # comma separated
    handle_resolver_url: str = Settings.handle_resolver_url
    export_dir: str = str(Settings.export_dir)
    export_cron: str = Settings.export_cron
    ingest: IngestConfig = IngestConfig()
    backfill: BackfillLimitsConfig = BackfillLimitsConfig()
    checks: ChecksConfig = ChecksConfig()
    history: HistoryConfig = HistoryConfig()
    lake_limits: LakeLimitsConfig = LakeLimitsConfig()

    @classmethod
    def from_settings(cls, settings: Settings) -> MirrorResource:
        return cls(
            db_path=str(settings.db_path),
            store=settings.store,
            data_path=settings.data_path,
            collections=str(settings.collections),
            jetstream_urls=",".join(settings.jetstream_urls),
            plc_url=settings.plc_url,
            relay_url=settings.relay_url,
            allow_private_network=settings.allow_private_network,
            dns_servers=",".join(settings.dns_servers),
            handle_resolver_url=settings.handle_resolver_url,
            export_dir=str(settings.export_dir),
            export_cron=settings.export_cron,
            ingest=IngestConfig(**settings.ingest.model_dump()),
            backfill=BackfillLimitsConfig(**settings.backfill.model_dump()),
            checks=ChecksConfig(**settings.checks.model_dump()),
            history=HistoryConfig(**settings.history.model_dump()),
            lake_limits=LakeLimitsConfig(**settings.lake_limits.model_dump()),
        )

    @classmethod
    def from_env(cls) -> MirrorResource:
        return cls.from_settings(Settings.from_env())

    def settings(self) -> Settings:
        return Settings(
            collections=CollectionFilter.parse(self.collections),
            jetstream_urls=_split(self.jetstream_urls),
            db_path=Path(self.db_path),
            store=self.store,
            data_path=self.data_path,
            plc_url=self.plc_url,
            relay_url=self.relay_url,
            allow_private_network=self.allow_private_network,
            dns_servers=_split(self.dns_servers),
            handle_resolver_url=self.handle_resolver_url,
            export_dir=Path(self.export_dir),
            export_cron=self.export_cron,
            ingest=self.ingest,
            backfill=self.backfill,
            checks=self.checks,
            history=self.history,
            lake_limits=self.lake_limits,
        )


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())
