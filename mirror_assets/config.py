"""Settings read from the environment (and a `.env` file in the working directory).

The variable names are the public interface documented in the README; every one has a
safe default, so a fresh checkout runs without any configuration.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Self

import pydantic
from dotenv import load_dotenv

from mirror_assets.atproto.nsids import CollectionFilter

DEFAULT_COLLECTIONS = "app.blento.card,app.blento.page"
DEFAULT_JETSTREAM_URLS = ",".join(
    f"wss://{host}.bsky.network"
    for host in (
        "jetstream1.us-east",
        "jetstream2.us-east",
        "jetstream1.us-west",
        "jetstream2.us-west",
    )
)


DNS_PORT = 53


class ConfigError(ValueError):
    """A setting has a value the mirror cannot use."""


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be greater than zero")
    return value


_SIZE = re.compile(r"[0-9]+(\.[0-9]+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)


def _size(name: str, value: str) -> str:
    """A memory size as DuckDB takes it: a number and a unit (`512MB`, `2GiB`)."""
    if _SIZE.fullmatch(value.strip()) is None:
        raise ConfigError(f"{name}={value!r} is not a size such as 512MB or 2GB")
    return value.strip()


def name_server_address(entry: str) -> tuple[str, int]:
    """One DNS_SERVERS entry, `address[:port]`: an IP address (IPv6 in brackets when a port
    follows) and its port, 53 unless given; ValueError for anything else."""
    whole = ip_literal(entry.strip())
    if whole is not None:
        return whole, DNS_PORT
    head, _, port = entry.strip().rpartition(":")
    address = ip_literal(head)
    if address is None or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"DNS server {entry!r} is not an IP address with an optional port")
    return address, int(port)


def ip_literal(host: str) -> str | None:
    """The host as an IP address, if it is one (IPv6 may be written in brackets)."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def _name_servers(value: str) -> tuple[str, ...]:
    """DNS_SERVERS, each entry checked as the resolver will read it."""
    entries = _split(value)
    for entry in entries:
        try:
            name_server_address(entry)
        except ValueError as error:
            raise ConfigError(f"DNS_SERVERS: {error}") from None
    return entries


MIN_CURSOR_KEY_CHARACTERS = 32


def _cursor_key(value: str) -> str:
    """API_CURSOR_KEY: a secret of at least 32 characters (`openssl rand -hex 32`)."""
    if value and len(value) < MIN_CURSOR_KEY_CHARACTERS:
        raise ConfigError(
            f"API_CURSOR_KEY has {len(value)} characters; make one of at least "
            f"{MIN_CURSOR_KEY_CHARACTERS}, for example with `openssl rand -hex 32`"
        )
    return value


LAKE_PREFIX = "ducklake:"


def _store(value: str, data_path: str) -> str:
    """MIRROR_STORE: empty or `file` for the file, `ducklake:<catalog>` with a data path."""
    value = value.strip()
    if value in ("", "file"):
        return ""
    if not value.startswith(LAKE_PREFIX) or value == LAKE_PREFIX:
        raise ConfigError(
            f"MIRROR_STORE={value!r} must be `file` or `ducklake:<catalog>`, for example "
            "ducklake:postgres:dbname=mirror host=db.internal"
        )
    if not data_path.strip():
        raise ConfigError(
            "MIRROR_STORE names a DuckLake: set MIRROR_DATA_PATH to the folder or "
            "s3://bucket/prefix/ its Parquet files go to"
        )
    return value


@dataclass(frozen=True)
class LakeLocation:
    """A DuckLake: its catalog (what follows `ducklake:` in DuckDB's ATTACH, such as
    `postgres:dbname=mirror host=...`) and the folder or `s3://` prefix of its data files."""

    catalog: str
    data_path: str


@dataclass(frozen=True)
class S3Access:
    """How the lake reaches an S3-compatible store: the usual AWS variables, and an
    endpoint for stores other than AWS (MinIO, R2, Ceph). Read from the environment when
    the lake is opened, so keys never enter Dagster's run config."""

    key_id: str = ""
    secret: str = ""
    region: str = "us-east-1"
    endpoint: str = ""  # host[:port]; "" is AWS itself
    use_ssl: bool = True
    url_style: str = "path"

    @classmethod
    def from_env(cls) -> S3Access:
        get = os.environ.get
        endpoint = get("MIRROR_S3_ENDPOINT", "")
        scheme, _, host = endpoint.rpartition("://")
        return cls(
            key_id=get("AWS_ACCESS_KEY_ID", ""),
            secret=get("AWS_SECRET_ACCESS_KEY", ""),
            region=get("AWS_REGION", "") or get("AWS_DEFAULT_REGION", "") or cls.region,
            endpoint=host,
            use_ssl=scheme != "http",
            url_style=get("MIRROR_S3_URL_STYLE", "") or cls.url_style,
        )


