"""`GET /cursor`: where the live mirror stands in the Jetstream stream."""

from __future__ import annotations

import time

from litestar import Controller, get
from litestar.di import NamedDependency

from mirror_api.dependencies import Services
from mirror_api.queries import cursor_us
from mirror_api.schemas import Cursor, NoCursor
from mirror_assets.atproto.cursor_time import cursor_iso, cursor_lag_seconds


class CursorController(Controller):
    path = "/cursor"

    @get("/", summary="The Jetstream cursor")
    async def cursor(self, services: NamedDependency[Services]) -> Cursor | NoCursor:
        """`{"cursor": null}` before the first ingest."""
        time_us = await services.reader.ask("cursor", cursor_us)
        if time_us is None:
            return NoCursor()
        lag = cursor_lag_seconds(time_us, time.time()) or 0.0
        return Cursor(time_us, cursor_iso(time_us) or "", int(lag))
