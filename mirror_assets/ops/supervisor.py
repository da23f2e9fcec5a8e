"""`mirror run`: Dagster (webserver and daemon) and the API as child processes, until
Ctrl-C, SIGTERM or one of them exits, which stops the others."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from mirror_assets.config import Settings
from mirror_assets.ops.errors import CommandError
from mirror_assets.ops.instance import dagster_home
from mirror_assets.store.file import Store


def run_services(settings: Settings) -> int:
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
    api = subprocess.Popen([sys.executable, "-m", "mirror_assets.ops.cli", "api"], env=env)
    print(
        f"Dagster UI: http://127.0.0.1:{settings.dagster_port}  "
        f"API: http://{settings.api_host}:{settings.api_port}  (DAGSTER_HOME={home}); "
        "Ctrl-C stops both",
        flush=True,
    )
    children = [dagster, api]
    # A service manager stops with SIGTERM: treat it as Ctrl-C, so the children stop too.
    signal.signal(signal.SIGTERM, _interrupt)
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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _bin(name: str) -> str:
    """A console script installed beside this Python (the venv's), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name
