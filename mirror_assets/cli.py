"""`mirror`: the operator's command for running, ingesting into and inspecting the mirror."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from mirror_assets.config import ConfigError, Settings
from mirror_assets.status import MirrorStatus, read_status
from mirror_assets.store import Store


class CommandError(RuntimeError):
    """A command cannot go on; the message tells the operator what to do."""


def dagster_home() -> Path:
    """DAGSTER_HOME, or `.dagster/` in the working directory, holding a copy of dagster.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster").absolute()
    home.mkdir(parents=True, exist_ok=True)
    config = Path.cwd() / "dagster.yaml"
    if config.is_file():
        shutil.copyfile(config, home / "dagster.yaml")
    elif not (home / "dagster.yaml").is_file():
        raise CommandError("no dagster.yaml here: run `mirror` from the project's root folder")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def cmd_run(settings: Settings, _: argparse.Namespace) -> int:
    """Dagster (webserver and daemon) and the API together, until Ctrl-C or one of them exits."""
    if not Path("workspace.yaml").is_file():
        raise CommandError("no workspace.yaml here: run `mirror run` from the project's root")
    home = dagster_home()
    Store(settings.db_path).init()
    # Dagster runs in DAGSTER_HOME (it warns about a dagster.yaml in any other working
    # folder), so every path it inherits must be absolute.
    env = {**os.environ, "DAGSTER_HOME": str(home), "MIRROR_DB": str(settings.db_path.absolute())}
    workspace = str(Path("workspace.yaml").absolute())
    port = str(settings.dagster_port)
    dagster = subprocess.Popen(
        [_bin("dagster"), "dev", "-w", workspace, "-h", "127.0.0.1", "-p", port], env=env, cwd=home
    )
    api = subprocess.Popen([sys.executable, "-m", "mirror_assets.cli", "api"], env=env)
    print(
        f"Dagster UI: http://127.0.0.1:{settings.dagster_port}  "
        f"API: http://{settings.api_host}:{settings.api_port}  (DAGSTER_HOME={home}); "
        "Ctrl-C stops both",
        flush=True,
    )
    children = [dagster, api]
    try:
        os.wait()  # returns when either child exits
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
    return max((child.returncode or 0) for child in children)


def _bin(name: str) -> str:
    """A console script installed beside this Python (the venv's), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def cmd_api(settings: Settings, _: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        "mirror_api.app:create_app", factory=True, host=settings.api_host, port=settings.api_port
    )
    return 0


def cmd_ingest(settings: Settings, _: argparse.Namespace) -> int:
    """One ingest cycle as a Dagster run of the `ingest` job, recorded in the instance."""
    return _execute_job(settings, "ingest", "records")


def cmd_backfill(settings: Settings, args: argparse.Namespace) -> int:
    """List one DID's collections anew, now, as a Dagster run of its `dids` partition."""
    from mirror_assets.identity import is_valid_did

    did: str = args.did
    if not is_valid_did(did):
        raise CommandError(f"{did!r} is not a DID (did:plc:... or did:web:...)")
    if args.collection and not settings.collections.matches(args.collection):
        raise CommandError(f"{args.collection} is not tracked (COLLECTIONS={settings.collections})")
    collections = [args.collection] if args.collection else _collections_of(settings, did)
    if not collections:
        raise CommandError(
            f"COLLECTIONS={settings.collections} names no exact collection and {did} has no "
            "backfill yet: name one with --collection"
        )
    config = {"restart_collections": collections}
    return _execute_job(settings, "backfill", "did_backfill", partition=did, config=config)


def _collections_of(settings: Settings, did: str) -> list[str]:
    """The tracked exact collections, and those the DID already has a backfill of."""
    with Store(settings.db_path).reading() as con:
        rows = con.execute("SELECT collection FROM backfills WHERE did = ?", [did]).fetchall()
    known = {row[0] for row in rows if settings.collections.matches(row[0])}
    return sorted(settings.collections.exact | known)


