"""`GET /users/{collection}`: users by record count, most first, in stable keyset pages."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery

from mirror_api.dependencies import Services
from mirror_api.errors import require_tracked
from mirror_api.paging import parse_limit
from mirror_api.queries import users_page
from mirror_api.schemas import UsersPage


class UsersController(Controller):
    path = "/users"

    @get("/{collection:str}", summary="Users of a collection")
    async def users(
        self,
        collection: FromPath[str],
        services: NamedDependency[Services],
        limit: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
    ) -> UsersPage:
        require_tracked(collection, services.settings.collections)
        size, after = parse_limit(limit), services.cursors.decode(cursor, "users")
        rows = await services.reader.ask(
            ("users", collection, size, after),
            lambda con: users_page(con, collection, size + 1, after),
        )
        page, more = rows[:size], len(rows) > size
        next_cursor = None
        if more:
            next_cursor = services.cursors.encode("users", page[-1].record_count, page[-1].did)
        return UsersPage(page, next_cursor)
