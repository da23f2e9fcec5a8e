"""`mirror`: the operator's command for running, ingesting into and inspecting the mirror."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mirror_assets.config import ConfigError, Settings
from mirror_assets.model import backfills, cursor
from mirror_assets.names import BACKFILL_JOB, DID_BACKFILL, INGEST_JOB, RESTART_COLLECTIONS
from mirror_assets.ops import admin
from mirror_assets.ops.errors import CommandError
from mirror_assets.ops.instance import dagster_home_path
from mirror_assets.ops.migrate import CHUNK_ROWS, MigrationError, migrate_to_lake
from mirror_assets.ops.sql_console import FORMATS, QueryLimits, format_result, run_query
from mirror_assets.ops.status import format_status, read_status
from mirror_assets.ops.supervisor import run_services
from mirror_assets.store.choice import open_store
from mirror_assets.store.extensions import MissingExtensionError
from mirror_assets.store.file import DiskFullError
from mirror_assets.store.lake import ConflictError
from mirror_assets.store.lock import LockTimeoutError


def cmd_run(settings: Settings, _: argparse.Namespace) -> int:
    return run_services(settings)


def cmd_api(settings: Settings, _: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        "mirror_api.app:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        workers=settings.api_workers if settings.api_workers > 1 else None,
    )
    return 0


def cmd_ingest(settings: Settings, _: argparse.Namespace) -> int:
    """One ingest cycle as a Dagster run of the `ingest` job, recorded in the instance."""
    from mirror_assets.ops import job_runs

    return job_runs.execute_job(settings, INGEST_JOB, "records")


def cmd_backfill(settings: Settings, args: argparse.Namespace) -> int:
    """List one DID's collections anew, now, as a Dagster run of its `dids` partition."""
    from mirror_assets.atproto.syntax import is_did

    did: str = args.did
    if not is_did(did):
        raise CommandError(f"{did!r} is not a DID (did:plc:... or did:web:...)")
    if args.collection and not settings.collections.matches(args.collection):
        raise CommandError(f"{args.collection} is not tracked (COLLECTIONS={settings.collections})")
    collections = [args.collection] if args.collection else _collections_of(settings, did)
    if not collections:
        raise CommandError(
            f"COLLECTIONS={settings.collections} names no exact collection and {did} has no "
            "backfill yet: name one with --collection"
        )
    from mirror_assets.ops import job_runs

    config = {RESTART_COLLECTIONS: collections}
    return job_runs.execute_job(settings, BACKFILL_JOB, DID_BACKFILL, partition=did, config=config)


def _collections_of(settings: Settings, did: str) -> list[str]:
    """The tracked exact collections, and those the DID already has a backfill of."""
    with open_store(settings).reading() as con:
        known = {c for c in backfills.collections_of(con, did) if settings.collections.matches(c)}
    return sorted(settings.collections.exact | known)


def cmd_init(settings: Settings, _: argparse.Namespace) -> int:
    store = open_store(settings)
    store.init()
    print(f"{store.name}: schema ready")
    return 0


