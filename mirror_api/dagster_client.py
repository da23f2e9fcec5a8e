"""How the API asks Dagster for a backfill: the webserver's GraphQL API, never the file.

`?did=` on `/records` must start the DID's backfill when it is not complete (DESIGN
section 8) while the API itself never writes the DuckDB file (section 2). So it does what
an operator in the UI would: add the DID's `dids` partition and launch a `backfill` run of
that partition, with the collection asked for. The run goes through the run queue like any
other, under the same writer tag.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

log = logging.getLogger(__name__)

LOCATION = "mirror"  # workspace.yaml's location_name
REPOSITORY = "__repository__"  # the repository a `Definitions` object makes
BACKFILL_JOB = "backfill"
DIDS = "dids"
WRITER_TAG = "mirror/writer"

_ADD_PARTITION = """
mutation AddPartition($repository: RepositorySelector!, $partitions: String!, $key: String!) {
  addDynamicPartition(
    repositorySelector: $repository, partitionsDefName: $partitions, partitionKey: $key
  ) {
    __typename
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}
"""

_LAUNCH_RUN = """
mutation LaunchRun($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""


_PARTITION_THERE = ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError")


class DagsterRequestError(RuntimeError):
    """Dagster could not be reached or refused the request."""


class DagsterClient:
    """A small GraphQL client for the two mutations the API needs."""

    def __init__(self, graphql_url: str, timeout: float = 10.0) -> None:
        self.graphql_url = graphql_url
        self._timeout = timeout

    async def launch_backfill(self, did: str, collection: str) -> str:
        """Add the DID's partition (if new) and launch its backfill run; return the run id."""
        repository = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            added = await self._call(
                client,
                _ADD_PARTITION,
                {"repository": repository, "partitions": DIDS, "key": did},
                "addDynamicPartition",
            )
            if added["__typename"] not in (
                "AddDynamicPartitionSuccess",
                "DuplicateDynamicPartitionError",
            ):
                raise DagsterRequestError(f"adding partition {did}: {added}")
            params = {
                "selector": {**repository, "jobName": BACKFILL_JOB},
                "runConfigData": {
                    "ops": {"did_backfill": {"config": {"restart_collections": [collection]}}}
                },
                "executionMetadata": {
                    "tags": [
                        {"key": "dagster/partition", "value": did},
                        {"key": WRITER_TAG, "value": BACKFILL_JOB},
                        {"key": "mirror/requested_by", "value": "api"},
                    ]
                },
            }
            launched = await self._call(client, _LAUNCH_RUN, {"params": params}, "launchRun")
        if launched["__typename"] != "LaunchRunSuccess":
            raise DagsterRequestError(f"launching the backfill of {did}: {launched}")
        run_id: str = launched["run"]["runId"]
        log.info("asked Dagster to backfill %s %s: run %s", did, collection, run_id)
        return run_id

    async def _call(
        self, client: httpx.AsyncClient, query: str, variables: dict[str, Any], field: str
    ) -> dict[str, Any]:
        try:
            response = await client.post(
                self.graphql_url, json={"query": query, "variables": variables}
            )
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as error:
            raise DagsterRequestError(f"{self.graphql_url}: {error}") from None
        if body.get("errors"):
            raise DagsterRequestError(f"{self.graphql_url}: {body['errors']}")
        result: dict[str, Any] = body["data"][field]
        return result
