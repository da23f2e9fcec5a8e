"""The backfill sensor and the range runs it launches, on a real Dagster instance.

`plan_ranges` and `busy_keys` are checked alone first; then the sensor is evaluated against a
temporary instance and a real DuckDB file, and the runs it asks for are executed in process
against the PLC/PDS stand-in, so each step sees what the one before it left behind.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mirror_assets.atproto.events import CursorGap
from mirror_assets.atproto.nsids import CollectionFilter
from mirror_assets.config import BackfillLimits, Settings
from mirror_assets.defs.definitions import build_definitions
from mirror_assets.defs.resources import MirrorResource
from mirror_assets.defs.sensors import (
    RANGE_END,
    RANGE_START,
    backfill_sensor,
    busy_keys,
    plan_ranges,
)
from mirror_assets.model.backfills import claim, queue
from mirror_assets.names import BACKFILL_JOB, DIDS, PARTITION_TAG
from mirror_assets.store.file import FileStore
from tests.support.atproto_server import GET_LATEST_COMMIT, LIST_RECORDS, AtprotoStandIn
from tests.support.dagster_helpers import add_run, metadata_of
from tests.support.events_factory import CARD, at, numbered_did
from tests.support.store_helpers import apply_events

BACKFILL = dg.AssetKey("did_backfill")
NO_NETWORK = "http://127.0.0.1:9"  # for tests that only evaluate the sensor
plc = numbered_did  # the n-th resolvable did:plc; plc(a) < plc(b) iff a < b


def mirror_for(tmp_path: Path, url: str, dids_per_run: int = 10, **limits: Any) -> MirrorResource:
    return MirrorResource.from_settings(
        Settings(
            collections=CollectionFilter.parse(CARD),
            db_path=tmp_path / "mirror.duckdb",
            plc_url=url,
            relay_url=url,
            allow_private_network=True,
            backfill=BackfillLimits(
                http_backoff_seconds=0.01,
                dids_per_run=dids_per_run,
                **limits,
            ),
        )
    )


def db_of(mirror: MirrorResource) -> Path:
    return Path(mirror.db_path)


def queue_dids(mirror: MirrorResource, dids: Sequence[str]) -> None:
    """Queue a card backfill for each DID, in one transaction (as discovery or ingest would)."""
    with FileStore(db_of(mirror)).writing() as tx:
        assert queue(tx.con, [(did, CARD) for did in dids]) == len(dids)


def evaluate(
    instance: dg.DagsterInstance, mirror: MirrorResource
) -> dg.SensorResult | dg.SkipReason:
    context = dg.build_sensor_context(instance=instance, resources={"mirror": mirror})
    result = backfill_sensor(context)
    assert isinstance(result, dg.SensorResult | dg.SkipReason), result
    return result


def launched(result: dg.SensorResult | dg.SkipReason) -> list[tuple[str, str]]:
    """The (start, end) of each run asked for; every request carries exactly the range tags."""
    assert isinstance(result, dg.SensorResult), result
    ranges = []
    for request in result.run_requests or []:
        assert isinstance(request, dg.RunRequest)
        assert set(request.tags) == {RANGE_START, RANGE_END}, request.tags
        assert request.partition_key is None
        ranges.append((request.tags[RANGE_START], request.tags[RANGE_END]))
    return ranges


def added(result: dg.SensorResult | dg.SkipReason) -> list[list[str]]:
    """The keys of each dynamic-partitions request, in order; all of them add to `dids`."""
    assert isinstance(result, dg.SensorResult), result
    batches = []
    for request in result.dynamic_partitions_requests or []:
        assert isinstance(request, dg.AddDynamicPartitionsRequest), request
        assert request.partitions_def_name == DIDS
        batches.append(list(request.partition_keys))
    return batches


def apply_partitions(instance: dg.DagsterInstance, result: dg.SensorResult | dg.SkipReason) -> None:
    """What the sensor daemon does with the result's partition requests."""
    for keys in added(result):
        instance.add_dynamic_partitions(DIDS, keys)


