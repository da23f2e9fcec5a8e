"""A page of `/records`: live records, newest first, in stable keyset pages; with `?did=`,
one user's, whose backfill the first page asks for and waits for, up to a bound."""

from __future__ import annotations

from litestar.exceptions import HTTPException

from mirror_api.dependencies import Services
from mirror_api.queries import did_of_handle, records_page
from mirror_api.reader import MirrorReader
from mirror_api.schemas import BackfillState, RecordsPage
from mirror_assets.atproto.syntax import is_did, is_handle


async def page_of_records(
    services: Services,
    collection: str,
    size: int,
    after: tuple[int, str] | None,
    did_or_handle: str | None,
) -> RecordsPage:
    """`size` records of the collection after the position `after` (None: the newest)."""
    did: str | None = None
    state: BackfillState | None = None
    if did_or_handle is not None:
        did = await _resolve_did(services.reader, did_or_handle)
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
