"""Schemathesis against the OpenAPI document: generated requests to every endpoint, with
any path and query values the schema allows and many it does not, never get a 5xx.

The app reads a real file with records, accounts and backfills in it. Dagster is not
running (DAGSTER_URL points at a closed port) and `?did=` waits 10 ms, so generated
`?did=` requests exercise the path where Dagster cannot be asked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from mirror_api.app import create_app
from tests.support.api_helpers import settings_for
from tests.support.events_factory import CARD, PAGE, account, create, delete, did
from tests.support.store_helpers import apply_events

ALICE, BOB = did("a" * 24), did("b" * 24)


def _app(db: Path) -> object:
    alice, bob = ALICE, BOB
    apply_events(
        db,
        [
            *(create(alice, f"r{i}", rev=i + 1, t=i) for i in range(30)),
            create(bob, "b1", rev=1, t=3, collection=PAGE),
            delete(alice, "r3", rev=40, t=40),
            account(bob, active=False, status="takendown", t=50),
        ],
    )
    return create_app(settings_for(db, f"{CARD},{PAGE}"))


def _operations(db: Path) -> list[APIOperation[Any, Any, Any, Any]]:
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", _app(db))
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the OpenAPI document is not valid: {result.err()}"
        operations.append(result.ok())
    return operations


def test_no_generated_request_gets_a_server_error(tmp_path: Path) -> None:
    operations = _operations(tmp_path / "mirror.duckdb")
    paths = {operation.path for operation in operations}
    assert {"/records/{collection}", "/users/{collection}", "/cursor"} <= paths
    for operation in operations:
        # Random collections are all untracked (a 404 before any parameter is read) and
        # random limits are hardly ever numbers: most cases get a tracked collection, and
        # limits are often numbers, so every parameter reaches the queries.
        @given(
            case=operation.as_strategy(),
            collection=st.sampled_from([CARD, CARD, PAGE, None]),
            user=st.sampled_from([ALICE, BOB, None]),
            limit=st.one_of(st.none(), st.integers(-5, 10**12).map(str), st.text(max_size=8)),
        )
        @settings(
            max_examples=80,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def no_server_error(
            case: Case[Any], collection: str | None, user: str | None, limit: str | None
        ) -> None:
            if collection is not None and "collection" in (case.path_parameters or {}):
                case.path_parameters["collection"] = collection
            if user is not None and "did" in (case.path_parameters or {}):
                case.path_parameters["did"] = user
            if limit is not None and case.query is not None and "limit" in case.query:
                case.query["limit"] = limit
            response = case.call()
            case.validate_response(response, checks=[not_a_server_error])

        no_server_error()
