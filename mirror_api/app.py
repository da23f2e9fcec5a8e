"""The Litestar application factory: routes, the contract's error bodies, and open CORS.

Errors follow the original Worker's shape, `{"error": "..."}`, including the framework's
own 404 and 405 (DESIGN section 10), and every response carries
`Access-Control-Allow-Origin: *`, whether or not the request had an `Origin` header.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Litestar, MediaType, Request, Response
from litestar.datastructures import MutableScopeHeaders
from litestar.exceptions import HTTPException, MethodNotAllowedException, NotFoundException
from litestar.types import Message, Scope

from mirror_api.health import HealthController

log = logging.getLogger(__name__)


class ErrorBody(msgspec.Struct, frozen=True):
    error: str


def _error(status: int, message: str) -> Response[ErrorBody]:
    return Response(ErrorBody(message), status_code=status, media_type=MediaType.JSON)


def _not_found(_: Request[Any, Any, Any], __: NotFoundException) -> Response[ErrorBody]:
    return _error(404, "Not found")


def _method_not_allowed(
    _: Request[Any, Any, Any], __: MethodNotAllowedException
) -> Response[ErrorBody]:
    return _error(405, "Method not allowed")


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    return _error(exc.status_code, exc.detail)


def _server_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "Internal server error")


async def _allow_any_origin(message: Message, scope: Scope) -> None:
    """`before_send` hook: runs for every response, 404s and 405s of the router included."""
    if message["type"] == "http.response.start":
        headers = MutableScopeHeaders.from_message(message)
        headers["access-control-allow-origin"] = "*"


def create_app() -> Litestar:
    return Litestar(
        route_handlers=[HealthController],
        before_send=[_allow_any_origin],
        exception_handlers={
            NotFoundException: _not_found,
            MethodNotAllowedException: _method_not_allowed,
            HTTPException: _http_error,
            Exception: _server_error,
        },
    )
