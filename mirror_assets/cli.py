"""`mirror`: the operator's command for running, ingesting into and inspecting the mirror."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
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
    dagster_home()
    import dagster as dg

    from mirror_assets.definitions import build_definitions
    from mirror_assets.records_asset import WRITER_TAG
    from mirror_assets.resources import MirrorResource

    defs = build_definitions(MirrorResource.from_settings(settings))
    job = defs.resolve_job_def("ingest")
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance,
            tags={WRITER_TAG: "ingest"},
            # The run's own event log keeps every detail; the terminal gets the summary.
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            raise_on_error=False,
        )
    print(f"run {result.run_id}: {'success' if result.success else 'failure'}")
    for materialization in result.asset_materializations_for_node("records"):
        for key, value in materialization.metadata.items():
            print(f"  {key}: {getattr(value, 'value', value)}")
    failure = None if result.success else result.failure_data_for_node("records")
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
    lines.append(f"backfills: {_by_status(status.backfills_by_status)}")
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
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
        return COMMANDS[args.command][0](settings, args)
    except (CommandError, ConfigError, ValueError) as error:
        print(f"mirror {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
