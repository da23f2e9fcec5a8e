"""The `records` asset: the live mirror, brought up to date from Jetstream by one ingest cycle."""

from typing import Any

import dagster as dg

from mirror_assets.defs.resources import MirrorResource
from mirror_assets.runs.ingest import IngestReport, run_ingest

NEW_DIDS_SHOWN = 20

jetstream = dg.AssetSpec(
    "jetstream",
    description=(
        "Bluesky's Jetstream: creates, updates and deletes of the tracked collections, and "
        "account and identity events of every DID (JETSTREAM_URLS)."
    ),
    group_name="sources",
    kinds={"websocket"},
)


@dg.asset(
    name="records",
    deps=[jetstream],
    group_name="mirror",
    kinds={"duckdb"},
    description=(
        "One row per live record of the tracked collections (the `records` view of the "
        "DuckDB file), applied from Jetstream in rev order, with tombstones for deletes."
    ),
)
def records(
    context: dg.AssetExecutionContext, mirror: MirrorResource
) -> dg.MaterializeResult[None]:
    report = run_ingest(mirror.settings())
    context.log.info(describe(report))
    for gap in range(report.applied.gaps):
        context.log.warning(f"cursor gap {gap + 1}: events were lost; see the ingest_gaps table")
    return dg.MaterializeResult(metadata=ingest_metadata(report))


def ingest_metadata(report: IngestReport) -> dict[str, Any]:
    """Run metadata: every number of the report, plus a sample of the new DIDs."""
    metadata: dict[str, Any] = {
        key: value for key, value in report.summary().items() if value is not None
    }
    metadata["new_dids_sample"] = dg.MetadataValue.json(report.applied.new_dids[:NEW_DIDS_SHOWN])
    # One example per refusal reason: a new kind of hostile input shows here, not only in logs.
    metadata["refusal_samples"] = dg.MetadataValue.json(report.stats.refused.samples)
    return metadata


def describe(report: IngestReport) -> str:
    """One line for logs and the CLI."""
    s = report.summary()
    return (
        f"read {s['frames']} frames in {s['seconds']} s ({s['stop_reason']}), "
        f"refused {s['refused']}; "
        f"upserted {s['rows_upserted']}, tombstoned {s['rows_tombstoned']}, "
        f"stale {s['rows_stale']}, purged {s['rows_purged']}; "
        f"{s['new_dids']} new DIDs; cursor {s['cursor_before']} -> {s['cursor_after']} "
        f"(lag {s['lag_seconds']} s)"
    )
