"""The two PDS calls a backfill makes, and what the mirror checks in their answers.

`com.atproto.sync.getLatestCommit` gives the repo's rev before paging starts;
`com.atproto.repo.listRecords` pages a collection newest first. A PDS is untrusted input
(docs/validation.md): the rev must be a TID, each listed record must belong to the listing
asked for, with a valid record key and CID and a value in the data model, or it is refused
and counted; one bad record never fails its page. A page cursor too long to keep, or one
that repeats the cursor it was asked for, ends the listing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec

from mirror_assets.atproto.data_model import check_record
from mirror_assets.atproto.record_time import record_time_us
from mirror_assets.atproto.refusals import Reason, Refusals, RefusedError
from mirror_assets.atproto.syntax import is_cid, is_record_key, is_tid
from mirror_assets.network.xrpc import XrpcClient

PAGE_LIMIT = 100
MAX_CURSOR_LENGTH = 1024  # a cursor is kept with the backfill and sent back: an rkey is 512


class LatestCommit(msgspec.Struct):
    cid: str
    rev: str


class ListedRecord(msgspec.Struct):
    uri: str
    cid: str
    value: msgspec.Raw


class ListRecordsAnswer(msgspec.Struct):
    # Each record is decoded on its own: one of the wrong shape is refused, not the page.
    records: list[msgspec.Raw]
    cursor: str | None = None


class StuckCursorError(Exception):
    """The PDS answered a page with the cursor it was asked for: paging would never end."""


class RefusedAnswerError(Exception):
    """The PDS's answer breaks the protocol's rules in a way that ends the listing."""

    def __init__(self, refused: RefusedError) -> None:
        super().__init__(refused.detail)
        self.refused = refused


@dataclass(frozen=True)
class RecordEntry:
    rkey: str
    cid: str
    value: bytes  # the record as checked JSON (atproto/data_model.py)
    time_us: int  # when it was made (atproto/record_time.py)


@dataclass
class Page:
    """One checked page of a listing, and where the next one starts (None: the listing is
    done; the reference PDS also returns a cursor on a last partial page, so the listing
    ends on the first empty page)."""

    listed: int  # records the PDS sent; 0 ends the listing
    entries: list[RecordEntry]
    next_cursor: str | None
    refused: Refusals = field(default_factory=Refusals)  # records dropped, by reason
    oversized: bool = False  # more records than asked for (kept: each one was checked)


_listed_record = msgspec.json.Decoder(ListedRecord)


async def latest_rev(client: XrpcClient, pds: str, did: str) -> str:
    answer = await client.get(
        f"{pds}/xrpc/com.atproto.sync.getLatestCommit", {"did": did}, LatestCommit
    )
    if not is_tid(answer.rev):
        # Versions decide between a backfill and live events: a rev that is not a TID could
        # sort after every real one and freeze the records it carries.
        raise RefusedAnswerError(
            RefusedError(Reason.INVALID_REV, f"{pds} gave rev {answer.rev[:100]!r}, not a TID")
        )
    return answer.rev


async def list_records(
    client: XrpcClient, pds: str, did: str, collection: str, cursor: str | None
) -> Page:
    params: dict[str, str | int] = {"repo": did, "collection": collection, "limit": PAGE_LIMIT}
    if cursor is not None:
        params["cursor"] = cursor
    answer = await client.get(f"{pds}/xrpc/com.atproto.repo.listRecords", params, ListRecordsAnswer)
    if answer.cursor is not None and len(answer.cursor) > MAX_CURSOR_LENGTH:
        raise RefusedAnswerError(
            RefusedError(
                Reason.INVALID_CURSOR, f"{pds} gave a cursor of {len(answer.cursor)} characters"
            )
        )
    page = check_page(answer, did, collection, time.time_ns() // 1000, source=pds)
    if page.listed and cursor is not None and page.next_cursor == cursor:
        raise StuckCursorError(f"{pds} answered cursor {cursor!r} with the same cursor")
    return page


def check_page(
    answer: ListRecordsAnswer, did: str, collection: str, fetched_us: int, source: str = ""
) -> Page:
    """Keep the records that belong to the listing asked for and pass the door, with their
    times; count the rest by reason."""
    page = Page(len(answer.records), [], answer.cursor if answer.records else None)
    page.oversized = len(answer.records) > PAGE_LIMIT
    prefix = f"at://{did}/{collection}/"
    for raw in answer.records:
        try:
            page.entries.append(_checked_entry(raw, prefix, fetched_us))
        except RefusedError as refused:
            page.refused.refuse(refused, f"{source} {did} {collection}")
    return page


def _checked_entry(raw: msgspec.Raw, prefix: str, fetched_us: int) -> RecordEntry:
    try:
        record = _listed_record.decode(raw)
    except msgspec.DecodeError as error:
        raise RefusedError(Reason.INVALID, f"a listed record: {error}") from None
    rkey = record.uri.removeprefix(prefix)
    if rkey == record.uri:
        raise RefusedError(Reason.OTHER_REPO_OR_COLLECTION, f"{record.uri[:200]!r}")
    if not is_record_key(rkey):
        raise RefusedError(Reason.INVALID_RKEY, f"{rkey[:100]!r} is not a record key")
    if not is_cid(record.cid):
        raise RefusedError(Reason.INVALID_CID, f"{record.cid[:100]!r} is not a CID")
    value = check_record(bytes(record.value))
    return RecordEntry(rkey, record.cid, value, record_time_us(rkey, value, fetched_us))
