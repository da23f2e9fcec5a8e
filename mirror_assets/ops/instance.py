"""Where the commands find the Dagster instance: DAGSTER_HOME, else `.dagster/` here.

Dagster keeps its runs, schedules and event logs there; `dagster.yaml` is copied in from
the project's root, so the instance always runs with the project's settings.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mirror_assets.ops.errors import CommandError


def dagster_home_path() -> Path:
    """DAGSTER_HOME, or `.dagster/` in the working directory (which may not exist yet)."""
    return Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster").absolute()


def dagster_home() -> Path:
    """The Dagster home, created if missing, holding a copy of dagster.yaml."""
    home = dagster_home_path()
    home.mkdir(parents=True, exist_ok=True)
    config = Path.cwd() / "dagster.yaml"
    if config.is_file():
        shutil.copyfile(config, home / "dagster.yaml")
    elif not (home / "dagster.yaml").is_file():
        raise CommandError("no dagster.yaml here: run `mirror` from the project's root folder")
    os.environ["DAGSTER_HOME"] = str(home)
    return home
