"""Fixtures shared by the suites that talk to the PLC, PDS and relay stand-in, and how the
suite is spread over test processes (`pytest -n 2`, as `make test` runs it)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from xdist.scheduler import LoadScopeScheduling

from mirror_assets.config import LakeLocation
from mirror_assets.store import extensions
from mirror_assets.store.contract import MirrorStore
from mirror_assets.store.file import FileStore
from mirror_assets.store.lake import LakeStore
from tests.support.atproto_server import AtprotoStandIn
from tests.support.dns_server import DnsStandIn, running_dns
from tests.support.lakes import new_lake
from tests.support.postgres import PostgresServer, running_postgres

StoreMaker = Callable[[], MirrorStore]

if TYPE_CHECKING:
    import dagster as dg

# Tests that share one resource run in one test process: the interop network (a session
# fixture, and one Node install) and the HTTPS server that holds port 443.
SHARED_SCOPES = ("tests/interop/", "tests/network/test_handles.py")


class _OneByOneButShared(LoadScopeScheduling):
    """Each test is a unit of work of its own, but the tests of a shared scope are one."""

    def _split_scope(self, nodeid: str) -> str:
        return next((scope for scope in SHARED_SCOPES if nodeid.startswith(scope)), nodeid)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The lake's tests need DuckDB's lake extensions, which exist for one DuckDB release:
    `make test` runs them in a second environment (`.venv-lake`, `pip install .[lake]`) with
    `-m lake`, and the rest in the first with `-m "not lake"`. A run that picked neither
    would fail every lake test for the missing extension, so it is told plainly instead."""
    if not config.getoption("markexpr") and any("lake" in item.keywords for item in items):
        try:
            extensions.extension_file("ducklake")
        except extensions.MissingExtensionError as missing:
            raise pytest.UsageError(
                f"{missing}. Run `make test`, or pytest with -m 'not lake' here and -m lake "
                "in .venv-lake"
            ) from None


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadScopeScheduling:
    return _OneByOneButShared(config, log)


@pytest.fixture
def net() -> Iterator[AtprotoStandIn]:
    """A running PLC, PDS and relay stand-in on 127.0.0.1."""
    with AtprotoStandIn() as running:
        yield running


@pytest.fixture
def dns() -> Iterator[DnsStandIn]:
    """A running DNS server on 127.0.0.1 that knows no names until a test sets them."""
    with running_dns() as server:
        yield server


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Where the test's mirror file goes; nothing is there until a test writes it."""
    return tmp_path / "mirror.duckdb"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """A temporary Dagster instance (Dagster is imported only by the tests that use one)."""
    import dagster as dg

    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A throwaway Postgres cluster for the lakes of one test process."""
    with running_postgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> LakeLocation:
    """A new, empty DuckLake in the test process's Postgres cluster."""
    return new_lake(request.getfixturevalue("postgres"), tmp_path)


STORES = ["file", pytest.param("lake", marks=pytest.mark.lake)]


@pytest.fixture(params=STORES)
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreMaker]:
    """Makes new, empty stores of one kind (each kind the mirror can live in, in turn:
    the behaviour must not differ)."""
    made: list[MirrorStore] = []

    def make() -> MirrorStore:
        if request.param == "file":
            made.append(FileStore(tmp_path / f"mirror-{len(made)}.duckdb"))
        else:
            made.append(LakeStore(new_lake(request.getfixturevalue("postgres"), tmp_path)))
        return made[-1]

    yield make
    for opened in made:
        if isinstance(opened, LakeStore):
            opened.close()


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, db: Path) -> Iterator[MirrorStore]:
    """A new, empty store of each kind in turn; the file one is at `db`."""
    if request.param == "file":
        yield FileStore(db)
        return
    opened = LakeStore(request.getfixturevalue("lake"))
    yield opened
    opened.close()
