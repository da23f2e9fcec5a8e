"""Fixtures shared by the suites that talk to the PLC, PDS and relay stand-in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.atproto_server import AtprotoStandIn


@pytest.fixture
def net() -> Iterator[AtprotoStandIn]:
    """A running PLC, PDS and relay stand-in on 127.0.0.1."""
    with AtprotoStandIn() as running:
        yield running
