"""The names Dagster knows the mirror by: its code location, jobs, partitions and tags.

The definitions (`defs/`) are built with them, the operator's commands (`ops/`) launch runs
with them, and the API asks Dagster for backfills over GraphQL with them, without importing
Dagster. `dagster.yaml` limits runs by the writer tag and job names; a test holds it to
these.
"""

LOCATION = "mirror"  # workspace.yaml's location_name
REPOSITORY = "__repository__"  # the repository a `Definitions` object makes

# Jobs. Each one that writes the file carries WRITER_TAG with its own name.
INGEST_JOB = "ingest"
BACKFILL_JOB = "backfill"
DISCOVERY_JOB = "discovery"
IDENTITIES_JOB = "identities"
CHECKS_JOB = "checks"
EXPORT_JOB = "export"
RECLUSTER_JOB = "recluster"
HISTORY_JOB = "history"
LAKE_MAINTENANCE_JOB = "lake_maintenance"

WRITER_TAG = "mirror/writer"
REQUESTED_BY_TAG = "mirror/requested_by"  # on every run the API launches, with "api"
REQUESTED_BY_API = "api"
PARTITION_TAG = "dagster/partition"

# The backfill asset: one dynamic partition per DID, and the config that restarts listings.
DID_BACKFILL = "did_backfill"
DIDS = "dids"
RESTART_COLLECTIONS = "restart_collections"
