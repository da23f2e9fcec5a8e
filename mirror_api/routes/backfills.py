"""`GET /backfill/{collection}/{did}`: how one user's backfill of a collection stands."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.params import FromPath

from mirror_api.dependencies import Services
from mirror_api.errors import require_tracked
from mirror_api.queries import backfill_state
from mirror_api.schemas import BackfillState
from mirror_assets.atproto.syntax import is_did


class BackfillController(Controller):
    path = "/backfill"

    @get("/{collection:str}/{did:str}", summary="A user's backfill")
    async def backfill(
        self,
        collection: FromPath[str],
        did: FromPath[str],
        services: NamedDependency[Services],
    ) -> BackfillState:
        require_tracked(collection, services.settings.collections)
        if not is_did(did):  # did:plc or did:web, in their exact syntax (services/records.py)
            raise HTTPException(status_code=400, detail="Invalid did parameter")
        return await services.reader.ask(
            ("backfill", collection, did), lambda con: backfill_state(con, collection, did)
        )
