"""The interop network, started once per test session, and a mirror configured for it.

The session's first interop test pays for the Node install (minutes, on a fresh machine)
and the network's start (seconds): it gets a time limit that covers both, the others the
scenario's own limit. An install that cannot be done fails every interop test with npm's
own words; nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.harness import Network
from tests.interop.jetstream_bridge import JetstreamBridge
from tests.interop.network import START_SECONDS, DevNetwork
from tests.interop.node_install import (
    CHECK_SECONDS,
    NPM_CI_SECONDS,
    REBUILD_SECONDS,
    NodeInstallError,
    ensure_installed,
)
from tests.interop.pds_client import PdsClient
from tests.interop.relay import RelayStandIn
from tests.support.ports import free_port

HERE = Path(__file__).resolve().parent
SCENARIO_SECONDS = 240
SETUP_SECONDS = NPM_CI_SECONDS + REBUILD_SECONDS + CHECK_SECONDS + START_SECONDS
TRACKED = "app.blento.card,app.blento.page"


@pytest.hookimpl(trylast=True)  # after deselection: the first test that will really run
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    interop = [item for item in items if item.path.is_relative_to(HERE)]
    for position, item in enumerate(interop):
        seconds = SCENARIO_SECONDS + (SETUP_SECONDS if position == 0 else 0)
        item.add_marker(pytest.mark.timeout(seconds))
        # One network (and one Node install) for all of them: they run in one test process.
        item.add_marker(pytest.mark.xdist_group("interop"))


@pytest.fixture(scope="session")
def network() -> Iterator[Network]:
    try:
        install = ensure_installed()
    except NodeInstallError as error:
        pytest.fail(f"the interop network could not be installed: {error}", pytrace=False)
    with (
        DevNetwork(install) as urls,
        JetstreamBridge(urls.pds) as bridge,
        RelayStandIn(urls.pds) as relay,
    ):
        pds = PdsClient(urls.pds, bridge)
        try:
            yield Network(pds, urls.plc, bridge, relay.url, pds.create_account("heartbeat"))
        finally:
            pds.close()


@pytest.fixture
def mirror_env(network: Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The environment an operator would set for a mirror of the test network; its folder."""
    for name, value in {
        "COLLECTIONS": TRACKED,
        "JETSTREAM_URLS": network.bridge.url,
        "PLC_URL": network.plc_url,
        "RELAY_URL": network.relay_url,
        "MIRROR_ALLOW_PRIVATE_NETWORK": "1",
        # Its `.test` handles resolve nowhere but on the PDS itself, which answers
        # `com.atproto.identity.resolveHandle` for them, as a resolver service would.
        "HANDLE_RESOLVER_URL": network.pds.url,
        "MIRROR_DB": str(tmp_path / "mirror.duckdb"),
        # A stream that goes quiet ends the cycle soon: the scenarios wait on nothing else.
        "INGEST_IDLE_SECONDS": "0.5",
        "BACKFILL_HTTP_BACKOFF_SECONDS": "0.05",
        # `?did=` asks a Dagster webserver for backfills: here, none listens.
        "DAGSTER_URL": f"http://127.0.0.1:{free_port()}",
        "API_BACKFILL_WAIT_SECONDS": "0.01",
    }.items():
        monkeypatch.setenv(name, value)
    yield tmp_path
