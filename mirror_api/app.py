"""The Litestar application factory: the routes, their services, the contract's errors
(errors.py) and open CORS: every response carries `Access-Control-Allow-Origin: *`, whether
or not the request had an `Origin` header (docs/api.md).
"""

from __future__ import annotations

from litestar import Litestar
from litestar.datastructures import MutableScopeHeaders, State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.types import Message, Scope

from mirror_api.dependencies import Services
from mirror_api.errors import EXCEPTION_HANDLERS, json_not_found
from mirror_api.openapi import RecordJsonSchema
from mirror_api.paging import Cursors
from mirror_api.reader import reader_for
from mirror_api.routes.backfills import BackfillController
from mirror_api.routes.cursor import CursorController
from mirror_api.routes.health import HealthController
from mirror_api.routes.records import RecordsController
from mirror_api.routes.stats import StatsController
from mirror_api.routes.users import UsersController
from mirror_api.services.backfill_trigger import BackfillTrigger
from mirror_api.services.dagster_client import DagsterClient
from mirror_assets.config import Settings


async def _allow_any_origin(message: Message, scope: Scope) -> None:
    """`before_send` hook: runs for every response, 404s and 405s of the router included."""
    if message["type"] == "http.response.start":
        headers = MutableScopeHeaders.from_message(message)
        headers["access-control-allow-origin"] = "*"


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    reader = reader_for(settings)
    dagster = DagsterClient(settings.dagster_graphql_url)
    backfills = BackfillTrigger(
        reader, dagster, settings.backfill_wait_seconds, settings.api_backfills_in_flight
    )
    services = Services(settings, reader, backfills, Cursors(settings))
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
        after_request=json_not_found,
        on_shutdown=[backfills.close, reader.close],
        plugins=[RecordJsonSchema()],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(
            title="atproto-mirror",
            version="1",
            path="/schema",
            render_plugins=[ScalarRenderPlugin()],
        ),
    )
