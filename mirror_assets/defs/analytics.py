"""The analytics assets, tables of the same file rebuilt after every ingest cycle (they run in
the `ingest` job, after `records`): the summaries behind `/users` and `/stats`, and the daily
activity per collection."""

from collections.abc import Iterator

import dagster as dg

from mirror_assets.analytics.activity import roll_up_activity
from mirror_assets.analytics.summaries import rebuild_summaries
from mirror_assets.defs.backfill import did_backfill
from mirror_assets.defs.ingest import records
from mirror_assets.defs.resources import MirrorResource
from mirror_assets.store.choice import open_store

ANALYTICS = "analytics"


@dg.multi_asset(
    name="collection_summaries",
    specs=[
        dg.AssetSpec(
            "user_counts",
            deps=[records, did_backfill],
            group_name=ANALYTICS,
            kinds={"duckdb", "table"},
            description=(
                "The user ranking per collection: live records per (collection, DID), most "
                "first. The data behind `/users/{collection}`."
            ),
        ),
        dg.AssetSpec(
            "collection_stats",
            deps=[records, did_backfill],
            group_name=ANALYTICS,
            kinds={"duckdb", "table"},
            description=(
                "Per collection: distinct users, live records, first and last record time. "
                "The data behind `/stats/{collection}`."
            ),
        ),
    ],
)
def collection_summaries(mirror: MirrorResource) -> Iterator[dg.MaterializeResult[None]]:
    counts, _ = open_store(mirror.settings()).transact(rebuild_summaries)
    yield dg.MaterializeResult(
        asset_key="user_counts", metadata={"dagster/row_count": counts.user_rows}
    )
    yield dg.MaterializeResult(
        asset_key="collection_stats", metadata={"dagster/row_count": counts.collections}
    )


@dg.asset(
    name="daily_activity",
    deps=[records, did_backfill],
    group_name=ANALYTICS,
    kinds={"duckdb", "table"},
    description=(
        "Creates, updates and deletes per collection and UTC day, from the log every apply "
        "transaction writes; `backfilled_creates` are the creates a backfill found (dated by "
        "the record's own time)."
    ),
)
def daily_activity(mirror: MirrorResource) -> dg.MaterializeResult[None]:
    counts, _ = open_store(mirror.settings()).transact(roll_up_activity)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": counts.days,
            "collections": counts.collections,
            "first_day": counts.first_day or "none",
            "last_day": counts.last_day or "none",
        }
    )