def in_flight_run(
    instance: dg.DagsterInstance, tags: dict[str, str], status: dg.DagsterRunStatus
) -> dg.DagsterRun:
    """A backfill run the instance holds as queued or running, as the daemon leaves it."""
    return add_run(instance, BACKFILL_JOB, status, tags)


def range_tags(start: str, end: str) -> dict[str, str]:
    return {RANGE_START: start, RANGE_END: end}


def execute(
    instance: dg.DagsterInstance, mirror: MirrorResource, tags: dict[str, str]
) -> dg.ExecuteInProcessResult:
    job = build_definitions(mirror).resolve_job_def(BACKFILL_JOB)
    result = job.execute_in_process(instance=instance, tags=tags)
    assert result.success
    return result


def statuses(mirror: MirrorResource) -> dict[str, str]:
    with FileStore(db_of(mirror)).reading() as con:
        rows = con.execute("SELECT did, status FROM backfills WHERE collection = ?", [CARD])
        return dict(rows.fetchall())


def skip_message(result: dg.SensorResult | dg.SkipReason) -> str:
    assert isinstance(result, dg.SkipReason), result
    return result.skip_message or ""


# -- plan_ranges and busy_keys ---------------------------------------------------------------

KEYS = [f"k{n:02d}" for n in range(20)]


def keys_of(*numbers: int) -> set[str]:
    return {KEYS[n] for n in numbers}


def test_contiguous_wanted_keys_make_one_range() -> None:
    assert plan_ranges(KEYS, keys_of(3, 4, 5, 6), set(), 10, 2) == [("k03", "k06")]
    assert plan_ranges(KEYS, set(KEYS), set(), 20, 2) == [("k00", "k19")]
    assert plan_ranges(KEYS, keys_of(7), set(), 10, 2) == [("k07", "k07")]


@pytest.mark.parametrize(
    ("per_run", "expected"),
    [
        (1, [("k00", "k00"), ("k01", "k01"), ("k02", "k02")]),
        (3, [("k00", "k02"), ("k03", "k05"), ("k06", "k08")]),
        (4, [("k00", "k03"), ("k04", "k07"), ("k08", "k09")]),
        (10, [("k00", "k09")]),
        (11, [("k00", "k09")]),
    ],
)
def test_a_range_spans_at_most_per_run_keys(per_run: int, expected: list[tuple[str, str]]) -> None:
    assert plan_ranges(KEYS, keys_of(*range(10)), set(), per_run, 3) == expected


def test_busy_keys_split_ranges_and_are_never_inside_one() -> None:
    wanted = keys_of(0, 1, 2, 4, 5, 7)
    busy = keys_of(3, 6)
    assert plan_ranges(KEYS, wanted, busy, 10, 5) == [
        ("k00", "k02"),
        ("k04", "k05"),
        ("k07", "k07"),
    ]
    # A key both wanted and busy is not launched (a run in flight has it).
    assert plan_ranges(KEYS, keys_of(0, 1, 2), keys_of(1), 10, 5) == [
        ("k00", "k00"),
        ("k02", "k02"),
    ]
    # Busy keys between wanted keys that are not wanted themselves still split.
    assert plan_ranges(KEYS, keys_of(0, 9), keys_of(5), 20, 5) == [("k00", "k00"), ("k09", "k09")]
    assert plan_ranges(KEYS, set(), keys_of(1, 2), 10, 5) == []
    assert plan_ranges(KEYS, keys_of(4), set(KEYS) - keys_of(4), 10, 5) == [("k04", "k04")]


@pytest.mark.parametrize(
    ("max_runs", "expected"),
    [
        (-1, []),
        (0, []),
        (1, [("k00", "k01")]),
        (2, [("k00", "k01"), ("k03", "k04")]),
        (3, [("k00", "k01"), ("k03", "k04"), ("k06", "k07")]),
        (9, [("k00", "k01"), ("k03", "k04"), ("k06", "k07")]),
    ],
)
def test_max_runs_caps_the_ranges(max_runs: int, expected: list[tuple[str, str]]) -> None:
    wanted = keys_of(0, 1, 3, 4, 6, 7)
    assert plan_ranges(KEYS, wanted, keys_of(2, 5), 10, max_runs) == expected


