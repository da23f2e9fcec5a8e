"""The `recluster` op: puts `record_versions` back in time order (clustering.py), nightly.

It is an op, not an asset: it changes where rows lie, not what they hold. What it did is
recorded as an observation of `records`, so the asset's page shows it beside the ingests.
"""

import dagster as dg

from mirror_assets.analytics.clustering import recluster
from mirror_assets.defs.resources import MirrorResource
from mirror_assets.store.file import FileStore


@dg.op(description="Rewrite the slices of `record_versions` that are out of time order.")
def recluster_records(context: dg.OpExecutionContext, mirror: MirrorResource) -> None:
    report = recluster(FileStore(mirror.settings().db_path))
    context.log.info(
        f"{report.slices_moved} of {report.slices} slices moved ({report.rows_moved} rows) in "
        f"{report.seconds:.1f} s; longest transaction {report.longest_transaction_seconds:.1f} s"
    )
    context.log_event(
        dg.AssetObservation(
            asset_key="records",
            metadata={
                "recluster_slices": report.slices,
                "recluster_slices_moved": report.slices_moved,
                "recluster_rows_moved": report.rows_moved,
                "recluster_seconds": round(report.seconds, 2),
                "recluster_longest_transaction_seconds": round(
                    report.longest_transaction_seconds, 2
                ),
            },
        )
    )
