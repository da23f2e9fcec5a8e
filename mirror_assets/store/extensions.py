"""DuckDB's extensions for the lake, loaded from the wheels `pip install` brought.

DuckDB would download an extension it lacks at run time; the mirror never lets it (an
air-gapped machine cannot, and what runs should be what was installed). The `lake` extra
(`pip install 'atproto-mirror[lake]'`) pins DuckDB to the release the extension wheels are
built for, and each wheel holds one `.duckdb_extension` file (docs/scale-out.md).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import duckdb

# Extension name: the package of its wheel.
WHEELS = {
    "ducklake": "duckdb_extension_ducklake",
    "postgres_scanner": "duckdb_extension_postgres_scanner",
    "httpfs": "duckdb_extension_httpfs",
}

# No extension is fetched or loaded behind the mirror's back.
NO_DOWNLOADS: dict[str, str | bool | int | float | list[str]] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


class MissingExtensionError(RuntimeError):
    """An extension the lake needs is not installed for this DuckDB."""


def extension_file(name: str) -> Path:
    """The installed file of one extension, built for the DuckDB that is running."""
    package = WHEELS[name]
    wanted = f"v{duckdb.__version__}"
    try:
        module = importlib.import_module(package)
    except ImportError:
        module = None
    folders = [Path(folder) / "extensions" for folder in getattr(module, "__path__", [])]
    for folder in folders:
        candidate = folder / wanted / f"{name}.duckdb_extension"
        if candidate.is_file():
            return candidate
    found = sorted(path.parent.name for folder in folders for path in folder.glob("*/*"))
    raise MissingExtensionError(
        f"the DuckDB extension {name!r} for DuckDB {duckdb.__version__} is not installed"
        + (f" (found builds for {', '.join(found)})" if found else "")
        + ": the lake store needs `pip install 'atproto-mirror[lake]'`, which installs "
        "DuckDB and its extensions at matching versions"
    )


def load(con: duckdb.DuckDBPyConnection, *names: str) -> None:
    """Load the extensions into the connection's database, from their wheels."""
    for name in names:
        path = str(extension_file(name)).replace("'", "''")
        con.execute(f"LOAD '{path}'")