def _cron(name: str, value: str) -> str:
    """A five-field cron expression, checked only for its shape: Dagster parses the rest."""
    if len(value.split()) != 5:
        raise ConfigError(f"{name}={value!r} is not a cron expression of five fields")
    return value


class _Limits(pydantic.BaseModel):
    """Numbers, each read from its environment variable (`VARIABLES`) if set, else a default.

    A pydantic model, so the Dagster resource can hold each group of limits as nested
    config of the same fields (defs/resources.py)."""

    model_config = pydantic.ConfigDict(extra="forbid")  # a misspelt limit is an error
    VARIABLES: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_env(cls) -> Self:
        defaults = cls()
        values: dict[str, float] = {}
        for name, variable in cls.VARIABLES.items():
            number = _number(variable, getattr(defaults, name))
            values[name] = int(number) if cls.model_fields[name].annotation is int else number
        return cls(**values)


class IngestLimits(_Limits):
    """When one ingest cycle stops reading and how it resumes (docs/ingest.md)."""

    rewind_seconds: float = 5.0
    idle_seconds: float = 5.0
    max_seconds: float = 45.0
    max_events: int = 2_000_000
    flush_events: int = 200_000
    flush_bytes: int = 128 * 1024 * 1024  # record JSON a batch holds before it is written
    gap_seconds: float = 300.0
    clock_skew_seconds: float = 600.0  # a frame's time_us may run this far ahead of ours

    VARIABLES: ClassVar[dict[str, str]] = {
        "rewind_seconds": "INGEST_REWIND_SECONDS",
        "idle_seconds": "INGEST_IDLE_SECONDS",
        "max_seconds": "INGEST_MAX_SECONDS",
        "max_events": "INGEST_MAX_EVENTS",
        "flush_events": "INGEST_FLUSH_EVENTS",
        "flush_bytes": "INGEST_FLUSH_BYTES",
        "gap_seconds": "INGEST_GAP_SECONDS",
        "clock_skew_seconds": "INGEST_CLOCK_SKEW_SECONDS",
    }


FILE_BACKFILL_RUNS = 2  # backfill runs at once on the file store; dagster.yaml agrees


class BackfillLimits(_Limits):
    """How backfills press PDSes and how much one run takes on (docs/backfill.md)."""

    # Requests in flight per PDS host, across the backfill runs at once: each run takes its
    # share, so adding runs or machines never presses a PDS harder.
    per_host: int = 8
    runs: int = 2  # backfill runs at once; more than FILE_BACKFILL_RUNS only on the lake
    http_timeout_seconds: float = 15.0
    http_attempts: int = 5  # per request, with exponential backoff and jitter between them
    http_backoff_seconds: float = 0.5  # the first retry's ceiling; doubles per attempt
    dids_at_once: int = 16  # DIDs paged concurrently by one run
    dids_per_run: int = 200  # partitions one launched run covers, at most
    run_seconds: float = 240.0  # a run stops starting pages after this; the rest resumes later
    retry_seconds: float = 600.0  # a failed backfill waits this, doubling per failure, <= 1 day
    identity_ttl_seconds: float = 86_400.0  # how long a DID's resolved PDS is trusted

    @property
    def per_host_per_run(self) -> int:
        return self.per_host // self.runs

    VARIABLES: ClassVar[dict[str, str]] = {
        "per_host": "BACKFILL_PER_HOST",
        "runs": "BACKFILL_RUNS",
        "http_timeout_seconds": "BACKFILL_HTTP_TIMEOUT_SECONDS",
        "http_attempts": "BACKFILL_HTTP_ATTEMPTS",
        "http_backoff_seconds": "BACKFILL_HTTP_BACKOFF_SECONDS",
        "dids_at_once": "BACKFILL_DIDS_AT_ONCE",
        "dids_per_run": "BACKFILL_DIDS_PER_RUN",
        "run_seconds": "BACKFILL_RUN_SECONDS",
        "retry_seconds": "BACKFILL_RETRY_SECONDS",
        "identity_ttl_seconds": "IDENTITY_TTL_SECONDS",
    }


