"""The `did_backfill` asset: one dynamic partition per DID, materialized when its history is in.

A run covers a range of partitions (DIDs); it materializes the partitions of DIDs whose
every listing is complete (or ended by the repository), so the partition view in the UI
shows which DIDs are done. DIDs left unfinished (failed, paused by the time budget) stay
unmaterialized and the sensor launches them again.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from mirror_assets.defs.discovery import discovered_repos
from mirror_assets.defs.ingest import records
from mirror_assets.defs.resources import MirrorResource
from mirror_assets.names import DID_BACKFILL, DIDS
from mirror_assets.runs.backfill import BackfillReport, run_backfill

dids = dg.DynamicPartitionsDefinition(name=DIDS)
ERRORS_SHOWN = 20

pds = dg.AssetSpec(
    "pds",
    description=(
        "Each user's PDS (found through PLC_URL or did:web): `com.atproto.repo.listRecords` "
        "of the tracked collections."
    ),
    group_name="sources",
    kinds={"http"},
)


class BackfillConfig(dg.Config):
    """Collections to list anew for every DID of the run, even if complete (`mirror backfill`)."""

    restart_collections: list[str] = []  # noqa: RUF012 (pydantic copies the default)


@dg.asset(
    name=DID_BACKFILL,
    deps=[pds, records, discovered_repos],
    partitions_def=dids,
    # One run takes a range of DIDs: thousands of DIDs must not mean thousands of processes.
    backfill_policy=dg.BackfillPolicy.single_run(),
    output_required=False,
    group_name="mirror",
    kinds={"duckdb"},
    description=(
        "Each DID's history of the tracked collections, paged from its PDS into the "
        "`records` table (resumable; newer live versions and deletes always win)."
    ),
)
def did_backfill(
    context: dg.AssetExecutionContext, config: BackfillConfig, mirror: MirrorResource
) -> Iterator[dg.AssetMaterialization | dg.AssetObservation]:
    keys = context.partition_keys
    restart = [(did, collection) for did in keys for collection in config.restart_collections]
    report = run_backfill(mirror.settings(), keys, restart)
    context.log.info(describe(report))
    for key, error in list(report.errors.items())[:ERRORS_SHOWN]:
        context.log.warning(f"{key}: {error}")
    # The run's numbers, once; then each finished DID's partition.
    yield dg.AssetObservation(asset_key=context.asset_key, metadata=backfill_metadata(report))
    for did in report.done_dids:
        yield dg.AssetMaterialization(asset_key=context.asset_key, partition=did)


def backfill_metadata(report: BackfillReport) -> dict[str, Any]:
    metadata: dict[str, Any] = dict(report.summary())
    metadata["dids_done"] = len(report.done_dids)
    metadata["errors_sample"] = dg.MetadataValue.json(
        dict(list(report.errors.items())[:ERRORS_SHOWN])
    )
    # One example per refusal reason: what a PDS sent that the door refused.
    metadata["refusal_samples"] = dg.MetadataValue.json(report.refused.samples)
    return metadata


def describe(report: BackfillReport) -> str:
    """One line for logs and the CLI."""
    s = report.summary()
    ended = ", ".join(f"{status} {n}" for status, n in sorted(report.ended.items())) or "none"
    return (
        f"{s['dids']} DIDs, {s['listings']} listings: {s['pages']} pages, "
        f"{s['records_listed']} records listed, {s['rows_upserted']} rows written, "
        f"{s['rows_removed']} removed; {s['listings_completed']} complete, "
        f"{s['listings_paused']} paused, ended: {ended}; {len(report.done_dids)} DIDs done "
        f"in {s['seconds']} s"
    )
