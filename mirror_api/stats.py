"""`GET /stats/{collection}`: how many users and records a collection has, and its newest."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from mirror_api.params import require_tracked
from mirror_api.queries import stats
from mirror_api.reader import MirrorReader
from mirror_api.responses import Stats
from mirror_assets.config import Settings


class StatsController(Controller):
    path = "/stats"

    @get("/{collection:str}", sync_to_thread=True, summary="Counts of a collection")
    def stats(
        self,
        collection: FromPath[str],
        reader: NamedDependency[MirrorReader],
        settings: NamedDependency[Settings],
    ) -> Stats:
        require_tracked(collection, settings.collections)
        return reader.query(("stats", collection), lambda con: stats(con, collection))
