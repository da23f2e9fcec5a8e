"""How the API asks Dagster for a backfill: the webserver's GraphQL API, never the file.

`?did=` on `/records` must start the DID's backfill when it is not complete (docs/
api.md) while the API itself never writes the DuckDB file (docs/architecture.md). So it does what
an operator in the UI would: add the DID's `dids` partition and launch a `backfill` run of
that partition, with the collection asked for. The run goes through the run queue like any
other, under the same writer tag.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from mirror_assets.names import (
    BACKFILL_JOB,
    DID_BACKFILL,
    DIDS,
    LOCATION,
    PARTITION_TAG,
    REPOSITORY,
    REQUESTED_BY_API,
    REQUESTED_BY_TAG,
    RESTART_COLLECTIONS,
    WRITER_TAG,
)

log = logging.getLogger(__name__)

# A run in one of these holds a place in the run queue, or waits for one.
IN_FLIGHT_STATUSES = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")

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


_RUNS_IN_FLIGHT = """
query RunsInFlight($filter: RunsFilter!) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { count }
    ... on InvalidPipelineRunsFilterError { message }
    ... on PythonError { message }
  }
}
"""

_RUN_STATUS = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status }
    ... on RunNotFoundError { message }
    ... on PythonError { message }
  }
}
"""

_PARTITION_THERE = ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError")


class DagsterRequestError(RuntimeError):
    """Dagster could not be reached or refused the request."""


class DagsterClient:
    """A small GraphQL client for the two mutations and the two queries the API needs."""

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
            if added["__typename"] not in _PARTITION_THERE:
                raise DagsterRequestError(f"adding partition {did}: {added}")
            params = {
                "selector": {**repository, "jobName": BACKFILL_JOB},
                "runConfigData": {
                    "ops": {DID_BACKFILL: {"config": {RESTART_COLLECTIONS: [collection]}}}
                },
                "executionMetadata": {
                    "tags": [
                        {"key": PARTITION_TAG, "value": did},
                        {"key": WRITER_TAG, "value": BACKFILL_JOB},
                        {"key": REQUESTED_BY_TAG, "value": REQUESTED_BY_API},
                    ]
                },
            }
            launched = await self._call(client, _LAUNCH_RUN, {"params": params}, "launchRun")
        if launched["__typename"] != "LaunchRunSuccess":
            raise DagsterRequestError(f"launching the backfill of {did}: {launched}")
        run_id: str = launched["run"]["runId"]
        log.info("asked Dagster to backfill %s %s: run %s", did, collection, run_id)
        return run_id

    async def backfills_in_flight(self) -> int:
        """How many runs the API asked for are queued, starting or running."""
        tags = [{"key": REQUESTED_BY_TAG, "value": REQUESTED_BY_API}]
        runs_filter = {"tags": tags, "statuses": list(IN_FLIGHT_STATUSES)}
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            runs = await self._call(client, _RUNS_IN_FLIGHT, {"filter": runs_filter}, "runsOrError")
        if runs["__typename"] != "Runs":
            raise DagsterRequestError(f"counting the API's runs: {runs}")
        return int(runs["count"])

    async def run_in_flight(self, run_id: str) -> bool:
        """Whether the run is queued, starting or running (not ended, not unknown)."""
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            run = await self._call(client, _RUN_STATUS, {"runId": run_id}, "runOrError")
        if run["__typename"] == "RunNotFoundError":
            return False
        if run["__typename"] != "Run":
            raise DagsterRequestError(f"the status of run {run_id}: {run}")
        return run.get("status") in IN_FLIGHT_STATUSES

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
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            raise DagsterRequestError(f"{self.graphql_url}: {errors}")
        data = body.get("data") if isinstance(body, dict) else None
        result = data.get(field) if isinstance(data, dict) else None
        if not isinstance(result, dict) or "__typename" not in result:
            raise DagsterRequestError(f"{self.graphql_url}: unexpected answer {body!r:.300}")
        return result
