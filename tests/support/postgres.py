"""A throwaway Postgres server on 127.0.0.1 for tests: a real cluster from Debian's binaries.

`running_postgres(folder)` runs `initdb` into a fresh folder, starts the server on a free
loopback port (its unix socket inside the data folder, so it never meets a system cluster's
socket in /var/run/postgresql), yields a `PostgresServer`, and on exit stops it with
`pg_ctl stop -m immediate` and removes the folder, whether the test passed or not. Durability
is switched off (fsync, synchronous_commit, full_page_writes): a test's cluster never
outlives a crash, and without them a start and stop take well under two seconds.

Authentication is `trust` for the superuser `mirror`, over TCP only to 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port

HOST = "127.0.0.1"
USER = "mirror"
PG_ROOT = Path("/usr/lib/postgresql")  # Debian: one <major version>/bin per installed version

# Speed over durability, and room for a pool per test process. `listen_addresses` and the
# socket folder keep the cluster to itself; `port` comes on the command line, per start.
SETTINGS = {
    "listen_addresses": f"'{HOST}'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


@dataclass(frozen=True)
class PostgresServer:
    """A running cluster: where it listens, who to log in as, and its binaries (for psql)."""

    host: str
    port: int
    user: str
    data: Path
    bin_dir: Path

    def create_database(self, name: str, template: str | None = None) -> str:
        """Creates database `name` (a copy of `template`, if given) and returns its libpq
        connection string."""
        copy = ["-T", template] if template else []
        command = [str(self.bin_dir / "createdb"), *self.client_args(), *copy, name]
        subprocess.run(command, check=True, capture_output=True, text=True)
        return f"dbname={name} host={self.host} port={self.port} user={self.user}"

    def execute(self, database: str, sql: str) -> str:
        """Runs SQL in a database with psql; what it printed."""
        command = [str(self.bin_dir / "psql"), *self.client_args(), "-X", "-At"]
        command += ["-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout

    def client_args(self) -> list[str]:
        """The -h/-p/-U arguments every client binary (psql, createdb, pg_dump) takes."""
        return ["-h", self.host, "-p", str(self.port), "-U", self.user]


def postgres_bin() -> Path:
    """The bin folder of the newest Postgres that Debian's packages installed."""
    found = [path for path in PG_ROOT.glob("*/bin") if (path / "initdb").exists()]
    if not found:
        raise RuntimeError(
            f"no Postgres binaries in {PG_ROOT}/*/bin: install Debian's `postgresql` package "
            "(apt-get install postgresql) to run the tests that need a Postgres server"
        )
    return max(found, key=_major_version)


def _major_version(bin_dir: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin: compare "15" as a number, so that 9.6 sorts before 10.
    return tuple(int(part) for part in bin_dir.parent.name.split(".") if part.isdigit())


def _as_root() -> bool:
    return os.geteuid() == 0


def _cluster_folder(folder: Path) -> Path:
    """A fresh, empty folder for the cluster, which the server's user can enter and write.

    initdb and postgres refuse to run as root, so as root they run as the `postgres` user.
    That user cannot reach a folder under pytest's tmp_path (/tmp/pytest-of-root is mode
    700), and opening up pytest's folders would leak into every other test. So as root the
    cluster goes into a folder of its own under the system temp folder, owned by postgres,
    and `folder` is not used; as any other user it goes under `folder`.
    """
    if not _as_root():
        return Path(tempfile.mkdtemp(prefix="pg-", dir=folder))
    cluster = Path(tempfile.mkdtemp(prefix="pg-"))
    shutil.chown(cluster, user="postgres", group="postgres")
    return cluster


def _run_as_server(command: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Runs a server-side binary (initdb, pg_ctl) as the user that owns the cluster.

    The working folder is the cluster's own, which the postgres user can always enter: from
    a root-only folder (/root), the binaries complain that they cannot change into it.
    """
    prefix = ["runuser", "-u", "postgres", "--"] if _as_root() else []
    return subprocess.run([*prefix, *command], cwd=cwd, check=False, capture_output=True, text=True)


def _check(result: subprocess.CompletedProcess[str], what: str, log: Path | None = None) -> None:
    if result.returncode == 0:
        return
    details = result.stdout + result.stderr
    if log is not None and log.exists():
        details += f"\n--- server log {log} ---\n" + log.read_text(errors="replace")
    raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{details}")


def _initdb(bin_dir: Path, cluster: Path, data: Path) -> None:
    # --locale=C: the same sort order everywhere, whatever locales the machine has.
    command = [
        str(bin_dir / "initdb"),
        *("-D", str(data), "-A", "trust", "-U", USER, "-E", "UTF8", "--locale=C"),
        *("--no-sync", "--no-instructions"),
    ]
    _check(_run_as_server(command, cluster), "initdb")


def _configure(data: Path) -> None:
    """Appends the test settings to postgresql.conf (the file keeps its owner, postgres)."""
    lines = [f"{name} = {value}" for name, value in SETTINGS.items()]
    lines.append(f"unix_socket_directories = '{data}'")
    with (data / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("\n# tests/support/postgres.py\n" + "\n".join(lines) + "\n")


def _start(bin_dir: Path, cluster: Path, data: Path, port: int) -> None:
    log = cluster / "server.log"
    command = [
        str(bin_dir / "pg_ctl"),
        *("start", "-w", "-t", "30", "-D", str(data), "-l", str(log), "-o", f"-p {port}"),
    ]
    _check(_run_as_server(command, cluster), "pg_ctl start", log)


def _stop(bin_dir: Path, cluster: Path, data: Path) -> None:
    # Only a server that started (or half started) has a postmaster.pid to stop; immediate
    # mode skips the shutdown checkpoint, as nothing in the cluster is kept.
    if (data / "postmaster.pid").exists():
        command = [str(bin_dir / "pg_ctl"), "stop", "-w", "-m", "immediate", "-D", str(data)]
        _check(_run_as_server(command, cluster), "pg_ctl stop")


@contextmanager
def running_postgres(folder: Path) -> Iterator[PostgresServer]:
    """A started Postgres on 127.0.0.1 (see the module docstring); stopped and removed on exit."""
    bin_dir = postgres_bin()
    cluster = _cluster_folder(folder)
    data = cluster / "data"
    try:
        _initdb(bin_dir, cluster, data)
        _configure(data)
        port = free_port()
        try:
            _start(bin_dir, cluster, data, port)
            yield PostgresServer(host=HOST, port=port, user=USER, data=data, bin_dir=bin_dir)
        finally:
            _stop(bin_dir, cluster, data)
    finally:
        shutil.rmtree(cluster, ignore_errors=True)