class CheckLimits(_Limits):
    """When the asset checks warn and when they fail (docs/operations.md)."""

    lag_warn_seconds: float = 300.0  # the cursor this far behind the clock warns
    lag_fail_seconds: float = 3_600.0  # and this far fails
    failed_backfills_warn: int = 10  # backfills in status `failed` that warn
    failed_backfills_fail: int = 1_000  # and that fail

    VARIABLES: ClassVar[dict[str, str]] = {
        "lag_warn_seconds": "CHECK_LAG_WARN_SECONDS",
        "lag_fail_seconds": "CHECK_LAG_FAIL_SECONDS",
        "failed_backfills_warn": "CHECK_FAILED_BACKFILLS_WARN",
        "failed_backfills_fail": "CHECK_FAILED_BACKFILLS_FAIL",
    }


class HistoryLimits(_Limits):
    """How long Dagster keeps the runs it made, and when its history is too large
    (docs/operations.md)."""

    keep_success_days: float = 3.0  # a successful run's events and logs, after it ended
    keep_failure_days: float = 30.0  # a failed or canceled one's
    warn_bytes: int = 2 * 1024**3  # DAGSTER_HOME larger than this warns

    VARIABLES: ClassVar[dict[str, str]] = {
        "keep_success_days": "HISTORY_KEEP_SUCCESS_DAYS",
        "keep_failure_days": "HISTORY_KEEP_FAILURE_DAYS",
        "warn_bytes": "HISTORY_WARN_BYTES",
    }


class LakeLimits(_Limits):
    """How the lake's housekeeping keeps its files and snapshots few (docs/scale-out.md)."""

    keep_snapshot_hours: float = 24.0  # older snapshots expire (time travel reaches this far)
    small_file_bytes: int = 4 * 1024 * 1024  # a data file smaller than this is small
    small_files_warn: int = 500  # more small data files than this after compaction warns

    VARIABLES: ClassVar[dict[str, str]] = {
        "keep_snapshot_hours": "LAKE_KEEP_SNAPSHOT_HOURS",
        "small_file_bytes": "LAKE_SMALL_FILE_BYTES",
        "small_files_warn": "LAKE_SMALL_FILES_WARN",
    }


