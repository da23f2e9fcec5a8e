"""The mirror's settings as a Dagster resource, so every run shows what it read and wrote."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import TypeVar

import dagster as dg

from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.config import BackfillLimits, CheckLimits, IngestLimits, Settings

L = TypeVar("L", IngestLimits, BackfillLimits, CheckLimits)


class MirrorResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Where the mirror reads (Jetstream, PLC, PDSes, the relay) and writes (the DuckDB file),
    with its ingest, backfill and check limits and where its Parquet snapshots go.

    Defaults come from the environment (COLLECTIONS, JETSTREAM_URLS, MIRROR_DB, PLC_URL,
    RELAY_URL, MIRROR_ALLOW_PRIVATE_NETWORK, DNS_SERVERS, HANDLE_RESOLVER_URL, EXPORT_DIR,
    EXPORT_CRON, INGEST_*, BACKFILL_*, CHECK_*) when the code location loads; see
    `MirrorResource.from_env`.
    """

    db_path: str
    collections: str
    jetstream_urls: str
    plc_url: str = Settings.plc_url
    relay_url: str = Settings.relay_url
    allow_private_network: bool = False
    dns_servers: str = ""  # comma separated
    handle_resolver_url: str = Settings.handle_resolver_url
    export_dir: str = str(Settings.export_dir)
    export_cron: str = Settings.export_cron
    # IngestLimits
    rewind_seconds: float = IngestLimits.rewind_seconds
    idle_seconds: float = IngestLimits.idle_seconds
    max_seconds: float = IngestLimits.max_seconds
    max_events: int = IngestLimits.max_events
    flush_events: int = IngestLimits.flush_events
    flush_bytes: int = IngestLimits.flush_bytes
    gap_seconds: float = IngestLimits.gap_seconds
    clock_skew_seconds: float = IngestLimits.clock_skew_seconds
    # BackfillLimits
    per_host: int = BackfillLimits.per_host
    http_timeout_seconds: float = BackfillLimits.http_timeout_seconds
    http_attempts: int = BackfillLimits.http_attempts
    http_backoff_seconds: float = BackfillLimits.http_backoff_seconds
    dids_at_once: int = BackfillLimits.dids_at_once
    dids_per_run: int = BackfillLimits.dids_per_run
    run_seconds: float = BackfillLimits.run_seconds
    retry_seconds: float = BackfillLimits.retry_seconds
    identity_ttl_seconds: float = BackfillLimits.identity_ttl_seconds
    # CheckLimits
    lag_warn_seconds: float = CheckLimits.lag_warn_seconds
    lag_fail_seconds: float = CheckLimits.lag_fail_seconds
    failed_backfills_warn: int = CheckLimits.failed_backfills_warn
    failed_backfills_fail: int = CheckLimits.failed_backfills_fail

    @classmethod
    def from_settings(cls, settings: Settings) -> MirrorResource:
        return cls(
            db_path=str(settings.db_path),
            collections=str(settings.collections),
            jetstream_urls=",".join(settings.jetstream_urls),
            plc_url=settings.plc_url,
            relay_url=settings.relay_url,
            allow_private_network=settings.allow_private_network,
            dns_servers=",".join(settings.dns_servers),
            handle_resolver_url=settings.handle_resolver_url,
            export_dir=str(settings.export_dir),
            export_cron=settings.export_cron,
            **asdict(settings.ingest),
            **asdict(settings.backfill),
            **asdict(settings.checks),
        )

    @classmethod
    def from_env(cls) -> MirrorResource:
        return cls.from_settings(Settings.from_env())

    def settings(self) -> Settings:
        return Settings(
            collections=CollectionFilter.parse(self.collections),
            jetstream_urls=tuple(u.strip() for u in self.jetstream_urls.split(",") if u.strip()),
            db_path=Path(self.db_path),
            plc_url=self.plc_url,
            relay_url=self.relay_url,
            allow_private_network=self.allow_private_network,
            dns_servers=tuple(s.strip() for s in self.dns_servers.split(",") if s.strip()),
            handle_resolver_url=self.handle_resolver_url,
            export_dir=Path(self.export_dir),
            export_cron=self.export_cron,
            ingest=self._limits(IngestLimits),
            backfill=self._limits(BackfillLimits),
            checks=self._limits(CheckLimits),
        )

    def _limits(self, kind: type[L]) -> L:
        """One of the limits dataclasses, from the fields of the same names."""
        return kind(**{f.name: getattr(self, f.name) for f in fields(kind)})
