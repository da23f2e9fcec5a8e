"""The Litestar application factory: routes, the contract's error bodies, and open CORS.

Errors follow the original Worker's shape, `{"error": "..."}`, including the framework's
own 404 and 405 (DESIGN section 10), and every response carries
`Access-Control-Allow-Origin: *`, whether or not the request had an `Origin` header.
"""

from __future__ import annotations

import logging
from typing import Any

import duckdb
from litestar import Litestar, MediaType, Request, Response
from litestar.datastructures import MutableScopeHeaders, State
from litestar.di import Provide
from litestar.exceptions import HTTPException, MethodNotAllowedException, NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.types import Message, Scope

from mirror_api.dependencies import Services
from mirror_api.openapi import RecordJsonSchema
from mirror_api.paging import CollectionNotTrackedError, Cursors
from mirror_api.reader import MirrorReader
from mirror_api.routes.backfills import BackfillController
from mirror_api.routes.cursor import CursorController
from mirror_api.routes.health import HealthController
from mirror_api.routes.records import RecordsController
from mirror_api.routes.stats import StatsController
from mirror_api.routes.users import UsersController
from mirror_api.schemas import ErrorBody
from mirror_api.services.backfill_trigger import BackfillTrigger
from mirror_api.services.dagster_client import DagsterClient
from mirror_assets.config import Settings
from mirror_assets.store.lock import LockTimeoutError

log = logging.getLogger(__name__)


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
    """A writer held the file past the reader's timeout (DESIGN section 5: never the
    normal case), or a process outside the lock protocol holds it."""
    if isinstance(exc, duckdb.IOException) and "lock" not in str(exc).lower():
        return _server_error(request, exc)
    log.warning("the mirror file stayed locked: %s", exc)
    response = _error(503, "The mirror file is busy; try again shortly")
    response.headers["retry-after"] = "1"
    return response


async def _json_not_found(response: Response[Any]) -> Response[Any]:
    """`after_request` hook: the OpenAPI router answers unknown `/schema/...` paths itself,
    with an HTML page; the contract wants its JSON 404 there too."""
    if response.status_code == 404 and response.media_type != MediaType.JSON:
        return _error(404, "Not found")
    return response


def _server_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "Internal server error")


async def _allow_any_origin(message: Message, scope: Scope) -> None:
    """`before_send` hook: runs for every response, 404s and 405s of the router included."""
    if message["type"] == "http.response.start":
        headers = MutableScopeHeaders.from_message(message)
        headers["access-control-allow-origin"] = "*"


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    reader = MirrorReader(settings.db_path, cache_bytes=settings.api_cache_bytes)
    dagster = DagsterClient(settings.dagster_graphql_url)
    backfills = BackfillTrigger(
        reader, dagster, settings.backfill_wait_seconds, settings.api_backfills_in_flight
    )
    services = Services(settings, reader, backfills, Cursors(settings.db_path))
    return Litestar(
        route_handlers=[
            HealthController,
            CursorController,
            RecordsController,
            UsersController,
            StatsController,
            BackfillController,
        ],
        dependencies={
            "services": Provide(lambda: services, use_cache=True, sync_to_thread=False),
        },
        # The same parts, for whoever holds the app (what the reader keeps, what was asked).
        state=State({"services": services}),
        before_send=[_allow_any_origin],
        after_request=_json_not_found,
        on_shutdown=[backfills.close, reader.close],
        plugins=[RecordJsonSchema()],
        exception_handlers={
            NotFoundException: _not_found,
            CollectionNotTrackedError: _not_tracked,
            MethodNotAllowedException: _method_not_allowed,
            HTTPException: _http_error,
            duckdb.CatalogException: _not_ready,  # a file without the schema yet
            LockTimeoutError: _file_busy,
            duckdb.IOException: _file_busy,
            Exception: _server_error,
        },
        openapi_config=OpenAPIConfig(
            title="atproto-mirror",
            version="1",
            path="/schema",
            render_plugins=[ScalarRenderPlugin()],
        ),
    )