def _execute_job(
    settings: Settings,
    job_name: str,
    asset: str,
    partition: str | None = None,
    config: Mapping[str, object] | None = None,
) -> int:
    """Run a job in this process, recorded in the instance; print its metadata or error."""
    dagster_home()
    import dagster as dg

    from mirror_assets.backfill_asset import DIDS
    from mirror_assets.definitions import build_definitions
    from mirror_assets.jobs import WRITER_TAG
    from mirror_assets.resources import MirrorResource

    defs = build_definitions(MirrorResource.from_settings(settings))
    job = defs.resolve_job_def(job_name)
    run_config: dict[str, object] = {
        # The run's own event log keeps every detail; the terminal gets the summary.
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
    }
    if config is not None:
        run_config["ops"] = {asset: {"config": config}}
    with dg.DagsterInstance.get() as instance:
        if partition is not None and not instance.has_dynamic_partition(DIDS, partition):
            instance.add_dynamic_partitions(DIDS, [partition])
        result = job.execute_in_process(
            instance=instance,
            tags={WRITER_TAG: job_name},
            run_config=run_config,
            partition_key=partition,
            raise_on_error=False,
        )
    print(f"run {result.run_id}: {'success' if result.success else 'failure'}")
    events: list[dg.AssetObservation | dg.AssetMaterialization] = [
        *result.asset_observations_for_node(asset),
        *result.asset_materializations_for_node(asset),
    ]
    for event in events:
        if event.metadata:
            for key, value in event.metadata.items():
                print(f"  {key}: {getattr(value, 'value', value)}")
        elif event.partition:
            print(f"  done: {event.partition}")
    failure = None if result.success else result.failure_data_for_node(asset)
    if failure is not None and failure.error is not None:
        error = failure.error.cause or failure.error  # the asset's own error, not the wrapper
        print(f"  error: {error.message.strip()}", file=sys.stderr)
    return 0 if result.success else 1


def cmd_init(settings: Settings, _: argparse.Namespace) -> int:
    Store(settings.db_path).init()
    print(f"{settings.db_path}: schema ready")
    return 0


def cmd_reset(settings: Settings, args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError("`mirror reset` deletes every record: confirm with --yes")
        answer = input(f"Delete every record, cursor and backfill in {settings.db_path}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing changed")
            return 1
    Store(settings.db_path).reset()
    print(f"{settings.db_path}: all data dropped, schema recreated; the next ingest starts live")
    return 0


def cmd_status(settings: Settings, _: argparse.Namespace) -> int:
    with Store(settings.db_path).reading() as con:
        status = read_status(con)
    print(format_status(settings, status))
    return 0


def format_status(settings: Settings, status: MirrorStatus) -> str:
    lines = [f"file: {settings.db_path} (schema {status.schema_version})"]
    lines.append(f"tracked collections: {settings.collections}")
    if status.cursor_us is None:
        lines.append("cursor: none yet (no ingest has run)")
    else:
        lines.append(
            f"cursor: {status.cursor_us} ({status.cursor_iso}, {status.lag_seconds:.0f} s ago) "
            f"from {status.cursor_endpoint}"
        )
    lines.append(f"{'collection':<40} {'records':>10} {'hidden':>8} {'deleted':>8} {'users':>8}")
    for c in status.collections:
        lines.append(
            f"{c.collection:<40} {c.records:>10} {c.hidden:>8} {c.tombstones:>8} {c.dids:>8}"
        )
    lines.append(f"accounts: {_by_status(status.accounts_by_status)}")
    lines.append(
        f"backfills: {_by_status(status.backfills_by_status)} "
        f"({status.backfill_records} records in {status.backfill_pages} pages)"
    )
    for failed in status.failed_backfills:
        retry = f"{failed.next_attempt_at:%Y-%m-%d %H:%M}" if failed.next_attempt_at else "now"
        lines.append(
            f"  failed: {failed.did} {failed.collection} ({failed.attempts} attempts, "
            f"retry {retry}): {failed.last_error}"
        )
    for discovery in status.discovery:
        state = "pass in progress" if discovery.in_progress else "last complete pass"
        when = f"{discovery.completed_at:%Y-%m-%d %H:%M}" if discovery.completed_at else "never"
        lines.append(
            f"discovery: {discovery.collection} on {discovery.relay}: {discovery.repos_listed} "
            f"repos listed, {discovery.dids_queued} new ({state}; completed {when})"
        )
    for detected_at, endpoint, seconds in status.gaps:
        lines.append(
            f"cursor gap: {detected_at:%Y-%m-%d %H:%M} on {endpoint}, {seconds:.0f} s lost"
        )
    return "\n".join(lines)


def _by_status(counts: dict[str, int]) -> str:
    return ", ".join(f"{status} {n}" for status, n in counts.items()) or "none"


COMMANDS = {
    "run": (cmd_run, "start Dagster (webserver and daemon) and the API; Ctrl-C stops both"),
    "api": (cmd_api, "serve the API alone"),
    "ingest": (cmd_ingest, "run one ingest cycle now, through Dagster"),
    "backfill": (cmd_backfill, "list one DID's collections from its PDS now, through Dagster"),
    "init": (cmd_init, "create or migrate the DuckDB schema"),
    "reset": (cmd_reset, "drop all data and recreate the schema"),
    "status": (cmd_status, "counts per collection, cursor and lag, backfills"),
}


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mirror", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == "reset":
            command.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        if name == "backfill":
            command.add_argument("did", metavar="DID")
            command.add_argument("--collection", help="one tracked collection (default: all)")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    try:
        settings = Settings.from_env()
        return COMMANDS[args.command][0](settings, args)
    except (CommandError, ConfigError, ValueError) as error:
        print(f"mirror {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
