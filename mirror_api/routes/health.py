"""`GET /health` and `GET /`: the liveness answer of the original Worker."""

from __future__ import annotations

from litestar import Controller, get

from mirror_api.schemas import Health


class HealthController(Controller):
    @get(["/", "/health"], sync_to_thread=False, summary="Liveness")
    def health(self) -> Health:
        return Health(status="ok")
