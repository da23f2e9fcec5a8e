"""The reference PLC and PDS running in Node 22 (tests/interop/network.mjs), on 127.0.0.1.

The PDS keeps its SQLite files and blobs under TMPDIR, which points at a temporary folder
that is removed when the network stops.
"""

from __future__ import annotations

import json
import select
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from tests.interop.node_install import HERE, NodeInstall

START_SECONDS = 60
STOP_SECONDS = 15
SCRIPT = "network.mjs"


class NetworkStartError(RuntimeError):
    """The Node process did not announce its URLs; the message holds what it printed."""


@dataclass(frozen=True)
class Urls:
    pds: str
    plc: str


class DevNetwork:
    """`with DevNetwork(install) as urls:` runs the network for the block."""

    def __init__(self, install: NodeInstall) -> None:
        self._install = install
        self._data = Path(tempfile.mkdtemp(prefix="interop-pds-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __enter__(self) -> Urls:
        # ES modules resolve imports next to the script: it runs from the install's folder.
        script = self._install.root / SCRIPT
        shutil.copyfile(HERE / SCRIPT, script)
        self._log = (self._data / "node.log").open("wb")
        self._process = subprocess.Popen(
            [str(self._install.node), str(script)],
            cwd=self._install.root,
            env=self._install.env(TMPDIR=str(self._data)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        try:
            return self._read_urls(self._process)
        except BaseException:
            self._stop()
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop()

    def _read_urls(self, process: subprocess.Popen[bytes]) -> Urls:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], START_SECONDS)
        line = process.stdout.readline() if ready else b""
        try:
            announced = json.loads(line)
            return Urls(pds=str(announced["pds"]), plc=str(announced["plc"]))
        except (ValueError, KeyError, TypeError):
            log = (self._data / "node.log").read_text(errors="replace")[-3_000:]
            raise NetworkStartError(
                f"dev-env did not start within {START_SECONDS} s "
                f"(exit code {process.poll()}); it printed {line!r} and logged:\n{log}"
            ) from None

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            assert process.stdin is not None
            process.stdin.close()  # the script stops when its input closes
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
        shutil.rmtree(self._data, ignore_errors=True)
