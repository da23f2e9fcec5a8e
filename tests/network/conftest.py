"""Fixtures of the network tests."""

from __future__ import annotations

import pytest
import trustme


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    """A test certificate authority, one per module: what it signs, the client trusts alone."""
    return trustme.CA()
