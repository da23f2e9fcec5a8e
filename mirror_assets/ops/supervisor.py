"""`mirror run`: the quick start. Dagster (`dagster dev`: webserver, daemon and code server)
and the API as child processes, until Ctrl-C or SIGTERM. A child that exits is started again,
unless it keeps exiting (MAX_RESTARTS within RESTART_WINDOW_SECONDS), which stops them all.

It is for one machine under an operator's eye; a server runs the same parts as separate
services (docs/deploy.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from mirror_assets.config import Settings
from mirror_assets.ops.errors import CommandError
from mirror_assets.ops.instance import dagster_home
from mirror_assets.store.choice import open_store

POLL_SECONDS = 0.5
MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0


@dataclass
class _Child:
    """One service: its command, and the process running it now."""

    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: deque[float] = field(default_factory=deque)

    def start(self) -> None:
        # A session of its own: if it is slow to stop, its whole group is killed, so none of
        # its children (`dagster dev` starts a webserver and a daemon) is left serving.
        self.process = subprocess.Popen(
            self.command, env=self.env, cwd=self.cwd, start_new_session=True
        )

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def may_restart(self, now: float) -> bool:
        """Whether it has restarted fewer than MAX_RESTARTS times in the last window."""
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW_SECONDS:
            self.restarts.popleft()
        self.restarts.append(now)
        return len(self.restarts) <= MAX_RESTARTS


def run_services(settings: Settings) -> int:
    """Start the children and keep them running until Ctrl-C or SIGTERM."""
    if not Path("workspace.yaml").is_file():
        raise CommandError("no workspace.yaml here: run `mirror run` from the project's root")
    home = dagster_home()
    open_store(settings).init()
    # Dagster runs in DAGSTER_HOME (it warns about a dagster.yaml in any other working
    # folder), so every path it inherits must be absolute.
    env = {**os.environ, "DAGSTER_HOME": str(home), "MIRROR_DB": str(settings.db_path.absolute())}
    workspace = str(Path("workspace.yaml").absolute())
    port = str(settings.dagster_port)
    children = [
        _Child(
            "dagster",
            [_bin("dagster"), "dev", "-w", workspace, "-h", "127.0.0.1", "-p", port],
            env,
            home,
        ),
        _Child("api", [sys.executable, "-m", "mirror_assets.ops.cli", "api"], env),
    ]
    for child in children:
        child.start()
    print(
        f"Dagster UI: http://127.0.0.1:{settings.dagster_port}  "
        f"API: http://{settings.api_host}:{settings.api_port}  (DAGSTER_HOME={home}); "
        "Ctrl-C stops both. For development: docs/deploy.md runs them as services.",
        flush=True,
    )
    # A service manager stops with SIGTERM: treat it as Ctrl-C, so the children stop too.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _keep_running(children)
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(children)


def _keep_running(children: list[_Child]) -> int:
    """Start again each child that exits; the exit code of one that keeps exiting."""
    while True:
        time.sleep(POLL_SECONDS)
        for child in children:
            code = child.exited()
            if code is None:
                continue
            if not child.may_restart(time.monotonic()):
                print(
                    f"mirror run: {child.name} exited {MAX_RESTARTS + 1} times within "
                    f"{RESTART_WINDOW_SECONDS:.0f} s (last with {code}); stopping",
                    file=sys.stderr,
                    flush=True,
                )
                return code or 1
            print(
                f"mirror run: {child.name} exited with {code}; starting it again",
                file=sys.stderr,
                flush=True,
            )
            child.start()


def _stop(children: list[_Child]) -> None:
    """Ctrl-C to each child; whatever of a child's group is left at the deadline is killed."""
    running = [c.process for c in children if c.process is not None and c.process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for process in running:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _bin(name: str) -> str:
    """A console script installed beside this Python (the venv's), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name
