"""`user_counts` and `collection_stats`: the summaries behind `/users` and `/stats`, rebuilt
after every ingest cycle (they run in the `ingest` job, after `records`)."""

from collections.abc import Iterator

import dagster as dg

from mirror_assets.backfill_asset import did_backfill
from mirror_assets.records_asset import records
from mirror_assets.resources import MirrorResource
from mirror_assets.store import Store
from mirror_assets.summaries import rebuild_summaries


@dg.multi_asset(
    name="collection_summaries",
    specs=[
        dg.AssetSpec(
            "user_counts",
            deps=[records, did_backfill],
            group_name="analytics",
            kinds={"duckdb"},
            description=(
                "Live records per (collection, DID), most first: the data behind "
                "`/users/{collection}`."
            ),
        ),
        dg.AssetSpec(
            "collection_stats",
            deps=[records, did_backfill],
            group_name="analytics",
            kinds={"duckdb"},
            description=(
                "Users, records and the newest record time per collection: the data behind "
                "`/stats/{collection}`."
            ),
        ),
    ],
)
def collection_summaries(mirror: MirrorResource) -> Iterator[dg.MaterializeResult[None]]:
    with Store(mirror.settings().db_path).writing() as tx:
        counts = rebuild_summaries(tx.con)
    yield dg.MaterializeResult(
        asset_key="user_counts", metadata={"dagster/row_count": counts.user_rows}
    )
    yield dg.MaterializeResult(
        asset_key="collection_stats", metadata={"dagster/row_count": counts.collections}
    )
