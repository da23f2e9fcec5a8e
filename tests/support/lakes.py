"""New lakes for the tests, in a throwaway Postgres cluster: empty ones with the mirror's
schema (copies of a template made once per cluster), and bare ones nothing has made yet."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from mirror_assets.config import LakeLocation
from mirror_assets.store.lake import LakeStore
from tests.support.postgres import PostgresServer

_LAKE_TEMPLATE = "lake_template"
_templates: dict[int, Path] = {}  # per cluster (by port): the template lake's data folder


def _lake_template(server: PostgresServer) -> Path:
    """An empty lake with the mirror's schema, made once per cluster: making one costs more
    than most lake tests (the schema is a dozen catalog writes), copying it a fraction."""
    if server.port not in _templates:
        folder = server.data.parent / "lake-template"  # removed with the cluster
        catalog = server.create_database(_LAKE_TEMPLATE)
        template = LakeStore(LakeLocation(f"postgres:{catalog}", str(folder)))
        template.init()
        template.close()  # no connection may stay: Postgres copies only an idle database
        _templates[server.port] = folder
    return _templates[server.port]


def new_lake(server: PostgresServer, folder: Path) -> LakeLocation:
    """A new DuckLake with the mirror's empty schema: a copy of the cluster's template, its
    own database and its own data folder under `folder`."""
    template = _lake_template(server)
    name = "lake_" + uuid.uuid4().hex[:12]
    data = folder / name
    catalog = server.create_database(name, template=_LAKE_TEMPLATE)
    # The copy's files are the template's, moved under its own data path (the catalog
    # names them relative to it).
    shutil.copytree(template, data)
    server.execute(name, f"UPDATE ducklake_metadata SET value = '{data}/' WHERE key = 'data_path'")
    return LakeLocation(f"postgres:{catalog}", f"{data}/")


def bare_lake(server: PostgresServer, folder: Path) -> LakeLocation:
    """A lake nothing has made yet, where an operator starts: an empty Postgres database,
    and a data path under `folder` with nothing there."""
    name = "bare_" + uuid.uuid4().hex[:12]
    return LakeLocation(f"postgres:{server.create_database(name)}", f"{folder / name}/")