def test_keys_not_wanted_may_sit_inside_a_range_but_never_start_or_end_one() -> None:
    # k01 and k02 are not due (done, or waiting for a retry): a run may carry them along.
    assert plan_ranges(KEYS, keys_of(0, 3, 5), set(), 10, 2) == [("k00", "k05")]
    # They count towards the span, and a range never ends on one.
    assert plan_ranges(KEYS, keys_of(0, 3, 5, 9), set(), 4, 5) == [
        ("k00", "k03"),
        ("k05", "k05"),
        ("k09", "k09"),
    ]
    assert plan_ranges(KEYS, keys_of(2, 3), set(), 10, 2) == [("k02", "k03")]


def test_no_keys_no_ranges() -> None:
    assert plan_ranges([], set(), set(), 10, 2) == []
    assert plan_ranges(KEYS, set(), set(), 10, 2) == []
    assert busy_keys([], KEYS) == set()
    assert busy_keys([range_tags("k00", "k03")], []) == set()


def test_busy_keys_are_the_ranges_and_single_partitions_of_runs_in_flight() -> None:
    runs = [
        range_tags("k02", "k04"),
        {PARTITION_TAG: "k10"},
        range_tags("k15", "k15"),
        {"mirror/writer": "backfill"},  # no partitions named: covers nothing
        range_tags("k18", "gone"),  # an end the instance no longer has: not guessed at
    ]
    assert busy_keys(runs, KEYS) == keys_of(2, 3, 4, 10, 15)
    # A single partition counts even if it is not among the keys the sensor looks at.
    assert busy_keys([{PARTITION_TAG: "did:plc:elsewhere"}], KEYS) == {"did:plc:elsewhere"}


def test_plan_ranges_keeps_its_promises_on_random_inputs() -> None:
    rng = random.Random(7)
    for _ in range(500):
        keys = KEYS[: rng.randint(0, len(KEYS))]
        wanted = {k for k in keys if rng.random() < 0.6}
        busy = {k for k in keys if rng.random() < 0.2}
        per_run, max_runs = rng.randint(1, 6), rng.randint(0, 4)
        ranges = plan_ranges(keys, wanted - busy, busy, per_run, max_runs)
        context = (keys, wanted, busy, per_run, max_runs, ranges)
        assert len(ranges) <= max_runs, context
        covered: list[int] = []
        for start, end in ranges:
            a, b = keys.index(start), keys.index(end)
            assert a <= b and b - a + 1 <= per_run, context
            assert start in wanted - busy and end in wanted - busy, context
            assert not busy & set(keys[a : b + 1]), context
            assert not covered or a > covered[-1], context  # ordered, disjoint
            covered.extend(range(a, b + 1))
        if len(ranges) < max_runs:  # room left: every launchable key is launched
            assert wanted - busy <= {keys[i] for i in covered}, context


# -- the backfill sensor -----------------------------------------------------------------------


