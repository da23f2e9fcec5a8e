"""The API never loads Dagster: it asks the webserver over HTTP (docs/api.md), so an API
process starts fast and stays small. Checked in a fresh interpreter, where nothing the test
run imported can hide or fake what `mirror_api.app` pulls in."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.api_helpers import ROOT

# Prints the Dagster modules loaded after the code under test ran, and whether the API's
# factory is there.
PROBE = """
import json, sys
{code}
import mirror_api.app
print(json.dumps({{
    "dagster": sorted(name for name in sys.modules if name.split(".")[0] == "dagster"),
    "create_app": callable(getattr(mirror_api.app, "create_app", None)),
}}))
"""


def _probe(code: str = "") -> tuple[list[str], bool]:
    """The Dagster modules loaded, and whether `create_app` is there, after `code` and
    `import mirror_api.app` in a new interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.splitlines()[-1])
    return answer["dagster"], answer["create_app"]


def test_importing_the_api_loads_no_dagster() -> None:
    dagster, create_app = _probe()
    assert dagster == []
    assert create_app is True


def test_the_probe_sees_dagster_when_it_is_loaded() -> None:
    """The check above can fail: the same probe, after an import of Dagster, names it."""
    dagster, create_app = _probe("import dagster")
    assert "dagster" in dagster
    assert create_app is True
