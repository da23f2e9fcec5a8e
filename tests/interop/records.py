"""Records the scenarios write: two tracked collections, one untracked, varied JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.interop.pds_client import Account, PdsClient

CARD = "app.blento.card"
PAGE = "app.blento.page"
UNTRACKED = "app.other.thing"
# A link and bytes must come back from the firehose as the PDS's JSON writes them.
LINK = {"$link": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"}


def record(collection: str, n: int, **fields: Any) -> dict[str, Any]:
    return {
        "$type": collection,
        "title": f"{collection} number {n}",
        "n": n,
        "tags": ["interop", f"n{n % 7}"],
        "nested": {"even": n % 2 == 0, "link": LINK, "bytes": {"$bytes": "aW50ZXJvcA"}},
        "createdAt": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        **fields,
    }


def create_many(pds: PdsClient, account: Account, collection: str, count: int) -> list[str]:
    """`count` records, written 200 to a commit with applyWrites; their rkeys, oldest first."""
    before = {r.uri for r in pds.list_records(account.did, collection)}
    for start in range(0, count, 200):
        writes = [
            {
                "$type": "com.atproto.repo.applyWrites#create",
                "collection": collection,
                "value": record(collection, n),
            }
            for n in range(start, min(count, start + 200))
        ]
        pds.apply_writes(account, writes)
    listed = pds.list_records(account.did, collection)
    return sorted(r.uri.rsplit("/", 1)[1] for r in listed if r.uri not in before)
