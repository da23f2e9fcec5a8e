"""`GET /stats/{collection}`: how many users and records a collection has, and its newest."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from mirror_api.dependencies import Services
from mirror_api.errors import require_tracked
from mirror_api.queries import stats
from mirror_api.schemas import Stats


class StatsController(Controller):
    path = "/stats"

    @get("/{collection:str}", summary="Counts of a collection")
    async def stats(self, collection: FromPath[str], services: NamedDependency[Services]) -> Stats:
        require_tracked(collection, services.settings.collections)
        return await services.reader.ask(("stats", collection), lambda con: stats(con, collection))