def test_sensor_skips_when_nothing_is_due(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    mirror = mirror_for(tmp_path, NO_NETWORK)
    assert skip_message(evaluate(instance, mirror)) == (
        "0 DIDs due, 0 backfill runs in flight covering 0"
    )
    assert instance.get_dynamic_partitions(DIDS) == []


def test_sensor_adds_partitions_and_launches_ranges_around_runs_in_flight(
    tmp_path: Path, instance: dg.DagsterInstance, net: AtprotoStandIn
) -> None:
    dids = [plc(n) for n in range(25)]
    for did in dids:
        net.add_account(did)
        net.create_records(did, CARD, 2)
    mirror = mirror_for(tmp_path, net.url, dids_per_run=10)
    queue_dids(mirror, dids)
    assert mirror.settings().backfill.runs == 2  # BACKFILL_RUNS' default

    first = evaluate(instance, mirror)
    assert added(first) == [dids]
    assert launched(first) == [(dids[0], dids[9]), (dids[10], dids[19])]
    apply_partitions(instance, first)
    assert instance.get_dynamic_partitions(DIDS) == dids
    started = dg.DagsterRunStatus.STARTED
    run_a = in_flight_run(instance, range_tags(dids[0], dids[9]), dg.DagsterRunStatus.QUEUED)
    run_b = in_flight_run(instance, range_tags(dids[10], dids[19]), started)

    # Both slots are taken, and nothing new is due: nothing to ask for.
    assert skip_message(evaluate(instance, mirror)) == (
        "25 DIDs due, 2 backfill runs in flight covering 20"
    )

    # Run A dies before doing anything: its DIDs are launched again (first in key order),
    # never B's, which is still in flight.
    instance.report_run_failed(run_a)
    again = evaluate(instance, mirror)
    assert added(again) == []
    assert launched(again) == [(dids[0], dids[9])]
    execute(instance, mirror, range_tags(dids[0], dids[9]))
    assert instance.get_materialized_partitions(BACKFILL) == set(dids[:10])

    # A's DIDs are done; B still holds 10..19: only the rest is launched.
    rest = evaluate(instance, mirror)
    assert added(rest) == []
    assert launched(rest) == [(dids[20], dids[24])]
    run_c = in_flight_run(instance, range_tags(dids[20], dids[24]), started)
    assert skip_message(evaluate(instance, mirror)) == (
        "15 DIDs due, 2 backfill runs in flight covering 15"
    )

    # Nothing in flight any more: everything still due is launched, in ranges of ten at most.
    instance.report_run_failed(run_b)
    instance.report_run_failed(run_c)
    last = evaluate(instance, mirror)
    assert launched(last) == [(dids[10], dids[19]), (dids[20], dids[24])]
    for start, end in launched(last):
        execute(instance, mirror, range_tags(start, end))

    assert instance.get_materialized_partitions(BACKFILL) == set(dids)
    assert statuses(mirror) == dict.fromkeys(dids, "complete")
    assert skip_message(evaluate(instance, mirror)) == (
        "0 DIDs due, 0 backfill runs in flight covering 0"
    )


def test_sensor_adds_partitions_in_batches_of_ten_thousand(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    dids = [plc(n) for n in range(10_005)]
    mirror = mirror_for(tmp_path, NO_NETWORK, dids_per_run=200)
    queue_dids(mirror, dids)

    first = evaluate(instance, mirror)
    assert added(first) == [dids[:10_000], dids[10_000:]]
    assert launched(first) == [(dids[0], dids[199]), (dids[200], dids[399])]

    apply_partitions(instance, first)
    assert instance.get_dynamic_partitions(DIDS) == dids
    second = evaluate(instance, mirror)  # no run was created: the same ranges, nothing to add
    assert added(second) == []
    assert launched(second) == [(dids[0], dids[199]), (dids[200], dids[399])]


def test_ranges_follow_the_order_of_the_partitions_not_of_the_names(
    tmp_path: Path, instance: dg.DagsterInstance, net: AtprotoStandIn
) -> None:
    mirror = mirror_for(tmp_path, net.url)
    early, later = [plc(10), plc(11)], [plc(2), plc(1)]
    queue_dids(mirror, early)
    apply_partitions(instance, evaluate(instance, mirror))
    # Queued after, one at a time: added after, longest waiting first, whatever their names.
    for did in later:
        queue_dids(mirror, [did])

    result = evaluate(instance, mirror)
    assert added(result) == [later]
    assert launched(result) == [(plc(10), plc(1))]
    apply_partitions(instance, result)
    assert instance.get_dynamic_partitions(DIDS) == [*early, *later]
    # Dagster reads the range in the same order: the run covers all four DIDs (the stand-in
    # does not know them, so each ends `not_found`, which counts as done).
    execute(instance, mirror, range_tags(plc(10), plc(1)))
    assert instance.get_materialized_partitions(BACKFILL) == {*early, *later}


def test_the_registered_sensor_targets_the_backfill_job(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    mirror = mirror_for(tmp_path, NO_NETWORK)
    queue_dids(mirror, [plc(0), plc(1)])
    defs = build_definitions(mirror)
    sensor = defs.resolve_sensor_def("backfill_sensor")
    assert sensor.job_name == BACKFILL_JOB
    context = dg.build_sensor_context(
        instance=instance, resources={"mirror": mirror}, repository_def=defs.get_repository_def()
    )
    data = sensor.evaluate_tick(context)
    [request] = data.run_requests or []
    assert request.tags == {
        RANGE_START: plc(0),
        RANGE_END: plc(1),
        "dagster/sensor_name": "backfill_sensor",
    }
    assert [list(r.partition_keys) for r in data.dynamic_partitions_requests or []] == [
        [plc(0), plc(1)]
    ]


def test_sensor_never_adds_a_did_that_cannot_be_a_partition_key(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    mirror = mirror_for(tmp_path, NO_NETWORK)
    odd = "did:web:a...b.example"  # a valid DID, but `...` is Dagster's range separator
    queue_dids(mirror, [plc(0), odd])
    result = evaluate(instance, mirror)
    assert added(result) == [[plc(0)]]
    assert launched(result) == [(plc(0), plc(0))]


def test_a_single_partition_run_in_flight_is_busy_and_takes_a_slot(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    dids = [plc(n) for n in range(5)]
    mirror = mirror_for(tmp_path, NO_NETWORK)
    queue_dids(mirror, dids)
    instance.add_dynamic_partitions(DIDS, dids)
    # `mirror backfill DID` runs one partition, tagged `dagster/partition`.
    single = in_flight_run(instance, {PARTITION_TAG: dids[2]}, dg.DagsterRunStatus.STARTED)
    assert launched(evaluate(instance, mirror)) == [(dids[0], dids[1])]

    instance.report_run_failed(single)
    assert launched(evaluate(instance, mirror)) == [(dids[0], dids[4])]


def test_a_range_run_materializes_the_dids_it_finished(
    tmp_path: Path, instance: dg.DagsterInstance, net: AtprotoStandIn
) -> None:
    ok, many, broken, unknown, last = (plc(n) for n in range(5))
    for did, count in ((ok, 3), (many, 150), (last, 2)):
        net.add_account(did)
        net.create_records(did, CARD, count)
    # `broken`'s PDS answers 500 to every attempt; `unknown` is not in the directory.
    with AtprotoStandIn() as bad_pds:
        net.add_account(broken, pds_url=bad_pds.url)
        bad_pds.add_account(broken)
        bad_pds.create_records(broken, CARD, 4)
        bad_pds.fail(GET_LATEST_COMMIT, 500, times=3)
        mirror = mirror_for(tmp_path, net.url, http_attempts=3)
        queue_dids(mirror, [ok, many, broken, unknown, last])
        apply_partitions(instance, evaluate(instance, mirror))

        result = execute(instance, mirror, range_tags(ok, last))
        assert bad_pds.count(GET_LATEST_COMMIT) == 3
        assert bad_pds.count(LIST_RECORDS) == 0

    assert result.dagster_run.tags[RANGE_START] == ok
    assert result.dagster_run.tags[RANGE_END] == last
    assert instance.get_materialized_partitions(BACKFILL) == {ok, many, unknown, last}
    materialized = result.asset_materializations_for_node("did_backfill")
    assert sorted(m.partition or "" for m in materialized) == sorted([ok, many, unknown, last])
    [observation] = result.asset_observations_for_node("did_backfill")
    metadata = metadata_of(observation)
    assert observation.partition is None
    assert metadata["dids"] == 5
    assert metadata["listings"] == 5
    assert metadata["pages"] == 2 + 3 + 2  # each listing ends on an empty page
    assert metadata["records_listed"] == 155
    assert metadata["rows_upserted"] == 155
    assert metadata["listings_completed"] == 3
    assert metadata["ended_failed"] == 1
    assert metadata["ended_not_found"] == 1
    assert metadata["dids_done"] == 4
    assert set(metadata["errors_sample"]) == {f"{broken} {CARD}", f"{unknown} {CARD}"}
    assert statuses(mirror) == {
        ok: "complete",
        many: "complete",
        broken: "failed",
        unknown: "not_found",
        last: "complete",
    }
    with FileStore(db_of(mirror)).reading() as con:
        counts = dict(con.execute("SELECT did, count(*) FROM records GROUP BY did").fetchall())
    assert counts == {ok: 3, many: 150, last: 2}

    # The failure waits for its retry delay; once that has passed, it alone is launched.
    assert skip_message(evaluate(instance, mirror)) == (
        "0 DIDs due, 0 backfill runs in flight covering 0"
    )
    with FileStore(db_of(mirror)).writing() as tx:
        tx.con.execute(
            "UPDATE backfills SET next_attempt_at = now() - INTERVAL 1 SECOND WHERE did = ?",
            [broken],
        ).fetchall()
    assert launched(evaluate(instance, mirror)) == [(broken, broken)]


def test_a_stale_claim_is_launched_again_once_no_run_covers_it(
    tmp_path: Path, instance: dg.DagsterInstance, net: AtprotoStandIn
) -> None:
    dids = [plc(n) for n in range(3)]
    for did in dids:
        net.add_account(did)
        net.create_records(did, CARD, 2)
    mirror = mirror_for(tmp_path, net.url)
    queue_dids(mirror, dids)
    apply_partitions(instance, evaluate(instance, mirror))
    execute(instance, mirror, range_tags(dids[0], dids[2]))
    # A later run claimed dids[1] (a restart of its listing) and its process died.
    with FileStore(db_of(mirror)).writing() as tx:
        tx.con.execute("UPDATE backfills SET status = 'pending' WHERE did = ?", [dids[1]])
        tasks = claim(tx.con, [dids[1]], CollectionFilter.parse(CARD))
        assert [task.did for task in tasks] == [dids[1]]
    assert statuses(mirror)[dids[1]] == "in_progress"

    dead = in_flight_run(instance, {PARTITION_TAG: dids[1]}, dg.DagsterRunStatus.STARTED)
    assert skip_message(evaluate(instance, mirror)) == (
        "1 DIDs due, 1 backfill runs in flight covering 1"
    )

    instance.report_run_failed(dead)  # run monitoring notices the dead process
    relaunch = evaluate(instance, mirror)
    assert added(relaunch) == []
    assert launched(relaunch) == [(dids[1], dids[1])]
    execute(instance, mirror, range_tags(dids[1], dids[1]))
    assert statuses(mirror) == dict.fromkeys(dids, "complete")


def test_a_cursor_gap_launches_every_backfill_again(
    tmp_path: Path, instance: dg.DagsterInstance, net: AtprotoStandIn
) -> None:
    dids = [plc(n) for n in range(4)]
    for did in dids[:3]:
        net.add_account(did)
        net.create_records(did, CARD, 3)
    net.add_account(dids[3])
    net.tombstone_did(dids[3])
    mirror = mirror_for(tmp_path, net.url)
    queue_dids(mirror, dids)
    apply_partitions(instance, evaluate(instance, mirror))
    execute(instance, mirror, range_tags(dids[0], dids[3]))
    assert statuses(mirror) == {**dict.fromkeys(dids[:3], "complete"), dids[3]: "tombstoned"}
    assert instance.get_materialized_partitions(BACKFILL) == set(dids)
    assert isinstance(evaluate(instance, mirror), dg.SkipReason)

    # A live batch finds the stream skipped ahead: any DID may have changed unseen.
    apply_events(db_of(mirror), [], gaps=[CursorGap("ws://jetstream.test", at(0), at(900))])
    assert statuses(mirror) == {**dict.fromkeys(dids[:3], "pending"), dids[3]: "tombstoned"}

    again = evaluate(instance, mirror)
    assert added(again) == []
    assert launched(again) == [(dids[0], dids[2])]
    pages_before = net.count(LIST_RECORDS)
    execute(instance, mirror, range_tags(dids[0], dids[2]))
    assert net.count(LIST_RECORDS) - pages_before == 3 * 2  # a new pass of each listing
    assert statuses(mirror) == {**dict.fromkeys(dids[:3], "complete"), dids[3]: "tombstoned"}
    assert isinstance(evaluate(instance, mirror), dg.SkipReason)