@dataclass(frozen=True)
class Settings:
    """Everything the mirror needs to know about where it reads and writes."""

    collections: CollectionFilter = field(
        default_factory=lambda: CollectionFilter.parse(DEFAULT_COLLECTIONS)
    )
    jetstream_urls: tuple[str, ...] = _split(DEFAULT_JETSTREAM_URLS)
    db_path: Path = Path("data/mirror.duckdb")
    # MIRROR_STORE: "" keeps the mirror in the file at db_path; "ducklake:<catalog>" in a
    # DuckLake whose Parquet files go to data_path (docs/scale-out.md).
    store: str = ""
    data_path: str = ""
    plc_url: str = "https://plc.directory"
    relay_url: str = "https://relay1.us-east.bsky.network"
    allow_private_network: bool = False
    dns_servers: tuple[str, ...] = ()  # host[:port] of name servers; () is the system's
    handle_resolver_url: str = ""  # a service to resolve handles; "" resolves them directly
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_workers: int = 1  # API server processes; each keeps its own answers
    dagster_port: int = 3000
    dagster_url: str = ""  # where the API asks for backfills; "" is the local `mirror run`
    backfill_wait_seconds: float = 10.0  # how long `?did=` waits for a backfill it asked for
    api_cache_bytes: int = 64 * 1024 * 1024  # answers the API keeps, per process, at most
    # Signs the API's page cursors; "" keeps a key beside MIRROR_DB. API replicas behind one
    # address share one (a cursor made by one is good at all), so the lake's need it set.
    api_cursor_key: str = field(default="", repr=False)
    api_backfills_in_flight: int = 4  # `?did=` backfill runs queued or running at once
    sql_timeout_seconds: float = 30.0  # `mirror sql` stops a query after this long
    sql_memory_limit: str = "1GB"  # and lets DuckDB use this much memory for it
    export_dir: Path = Path("data/exports")  # Parquet snapshots, one folder per collection
    export_cron: str = "41 * * * *"  # when the snapshots are written (UTC)
    ingest: IngestLimits = field(default_factory=IngestLimits)
    backfill: BackfillLimits = field(default_factory=BackfillLimits)
    checks: CheckLimits = field(default_factory=CheckLimits)
    history: HistoryLimits = field(default_factory=HistoryLimits)
    lake_limits: LakeLimits = field(default_factory=LakeLimits)

    def __post_init__(self) -> None:
        runs, per_host = self.backfill.runs, self.backfill.per_host
        if runs < 1:
            raise ConfigError(f"BACKFILL_RUNS={runs} must be at least 1")
        if self.lake is None and runs > FILE_BACKFILL_RUNS:
            raise ConfigError(
                f"BACKFILL_RUNS={runs}: the file store takes one writer at a time, so more "
                f"than {FILE_BACKFILL_RUNS} backfill runs only wait for it; more writers need "
                "the lake (MIRROR_STORE=ducklake:..., docs/scale-out.md)"
            )
        if per_host < runs:
            raise ConfigError(
                f"BACKFILL_PER_HOST={per_host} is below BACKFILL_RUNS={runs}: each run needs "
                "at least one request per host; raise BACKFILL_PER_HOST or lower BACKFILL_RUNS"
            )

    @property
    def lake(self) -> LakeLocation | None:
        """The DuckLake the mirror lives in, or None for the file at `db_path`."""
        if not self.store:
            return None
        return LakeLocation(self.store.removeprefix(LAKE_PREFIX), self.data_path)

    @property
    def store_name(self) -> str:
        """The store as messages name it: the file, or the lake's data path."""
        # Not the catalog: its connection string may hold a password.
        return str(self.db_path) if self.lake is None else f"the lake at {self.data_path}"

    @property
    def dagster_graphql_url(self) -> str:
        base = self.dagster_url or f"http://127.0.0.1:{self.dagster_port}"
        return f"{base.rstrip('/')}/graphql"

    @classmethod
    def from_env(cls, env_file: Path | None = Path(".env")) -> Settings:
        """Read the settings; a `.env` file fills in variables the environment lacks."""
        if env_file is not None and env_file.is_file():
            load_dotenv(env_file, override=False)
        get = os.environ.get
        urls = _split(get("JETSTREAM_URLS", "") or DEFAULT_JETSTREAM_URLS)
        for url in urls:
            if not url.startswith(("ws://", "wss://")):
                raise ConfigError(f"JETSTREAM_URLS entry {url!r} must start with ws:// or wss://")
        for name in ("PLC_URL", "RELAY_URL", "DAGSTER_URL", "HANDLE_RESOLVER_URL"):
            if not (get(name) or "https://").startswith(("http://", "https://")):
                raise ConfigError(f"{name}={get(name)!r} must start with http:// or https://")
        return cls(
            collections=CollectionFilter.parse(get("COLLECTIONS", "") or DEFAULT_COLLECTIONS),
            jetstream_urls=urls,
            db_path=Path(get("MIRROR_DB", "") or "data/mirror.duckdb"),
            store=_store(get("MIRROR_STORE", ""), get("MIRROR_DATA_PATH", "")),
            data_path=get("MIRROR_DATA_PATH", ""),
            plc_url=get("PLC_URL", "") or cls.plc_url,
            relay_url=get("RELAY_URL", "") or cls.relay_url,
            allow_private_network=get("MIRROR_ALLOW_PRIVATE_NETWORK", "") == "1",
            dns_servers=_name_servers(get("DNS_SERVERS", "")),
            handle_resolver_url=get("HANDLE_RESOLVER_URL", "") or cls.handle_resolver_url,
            api_host=get("API_HOST", "") or cls.api_host,
            api_port=int(_number("API_PORT", cls.api_port)),
            api_workers=int(_number("API_WORKERS", cls.api_workers)),
            dagster_port=int(_number("DAGSTER_PORT", cls.dagster_port)),
            dagster_url=get("DAGSTER_URL", "") or cls.dagster_url,
            backfill_wait_seconds=_number("API_BACKFILL_WAIT_SECONDS", cls.backfill_wait_seconds),
            api_cache_bytes=int(_number("API_CACHE_BYTES", cls.api_cache_bytes)),
            api_cursor_key=_cursor_key(get("API_CURSOR_KEY", "")),
            api_backfills_in_flight=int(
                _number("API_BACKFILLS_IN_FLIGHT", cls.api_backfills_in_flight)
            ),
            sql_timeout_seconds=_number("SQL_TIMEOUT_SECONDS", cls.sql_timeout_seconds),
            sql_memory_limit=_size(
                "SQL_MEMORY_LIMIT", get("SQL_MEMORY_LIMIT", "") or cls.sql_memory_limit
            ),
            export_dir=Path(get("EXPORT_DIR", "") or cls.export_dir),
            export_cron=_cron("EXPORT_CRON", get("EXPORT_CRON", "") or cls.export_cron),
            ingest=IngestLimits.from_env(),
            backfill=BackfillLimits.from_env(),
            checks=CheckLimits.from_env(),
            history=HistoryLimits.from_env(),
            lake_limits=LakeLimits.from_env(),
        )
