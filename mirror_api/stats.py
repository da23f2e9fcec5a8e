"""`GET /stats/{collection}`: how many users and records a collection has, and its newest."""

from __future__ import annotations

from litestar import Controller, get

from mirror_api.params import require_tracked
from mirror_api.queries import stats
from mirror_api.reader import MirrorReader
from mirror_api.responses import Stats
from mirror_assets.config import Settings


class StatsController(Controller):
    path = "/stats"

    @get("/{collection:str}", sync_to_thread=True, summary="Counts of a collection")
    def stats(self, collection: str, reader: MirrorReader, settings: Settings) -> Stats:
        require_tracked(collection, settings.collections)
        with reader.reading() as con:
            return stats(con, collection)
