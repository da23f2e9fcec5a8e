"""The two PDS calls a backfill makes, and what the mirror checks in their answers.

`com.atproto.sync.getLatestCommit` gives the repo's rev before paging starts;
`com.atproto.repo.listRecords` pages a collection newest first. A PDS is untrusted input:
records of another repo or collection are dropped and counted, values that are not JSON
objects too, and a page that repeats the cursor it was asked for ends the listing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec

from mirror_assets.record_time import record_time_us
from mirror_assets.xrpc import XrpcClient

PAGE_LIMIT = 100


class LatestCommit(msgspec.Struct):
    cid: str
    rev: str


class ListedRecord(msgspec.Struct):
    uri: str
    cid: str
    value: msgspec.Raw


class ListRecordsAnswer(msgspec.Struct):
    records: list[ListedRecord]
    cursor: str | None = None


class StuckCursorError(Exception):
    """The PDS answered a page with the cursor it was asked for: paging would never end."""


@dataclass(frozen=True)
class RecordEntry:
    rkey: str
    cid: str
    value: bytes  # the record as JSON, as the PDS sent it
    time_us: int  # when it was made (record_time.py)


@dataclass
class Page:
    """One checked page of a listing, and where the next one starts (None: the listing is
    done; the reference PDS also returns a cursor on a last partial page, so the listing
    ends on the first empty page)."""

    listed: int  # records the PDS sent; 0 ends the listing
    entries: list[RecordEntry]
    next_cursor: str | None
    refused: dict[str, int] = field(default_factory=dict)  # dropped records, by reason
    oversized: bool = False  # more records than asked for (kept: each one was checked)


async def latest_rev(client: XrpcClient, pds: str, did: str) -> str:
    answer = await client.get(
        f"{pds}/xrpc/com.atproto.sync.getLatestCommit", {"did": did}, LatestCommit
    )
    return answer.rev


async def list_records(
    client: XrpcClient, pds: str, did: str, collection: str, cursor: str | None
) -> Page:
    params: dict[str, str | int] = {"repo": did, "collection": collection, "limit": PAGE_LIMIT}
    if cursor is not None:
        params["cursor"] = cursor
    answer = await client.get(f"{pds}/xrpc/com.atproto.repo.listRecords", params, ListRecordsAnswer)
    page = check_page(answer, did, collection, time.time_ns() // 1000)
    if page.listed and cursor is not None and page.next_cursor == cursor:
        raise StuckCursorError(f"{pds} answered cursor {cursor!r} with the same cursor")
    return page


def check_page(answer: ListRecordsAnswer, did: str, collection: str, fetched_us: int) -> Page:
    """Keep the records that belong to the listing asked for, with their times; count the
    rest by reason."""
    page = Page(len(answer.records), [], answer.cursor if answer.records else None)
    page.oversized = len(answer.records) > PAGE_LIMIT
    prefix = f"at://{did}/{collection}/"
    for record in answer.records:
        rkey = record.uri.removeprefix(prefix)
        value = bytes(record.value)
        if rkey == record.uri or not rkey or "/" in rkey:
            reason = "other_repo_or_collection"
        elif not value.startswith(b"{"):
            reason = "not_an_object"
        else:
            time_us = record_time_us(rkey, value, fetched_us)
            page.entries.append(RecordEntry(rkey, record.cid, value, time_us))
            continue
        page.refused[reason] = page.refused.get(reason, 0) + 1
    return page
