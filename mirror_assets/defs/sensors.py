"""Sensors: launch backfills of the DIDs that need one, discovery of new collections, and
checks of identities that changed.

The backfill sensor reads which DIDs are due from the store (seen live, discovered, failed
and due for a retry, marked for resync after a cursor gap, or claimed by a run that died),
adds the new ones as `dids` partitions, and launches runs that each cover a range of
partitions, never one that overlaps a run still in flight.
"""

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

import dagster as dg

from mirror_assets.atproto.syntax import is_did
from mirror_assets.defs.backfill import dids
from mirror_assets.defs.jobs import (
    backfill_job,
    discovery_job,
    identities_job,
    in_flight,
)
from mirror_assets.defs.resources import MirrorResource
from mirror_assets.model.accounts import stale_identities
from mirror_assets.model.backfills import due_dids
from mirror_assets.names import BACKFILL_JOB, DIDS, DISCOVERY_JOB, IDENTITIES_JOB, PARTITION_TAG
from mirror_assets.runs.discovery import never_completed
from mirror_assets.store.choice import open_store

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
MAX_KEYS_PER_REQUEST = 10_000  # Dagster adds dynamic partitions in batches of at most this


@dg.sensor(
    job=backfill_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds DIDs that need a backfill as partitions and launches range runs.",
)
def backfill_sensor(
    context: dg.SensorEvaluationContext, mirror: MirrorResource
) -> dg.SensorResult | dg.SkipReason:
    settings = mirror.settings()
    with open_store(settings).reading() as con:
        # A file written before DIDs were checked at the door may hold others; a strict DID
        # never holds `...`, Dagster's range separator.
        due = [did for did in due_dids(con) if is_did(did)]
    known = context.instance.get_dynamic_partitions(DIDS)
    known_set = set(known)
    new = [did for did in due if did not in known_set]
    keys = [*known, *new]  # the partitions' order once the new ones are added
    runs = in_flight(context.instance, BACKFILL_JOB)
    busy = busy_keys((run.tags for run in runs), keys)
    slots = settings.backfill.runs - len(runs)  # BACKFILL_RUNS, across every machine
    ranges = plan_ranges(keys, set(due) - busy, busy, settings.backfill.dids_per_run, slots)
    if not new and not ranges:
        return dg.SkipReason(
            f"{len(due)} DIDs due, {len(runs)} backfill runs in flight covering {len(busy)}"
        )
    return dg.SensorResult(
        run_requests=[dg.RunRequest(tags={RANGE_START: a, RANGE_END: b}) for a, b in ranges],
        dynamic_partitions_requests=[
            dids.build_add_request(new[i : i + MAX_KEYS_PER_REQUEST])
            for i in range(0, len(new), MAX_KEYS_PER_REQUEST)
        ],
    )


def busy_keys(run_tags: Iterable[Mapping[str, str]], keys: Sequence[str]) -> set[str]:
    """The partitions runs in flight cover: their range, or their single partition."""
    position = {key: i for i, key in enumerate(keys)}
    busy: set[str] = set()
    for tags in run_tags:
        if PARTITION_TAG in tags:
            busy.add(str(tags[PARTITION_TAG]))
        start = position.get(str(tags.get(RANGE_START)))
        end = position.get(str(tags.get(RANGE_END)))
        if start is not None and end is not None:
            busy.update(keys[start : end + 1])
    return busy


def plan_ranges(
    keys: Sequence[str], wanted: set[str], busy: set[str], per_run: int, max_runs: int
) -> list[tuple[str, str]]:
    """Contiguous ranges of `keys` that cover the wanted keys, at most `per_run` keys long,
    never crossing a busy key (a run would claim that key's work a second time)."""
    ranges: list[tuple[str, str]] = []
    start = last = -1
    for i, key in enumerate(keys):
        if len(ranges) >= max_runs:
            break
        if start >= 0 and (key in busy or (key in wanted and i - start >= per_run)):
            ranges.append((keys[start], keys[last]))
            start = -1
        if key in wanted and key not in busy:
            start = i if start < 0 else start
            last = i
    if start >= 0 and len(ranges) < max_runs:
        ranges.append((keys[start], keys[last]))
    return ranges


@dg.sensor(
    job=discovery_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Runs discovery when a tracked collection has no complete pass on the relay.",
)
def discovery_sensor(
    context: dg.SensorEvaluationContext, mirror: MirrorResource
) -> dg.RunRequest | dg.SkipReason:
    settings = mirror.settings()
    with open_store(settings).reading() as con:
        new = never_completed(con, settings)
    if not new:
        return dg.SkipReason("every tracked collection has a complete pass on the relay")
    if in_flight(context.instance, DISCOVERY_JOB):
        return dg.SkipReason(f"a discovery run is in flight; new collections: {new}")
    # One try per hour at most: a relay that cannot be reached is not hammered.
    hour = datetime.now(UTC).strftime("%Y-%m-%dT%H")
    return dg.RunRequest(run_key=f"{settings.relay_url} {','.join(new)} {hour}")


@dg.sensor(
    job=identities_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Checks identities again (PDS, handle) once identity events have marked them.",
)
def identity_sensor(
    context: dg.SensorEvaluationContext, mirror: MirrorResource
) -> dg.RunRequest | dg.SkipReason:
    with open_store(mirror.settings()).reading() as con:
        marked = len(stale_identities(con, 1))
    if not marked:
        return dg.SkipReason("no identity is marked for a check")
    if in_flight(context.instance, IDENTITIES_JOB):
        return dg.SkipReason("an identities run is in flight")
    return dg.RunRequest()