def _confirmed(args: argparse.Namespace, consequence: str, question: str) -> bool:
    """Whether to go on: --yes, or "y" typed at the terminal. Asked before the lock is taken,
    so a hesitating operator never holds up the writers."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise CommandError(f"this {consequence}: confirm with --yes")
    answer = input(f"{question} [y/N] ")
    if answer.strip().lower() in ("y", "yes"):
        return True
    print("nothing changed")
    return False


def cmd_reset(settings: Settings, args: argparse.Namespace) -> int:
    if not _confirmed(
        args,
        "deletes every record",
        f"Delete every record, cursor and backfill in {settings.store_name}?",
    ):
        return 1
    open_store(settings).reset()
    print(f"{settings.store_name}: all data dropped, schema recreated; the next ingest starts live")
    return 0


def cmd_purge(settings: Settings, args: argparse.Namespace) -> int:
    """Every row of one collection, in every table that has a `collection` column."""
    collection = admin.check_nsid(args.collection)
    if not _confirmed(
        args,
        f"deletes every row of {collection}",
        f"Delete every record, tombstone, backfill and summary of {collection} "
        f"in {settings.store_name}?",
    ):
        return 1
    removed, _ = open_store(settings).transact(lambda con: admin.purge_collection(con, collection))
    print(f"{collection}: {sum(removed.values())} rows removed from {settings.store_name}")
    width = max(map(len, removed), default=0)
    for table, count in removed.items():
        print(f"  {table:<{width}} {count:>10}")
    print(_refill_note(settings, collection))
    return 0


def _refill_note(settings: Settings, collection: str) -> str:
    tracked = settings.collections
    if not tracked.matches(collection):
        return f"{collection} is not tracked (COLLECTIONS={tracked}): nothing brings it back"
    if collection in tracked.exact:
        return (
            f"{collection} is still tracked (COLLECTIONS={tracked}): the next ingest, "
            "discovery and backfills fill it again"
        )
    return (
        f"{collection} is still tracked (COLLECTIONS={tracked}): the next ingest fills it "
        "again, and backfills of the DIDs it shows (a prefix.* collection is not discovered)"
    )


def cmd_reset_cursor(settings: Settings, args: argparse.Namespace) -> int:
    """Delete the Jetstream cursor (the next run starts live), or set it to a time."""
    target = None if args.to is None else admin.parse_cursor_time(args.to)
    question = (
        "Delete the cursor, so the next ingest starts at the live edge?"
        if target is None
        else f"Set the cursor to {admin.cursor_text(target)}?"
    )
    if not _confirmed(args, "moves the ingest cursor", question):
        return 1
    old, _ = open_store(settings).transact(lambda con: cursor.set_cursor(con, target))
    print(f"cursor: {admin.cursor_text(old)} -> {admin.cursor_text(target)}")
    for line in admin.cursor_notes(old, target, time.time()):
        print(line)
    return 0


def cmd_reset_backfills(settings: Settings, args: argparse.Namespace) -> int:
    """Backfills back to pending, paged again from the top by the backfill sensor's runs."""
    from mirror_assets.atproto.syntax import is_did

    if args.did is not None and not is_did(args.did):
        raise CommandError(f"{args.did!r} is not a DID (did:plc:... or did:web:...)")
    selection = backfills.Selection(
        statuses=tuple(args.status or ()),
        collection=None if args.collection is None else admin.check_nsid(args.collection),
        did=args.did,
    )
    which = _selection_text(selection)
    if not _confirmed(args, f"restarts {which}", f"Restart {which} from their first page?"):
        return 1
    before, _ = open_store(settings).transact(lambda con: backfills.restart(con, selection))
    if not before:
        print(f"no backfills match ({which}): nothing changed")
        return 0
    print(f"{sum(before.values())} backfills set back to pending ({which}), by previous status:")
    for status, count in before.items():
        print(f"  {status:<12} {count:>8}")
    print("the backfill sensor launches them within a minute while `mirror run` is up")
    return 0


def _selection_text(selection: backfills.Selection) -> str:
    parts = [f"status {' or '.join(selection.statuses)}"] if selection.statuses else []
    parts += [
        f"{name} {value}"
        for name, value in (("collection", selection.collection), ("did", selection.did))
        if value is not None
    ]
    return "backfills with " + ", ".join(parts) if parts else "every backfill"


def cmd_sql(settings: Settings, args: argparse.Namespace) -> int:
    """One read-only query, printed as a table, CSV or JSON."""
    limits = QueryLimits(settings.sql_timeout_seconds, settings.sql_memory_limit)
    result = run_query(settings.lake or settings.db_path, args.query, args.max_rows, limits)
    sys.stdout.write(format_result(result, args.format))
    more = "; more rows match: raise --max-rows" if result.truncated else ""
    if args.format == "table":
        print(f"({len(result.rows)} rows{more})")
    elif result.truncated:
        # On stderr, so the CSV or JSON on stdout stays whole and parseable.
        print(f"mirror sql: only the first {len(result.rows)} rows{more}", file=sys.stderr)
    return 0


def cmd_migrate_to_lake(settings: Settings, args: argparse.Namespace) -> int:
    """Copy the mirror file into the lake MIRROR_STORE names; run again to go on."""
    if settings.lake is None:
        raise CommandError(
            "MIRROR_STORE names no lake: set MIRROR_STORE=ducklake:<catalog> and "
            "MIRROR_DATA_PATH to the lake to copy into (docs/scale-out.md)"
        )
    source = Path(args.source) if args.source else settings.db_path
    lake = open_store(settings)

    def progress(table: str, rows: int) -> None:
        print(f"  {table}: {rows} rows copied", flush=True)

    try:
        done = migrate_to_lake(source, lake, args.chunk_rows, progress)
    except MigrationError as error:
        raise CommandError(str(error)) from None
    went_on = f" (went on with {', '.join(done.resumed)})" if done.resumed else ""
    print(f"{source} copied into {lake.name}: {sum(done.copied.values())} rows{went_on}")
    print("point every process at the lake (MIRROR_STORE, MIRROR_DATA_PATH), then start them")
    return 0


