"""The production layout's services, run as their systemd units would run them: the
ExecStartPre and ExecStart lines of `deploy/systemd/*.service`, with `${VAR}` expanded from
the environment as systemd does and the install folder replaced by this checkout (its venv
by the one running). For the deploy test and the soak benchmark; systemd itself is not run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.events_factory import CARD
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
INSTALLED_AT = "/opt/atproto-mirror"
UNITS = ("code", "webserver", "daemon", "api")  # in the order they are started
_VARIABLE = re.compile(r"\$\{(\w+)\}")


def environment_file(path: Path = DEPLOY / "mirror.env") -> dict[str, str]:
    """`NAME=value` lines, as systemd's EnvironmentFile= reads them (# starts a comment)."""
    env = {}
    for line in path.read_text().splitlines():
        name, equals, value = line.partition("=")
        if equals and not name.lstrip().startswith("#"):
            env[name.strip()] = value.strip()
    return env


def local_environment(folder: Path, jetstream_url: str, **settings: str) -> dict[str, str]:
    """`deploy/mirror.env` for services on 127.0.0.1: the data and DAGSTER_HOME in `folder`,
    free ports, the given Jetstream, no relay (no discovery), and `settings` on top."""
    return {
        **os.environ,
        **environment_file(),
        "DAGSTER_HOME": str(folder / "dagster"),
        "MIRROR_DB": str(folder / "mirror.duckdb"),
        "EXPORT_DIR": str(folder / "exports"),
        "DAGSTER_PORT": str(free_port()),
        "DAGSTER_CODE_PORT": str(free_port()),
        "API_PORT": str(free_port()),
        "COLLECTIONS": CARD,
        "JETSTREAM_URLS": jetstream_url,
        "RELAY_URL": "http://127.0.0.1:9",
        **settings,
    }


def unit_commands(unit: str, env: dict[str, str]) -> list[list[str]]:
    """A unit's ExecStartPre and ExecStart commands, ready to run here."""
    text = (DEPLOY / "systemd" / f"atproto-mirror-{unit}.service").read_text()
    venv_bin = str(Path(sys.executable).parent)
    commands = []
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key not in ("ExecStartPre", "ExecStart"):
            continue
        value = _VARIABLE.sub(lambda m: env[m.group(1)], value)
        value = value.replace(f"{INSTALLED_AT}/.venv/bin", venv_bin)
        commands.append(shlex.split(value.replace(INSTALLED_AT, str(ROOT))))
    assert commands and commands[-1][0].startswith(venv_bin), f"{unit}: no ExecStart of the venv"
    return commands


def start_unit(unit: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Run a unit's ExecStartPre commands, then start its ExecStart in a process group of
    its own; a code server is waited for until it listens."""
    *pre, command = unit_commands(unit, env)
    for step in pre:
        subprocess.run(step, env=env, cwd=ROOT, check=True, capture_output=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    if unit == "code":
        _wait_for_port(int(env["DAGSTER_CODE_PORT"]), process)
    return process


def stop_unit(process: subprocess.Popen[bytes]) -> None:
    """Stop a service and what it started (a code server's run processes)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, "the code server exited"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, "the code server did not listen"
        time.sleep(0.25)
