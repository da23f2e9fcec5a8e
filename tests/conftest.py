"""Fixtures shared by the suites that talk to the PLC, PDS and relay stand-in, and how the
suite is spread over test processes (`pytest -n 2`, as `make test` runs it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from xdist.scheduler import LoadScopeScheduling

from tests.support.atproto_server import AtprotoStandIn
from tests.support.dns_server import DnsStandIn, running_dns

if TYPE_CHECKING:
    import dagster as dg

# Tests that share one resource run in one test process: the interop network (a session
# fixture, and one Node install) and the HTTPS server that holds port 443.
SHARED_SCOPES = ("tests/interop/", "tests/network/test_handles.py")


class _OneByOneButShared(LoadScopeScheduling):
    """Each test is a unit of work of its own, but the tests of a shared scope are one."""

    def _split_scope(self, nodeid: str) -> str:
        return next((scope for scope in SHARED_SCOPES if nodeid.startswith(scope)), nodeid)


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
