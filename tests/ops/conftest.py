"""Fixtures of the tests of the operator's commands."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror_assets.store.contract import MirrorStore
from tests.support.cli_helpers import fill_mirror, lake_if_asked, make_project, opened_store


@pytest.fixture
def project(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A project folder whose mirror holds the known content of `fill_mirror`: its file, or
    a new lake its `.env` names when the test parametrizes `project` with "lake"
    (`on_both_stores`, `across_stores`). test_cli.py overrides it with a project that has
    no mirror yet."""
    project = make_project(tmp_path, monkeypatch, lake_if_asked(request))
    with opened_store(project) as store:
        fill_mirror(store)
    return project


@pytest.fixture
def project_store(project: Path) -> Iterator[MirrorStore]:
    """The store of `project`, as `mirror` run there opens it: to read back what it did."""
    with opened_store(project) as store:
        yield store
