"""The API's memory stays bounded while a client walks thousands of distinct pages of large
records (docs/api.md, "Fast answers"): the kept answers are bounded by API_CACHE_BYTES.

`mirror api` runs as a real process over a real file of 2,000 records of about 20 KB; its
resident set (VmRSS) is read after every page. Keeping every page a walk reads (as an
answer cache bounded only by the number of answers does) costs about 25 KB a record as
JSON, ten times that as decoded Python objects: hundreds of MB within a few hundred pages.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import httpx
import msgspec
import pytest

from mirror_api.queries import records_page
from mirror_api.reader import MirrorReader
from mirror_api.sources.file import FileSource
from mirror_assets.store.file import FileStore
from tests.support.api_helpers import ApiProcess, resident_bytes, serve_api, store_rows
from tests.support.events_factory import CARD, at, did

RECORDS = 2_000
ITEMS_PER_RECORD = 800  # about 20 KB of JSON a record
CACHE_BYTES = 2 * 1024 * 1024
# Growth of the resident set allowed once the file has been read through once: the kept
# answers (2 MiB), the pages in flight and the allocator's slack, measured at about 12 MB.
# Less than the default bound (64 MiB), so a process that ignored API_CACHE_BYTES fails
# too; far less than keeping what the walk reads (about 600 MB of JSON).
MARGIN_BYTES = 40 * 1024 * 1024
RECORDS_PER_LIMIT = 250  # each limit from 1 to 100 walks this far: about 1,300 pages
MiB = 1024 * 1024


class _Page(msgspec.Struct):
    """A `/records` answer, its records left undecoded (the test only walks)."""

    records: list[msgspec.Raw]
    cursor: str | None = None


def _record(n: int) -> str:
    items = [{"i": i, "t": f"w{n}x{i}"} for i in range(ITEMS_PER_RECORD)]
    return json.dumps({"$type": CARD, "text": f"card {n}", "items": items})


@pytest.fixture(scope="module")
def large_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("large") / "mirror.duckdb"
    FileStore(db).init()
    store_rows(
        db,
        [did(f"user{n % 50}") for n in range(RECORDS)],
        [_record(n) for n in range(RECORDS)],
        [at(n) for n in range(RECORDS)],
        compressed=False,
    )
    return db


def _page(client: httpx.Client, limit: int, cursor: str | None) -> _Page:
    params: dict[str, str | int] = {"limit": limit}
    if cursor is not None:
        params["cursor"] = cursor
    response = client.get(f"/records/{CARD}", params=params)
    assert response.status_code == 200, response.text[:300]
    return msgspec.json.decode(response.content, type=_Page)


def _read_through(client: httpx.Client) -> int:
    """Walk every record once, 100 a page, so the file's blocks are all in memory; the
    number of records read."""
    page, read = _page(client, 100, None), 0
    while True:
        read += len(page.records)
        if page.cursor is None:
            return read
        page = _page(client, 100, page.cursor)


def test_memory_stays_bounded_over_thousands_of_distinct_pages(
    large_file: Path, tmp_path: Path
) -> None:
    with (
        serve_api(large_file, tmp_path / "api.log", API_CACHE_BYTES=str(CACHE_BYTES)) as api,
        httpx.Client(base_url=api.base_url, timeout=30) as client,
    ):
        assert _read_through(client) == RECORDS
        settled = resident_bytes(api.process.pid)
        pages, peak = _walk_every_limit(client, api, settled)
    print(f"\n{pages} pages: resident {settled / MiB:.0f} MiB settled, {peak / MiB:.0f} at most")
    assert pages >= 1_000


def _walk_every_limit(client: httpx.Client, api: ApiProcess, settled: int) -> tuple[int, int]:
    """For each limit from 1 to 100, RECORDS_PER_LIMIT records page by page: every page is
    a distinct question (limit, cursor). The resident set is read after each page, and the
    walk stops at the first that is past the margin. Returns the pages and the peak."""
    pages, peak = 0, settled
    for limit in range(1, 101):
        cursor, read = None, 0
        while read < RECORDS_PER_LIMIT:
            page = _page(client, limit, cursor)
            pages, read = pages + 1, read + len(page.records)
            peak = max(peak, resident_bytes(api.process.pid))
            assert peak - settled <= MARGIN_BYTES, (
                f"the API grew by {(peak - settled) / MiB:.0f} MiB after {pages} distinct "
                f"pages (limit {limit}); kept answers are bounded by {CACHE_BYTES / MiB} MiB"
            )
            if page.cursor is None:
                break
            cursor = page.cursor
    return pages, peak


def test_kept_bytes_never_exceed_the_bound(large_file: Path) -> None:
    """In the process: over hundreds of distinct pages of large records, what the reader
    keeps stays within its bound, and it does keep pages (the bound is not zero)."""
    reader = MirrorReader(FileSource(large_file), cache_bytes=CACHE_BYTES)
    most = 0
    try:
        for limit in range(1, 101):
            after: tuple[int, str] | None = None
            for _ in range(3):
                key = ("records", CARD, limit, after)
                page = partial(records_page, collection=CARD, limit=limit, after=after, did=None)
                rows = reader.query(key, page)
                assert reader.kept_bytes <= CACHE_BYTES
                most = max(most, reader.kept_bytes)
                after = (rows[-1].time_us, rows[-1].uri)
    finally:
        reader.close()
    assert most > CACHE_BYTES // 2, f"the reader kept at most {most} bytes"
