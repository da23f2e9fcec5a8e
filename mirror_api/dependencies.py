"""What the handlers need from the application, as one dependency: Litestar resolves several
dependencies of a handler concurrently, in a task group per request, which costs more than
the handler itself when its answer is already kept."""

from __future__ import annotations

from dataclasses import dataclass

from mirror_api.paging import Cursors
from mirror_api.reader import MirrorReader
from mirror_api.services.backfill_trigger import BackfillTrigger
from mirror_assets.config import Settings


@dataclass(frozen=True)
class Services:
    settings: Settings
    reader: MirrorReader
    backfills: BackfillTrigger
    cursors: Cursors
