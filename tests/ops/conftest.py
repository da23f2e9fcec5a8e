"""Fixtures of the tests of the operator's commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli_helpers import db_of, fill_mirror, make_project


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder holding the known mirror file of `fill_mirror` (test_cli.py
    overrides it with a project that has no mirror file yet)."""
    project = make_project(tmp_path, monkeypatch)
    fill_mirror(db_of(project))
    return project
