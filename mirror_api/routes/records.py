"""`GET /records/{collection}`: live records, newest first, in stable keyset pages."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery

from mirror_api.dependencies import Services
from mirror_api.errors import require_tracked
from mirror_api.paging import parse_limit
from mirror_api.schemas import RecordsPage
from mirror_api.services.records import page_of_records


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
        return await page_of_records(services, collection, size, after, did)