def cmd_status(settings: Settings, _: argparse.Namespace) -> int:
    from mirror_assets.ops.job_runs import job_names, last_runs

    # The file first, under its read lock; then Dagster's storage, with the file let go.
    with open_store(settings).reading() as con:
        status = read_status(con)
    print(format_status(settings, status))
    home = dagster_home_path()
    runs = last_runs(home, job_names(settings))
    if runs is None:
        print(f"last runs: no runs yet (no Dagster instance in {home})")
        return 0
    print(f"last runs ({home}):")
    width = max((len(run.job) for run in runs), default=0)
    now = time.time()
    for run in runs:
        print(f"  {run.job:<{width}} {run.describe(now)}")
    return 0


def _yes(command: argparse.ArgumentParser) -> None:
    command.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _backfill_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("did", metavar="DID")
    command.add_argument("--collection", help="one tracked collection (default: all)")


def _purge_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("collection", metavar="COLLECTION", help="an NSID, e.g. app.blento.card")
    _yes(command)


def _reset_cursor_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--to",
        metavar="TIME",
        help="a time_us or an ISO 8601 time (UTC unless it says otherwise); "
        "default: no cursor, the next ingest starts live",
    )
    _yes(command)


def _reset_backfills_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--status",
        action="append",
        choices=backfills.STATUSES,
        help="only backfills in this status (repeatable; default: every status)",
    )
    command.add_argument("--collection", help="only backfills of this collection")
    command.add_argument("--did", help="only backfills of this DID")
    _yes(command)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _sql_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("query", metavar="QUERY", help="one SELECT (or EXPLAIN) statement")
    command.add_argument("--format", choices=FORMATS, default="table")
    command.add_argument(
        "--max-rows", type=_positive, default=1000, help="print at most this many rows (1000)"
    )


def _migrate_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--from", dest="source", metavar="FILE", help="the mirror file to copy (MIRROR_DB)"
    )
    command.add_argument(
        "--chunk-rows",
        type=_positive,
        default=CHUNK_ROWS,
        help=f"rows per lake transaction ({CHUNK_ROWS})",
    )


def _no_arguments(_: argparse.ArgumentParser) -> None:
    pass


@dataclass(frozen=True)
class Command:
    run: Callable[[Settings, argparse.Namespace], int]
    help: str
    arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments


COMMANDS = {
    "run": Command(
        lambda settings, _: run_services(settings),
        "start Dagster (webserver and daemon) and the API; Ctrl-C stops both",
    ),
    "api": Command(cmd_api, "serve the API alone"),
    "ingest": Command(cmd_ingest, "run one ingest cycle now, through Dagster"),
    "backfill": Command(
        cmd_backfill,
        "list one DID's collections from its PDS now, through Dagster",
        _backfill_arguments,
    ),
    "init": Command(cmd_init, "create or migrate the DuckDB schema"),
    "reset": Command(cmd_reset, "drop all data and recreate the schema", _yes),
    "status": Command(cmd_status, "counts per collection, cursor and lag, backfills, last runs"),
    "sql": Command(
        cmd_sql, "run one read-only query, printed as a table, CSV or JSON", _sql_arguments
    ),
    "purge": Command(
        cmd_purge, "delete every row of one collection from every table", _purge_arguments
    ),
    "reset-cursor": Command(
        cmd_reset_cursor,
        "delete the ingest cursor (start live) or set it to a time",
        _reset_cursor_arguments,
    ),
    "migrate-to-lake": Command(
        cmd_migrate_to_lake,
        "copy the mirror file into the lake MIRROR_STORE names; run again to go on",
        _migrate_arguments,
    ),
    "reset-backfills": Command(
        cmd_reset_backfills,
        "set backfills back to pending, to be listed again from the first page",
        _reset_backfills_arguments,
    ),
}


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mirror", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.arguments(sub.add_parser(name, help=command.help, description=command.help))
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Dagster's storage migrations
    try:
        settings = Settings.from_env()
        return COMMANDS[args.command].run(settings, args)
    except (
        CommandError,
        ConfigError,
        ValueError,
        LockTimeoutError,
        DiskFullError,
        ConflictError,
        MissingExtensionError,
    ) as error:
        print(f"mirror {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
