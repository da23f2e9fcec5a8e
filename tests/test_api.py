"""The API skeleton: health, the contract's error bodies, and CORS on every answer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from mirror_api.app import create_app


@pytest.fixture
def client() -> Iterator[TestClient[Litestar]]:
    with TestClient(app=create_app()) as client:
        yield client


@pytest.mark.parametrize("path", ["/health", "/"])
def test_health(client: TestClient[Litestar], path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["access-control-allow-origin"] == "*"


def test_unknown_path_is_404_with_error_body_and_cors(client: TestClient[Litestar]) -> None:
    response = client.get("/no/such/path")
    assert response.status_code == 404
    assert response.json() == {"error": "Not found"}
    assert response.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("method", ["post", "put", "delete", "patch"])
def test_other_methods_are_405(client: TestClient[Litestar], method: str) -> None:
    response = client.request(method.upper(), "/health")
    assert response.status_code == 405
    assert response.json() == {"error": "Method not allowed"}
    assert response.headers["access-control-allow-origin"] == "*"


def test_cors_header_does_not_depend_on_origin(client: TestClient[Litestar]) -> None:
    response = client.get("/health", headers={"Origin": "https://example.com"})
    assert response.headers["access-control-allow-origin"] == "*"
