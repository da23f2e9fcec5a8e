"""The `parquet_exports` asset: a Parquet snapshot of each tracked collection, on a schedule."""

import dagster as dg

from mirror_assets.analytics.exports import export_parquet
from mirror_assets.defs.ingest import records
from mirror_assets.defs.resources import MirrorResource


@dg.asset(
    name="parquet_exports",
    deps=[records],
    group_name="exports",
    kinds={"parquet"},
    description=(
        "Each tracked collection's live records as `{EXPORT_DIR}/collection={nsid}/"
        "records.parquet`, for DuckDB, Polars or pandas without touching the live file."
    ),
)
def parquet_exports(mirror: MirrorResource) -> dg.MaterializeResult[None]:
    report = export_parquet(mirror.settings())
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": sum(e.rows for e in report.exports),
            "folder": dg.MetadataValue.path(str(mirror.settings().export_dir.absolute())),
            "collections": dg.MetadataValue.json(
                {
                    e.collection: {"rows": e.rows, "bytes": e.bytes, "seconds": round(e.seconds, 2)}
                    for e in report.exports
                }
            ),
            "removed": ", ".join(report.removed) or "none",
        }
    )
