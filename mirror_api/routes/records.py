"""`GET /records/{collection}`: live records, newest first, in stable keyset pages."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.params import FromPath, FromQuery

from mirror_api.dependencies import Services
from mirror_api.paging import parse_limit, require_tracked
from mirror_api.queries import did_of_handle, records_page
from mirror_api.reader import MirrorReader
from mirror_api.schemas import BackfillState, RecordsPage
from mirror_assets.atproto.syntax import is_did, is_handle


class RecordsController(Controller):
    path = "/records"

    @get("/{collection:str}", summary="Records of a collection")
    async def records(
        self,
        collection: FromPath[str],
        services: NamedDependency[Services],
        limit: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        did: FromQuery[str | None] = None,
    ) -> RecordsPage:
        """Newest first. `?did=` (or a handle the mirror knows) keeps one user's records; if
        their backfill is not complete, the first page asks for it and waits for it, up to a
        bound, and every page says how it stands."""
        require_tracked(collection, services.settings.collections)
        size, after = parse_limit(limit), services.cursors.decode(cursor, "records")
        state: BackfillState | None = None
        if did is not None:
            did = await _resolve_did(services.reader, did)
            # The first page asks for the backfill and waits; the pages after it only say
            # how it stands, so a walk waits once.
            backfills = services.backfills
            check = backfills.status if after is not None else backfills.ensure
            state = await check(did, collection)
        key = ("records", collection, size + 1, after, did)
        rows = await services.reader.ask(
            key, lambda con: records_page(con, collection, size + 1, after, did)
        )
        page, more = rows[:size], len(rows) > size
        next_cursor = None
        if more:
            next_cursor = services.cursors.encode("records", page[-1].time_us, page[-1].uri)
        return RecordsPage(page, next_cursor, state)


async def _resolve_did(reader: MirrorReader, did_or_handle: str) -> str:
    """A DID of a method the protocol supports, in its exact syntax, as given; or the DID of
    a handle the mirror knows (`accounts` holds only handles checked both ways); else a 400.
    Only these can name a real user, so only these may start a backfill."""
    if is_did(did_or_handle):
        return did_or_handle
    if is_handle(did_or_handle):
        handle = did_or_handle.lower()
        did = await reader.ask(("handle", handle), lambda con: did_of_handle(con, handle))
        if did is not None:
            return did
    raise HTTPException(status_code=400, detail="Invalid did parameter")
