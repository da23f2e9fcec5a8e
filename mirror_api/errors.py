"""The contract's errors: each refusal answers `{"error": "..."}` with the original Worker's
message and status (docs/api.md), the framework's own 404 and 405 included."""

from __future__ import annotations

import logging
from typing import Any

import duckdb
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, MethodNotAllowedException, NotFoundException
from litestar.types import ExceptionHandlersMap

from mirror_api.schemas import ErrorBody
from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.store.lock import LockTimeoutError

log = logging.getLogger(__name__)


class CollectionNotTrackedError(NotFoundException):
    """A 404 with the contract's own message, not "Not found"."""


def require_tracked(collection: str, collections: CollectionFilter) -> None:
    if not collections.matches(collection):
        raise CollectionNotTrackedError(detail="Collection not tracked")


def _error(status: int, message: str) -> Response[ErrorBody]:
    return Response(ErrorBody(message), status_code=status, media_type=MediaType.JSON)


def _not_found(_: Request[Any, Any, Any], __: NotFoundException) -> Response[ErrorBody]:
    return _error(404, "Not found")


def _not_tracked(_: Request[Any, Any, Any], __: CollectionNotTrackedError) -> Response[ErrorBody]:
    return _error(404, "Collection not tracked")


def _method_not_allowed(
    _: Request[Any, Any, Any], __: MethodNotAllowedException
) -> Response[ErrorBody]:
    return _error(405, "Method not allowed")


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    return _error(exc.status_code, exc.detail)


def _not_ready(_: Request[Any, Any, Any], __: Exception) -> Response[ErrorBody]:
    return _error(503, "The mirror file has no schema yet: run `mirror init`")


def _file_busy(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    """A writer held the file past the reader's timeout (docs/api.md: never the
    normal case), or a process outside the lock protocol holds it."""
    if isinstance(exc, duckdb.IOException) and "lock" not in str(exc).lower():
        return _server_error(request, exc)
    log.warning("the mirror file stayed locked: %s", exc)
    response = _error(503, "The mirror file is busy; try again shortly")
    response.headers["retry-after"] = "1"
    return response


async def json_not_found(response: Response[Any]) -> Response[Any]:
    """`after_request` hook: the OpenAPI router answers unknown `/schema/...` paths itself,
    with an HTML page; the contract wants its JSON 404 there too."""
    if response.status_code == 404 and response.media_type != MediaType.JSON:
        return _error(404, "Not found")
    return response


def _server_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "Internal server error")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    NotFoundException: _not_found,
    CollectionNotTrackedError: _not_tracked,
    MethodNotAllowedException: _method_not_allowed,
    HTTPException: _http_error,
    duckdb.CatalogException: _not_ready,  # a file without the schema yet
    LockTimeoutError: _file_busy,
    duckdb.IOException: _file_busy,
    Exception: _server_error,
}
