"""The `discovered_repos` asset: every repo the relay lists for a tracked collection, queued."""

from typing import Any

import dagster as dg

from mirror_assets.defs.resources import MirrorResource
from mirror_assets.runs.discovery import run_discovery

relay = dg.AssetSpec(
    "relay",
    description=(
        "A relay's `com.atproto.sync.listReposByCollection` (RELAY_URL): every repo that "
        "holds a collection."
    ),
    group_name="sources",
    kinds={"http"},
)


@dg.asset(
    name="discovered_repos",
    deps=[relay],
    group_name="mirror",
    kinds={"duckdb"},
    description=(
        "DIDs with records of the tracked collections, as the relay lists them, queued for "
        "backfill (the `backfills` and `discovery_state` tables). Passes resume where they "
        "stopped."
    ),
)
def discovered_repos(mirror: MirrorResource) -> dg.MaterializeResult[None]:
    report = run_discovery(mirror.settings())
    metadata: dict[str, Any] = dict(report.summary())
    metadata["collections"] = dg.MetadataValue.json(
        {p.collection: {"repos": p.repos_listed, "queued": p.dids_queued} for p in report.passes}
    )
    if report.not_discoverable:
        metadata["not_discoverable"] = ", ".join(report.not_discoverable)
    return dg.MaterializeResult(metadata=metadata)
