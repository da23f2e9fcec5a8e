"""`GET /health` and `GET /`: the liveness answer of the original Worker."""

from __future__ import annotations

import msgspec
from litestar import Controller, get


class Health(msgspec.Struct, frozen=True):
    status: str


class HealthController(Controller):
    @get(["/", "/health"], sync_to_thread=False, summary="Liveness")
    def health(self) -> Health:
        return Health(status="ok")
