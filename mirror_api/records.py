"""`GET /records/{collection}`: live records, newest first, in stable keyset pages."""

from __future__ import annotations

from litestar import Controller, get
from litestar.exceptions import HTTPException

from mirror_api.params import decode_cursor, encode_cursor, parse_limit, require_tracked
from mirror_api.queries import backfill_state, records_page
from mirror_api.reader import MirrorReader
from mirror_api.responses import RecordsPage
from mirror_assets.config import Settings
from mirror_assets.identity import is_valid_did


class RecordsController(Controller):
    path = "/records"

    @get("/{collection:str}", sync_to_thread=True, summary="Records of a collection")
    def records(
        self,
        collection: str,
        reader: MirrorReader,
        settings: Settings,
        limit: str | None = None,
        cursor: str | None = None,
        did: str | None = None,
    ) -> RecordsPage:
        """Newest first; `?did=` keeps one user's records and says how their backfill stands."""
        require_tracked(collection, settings.collections)
        size, after = parse_limit(limit), decode_cursor(cursor)
        if did is not None and not is_valid_did(did):
            raise HTTPException(status_code=400, detail="Invalid did parameter")
        with reader.reading() as con:
            rows = records_page(con, collection, size + 1, after, did)
            backfill = None if did is None else backfill_state(con, collection, did)
        page, more = rows[:size], len(rows) > size
        next_cursor = encode_cursor(page[-1].time_us, page[-1].uri) if more else None
        return RecordsPage(page, next_cursor, backfill)
