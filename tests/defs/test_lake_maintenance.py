"""The lake's housekeeping assets on a real lake: a day's worth of small commits in
miniature, then the hourly job: fewer files, snapshots expired, old files gone from the data
path, the data unchanged; and the checks that warn when housekeeping falls behind."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from mirror_assets.config import LAKE_PREFIX, LakeLimits, LakeLocation, Settings
from mirror_assets.defs.lake import LAKE_ASSETS, LAKE_CHECKS
from mirror_assets.defs.resources import MirrorResource
from mirror_assets.model.apply import apply_batch
from mirror_assets.store.lake import LakeStore
from tests.support.dagster_helpers import metadata_of
from tests.support.events_factory import create, delete, did
from tests.support.store_helpers import batch_of, snapshot

pytestmark = pytest.mark.lake

COMMITS = 12


def _small_commits(store: LakeStore, commits: int = COMMITS) -> None:
    """Commits of a few records each, some replacing or deleting earlier ones: the files,
    delete files and snapshots minute ingests leave."""
    for n in range(commits):
        events = [create(did(f"user{n}x{k}"), f"r{k}", rev=n + 1, t=n + 1) for k in range(15)]
        if n:
            events.append(delete(did(f"user{n - 1}x0"), "r0", rev=n + 2, t=n + 1))
        store.transact(lambda con, events=events: apply_batch(con, batch_of(events)))


def _settings(lake: LakeLocation, limits: LakeLimits) -> Settings:
    return Settings(store=LAKE_PREFIX + lake.catalog, data_path=lake.data_path, lake_limits=limits)


def _files(lake: LakeLocation) -> int:
    return sum(1 for path in Path(lake.data_path).rglob("*.parquet"))


def test_housekeeping_leaves_fewer_files_and_snapshots_and_the_same_data(
    lake: LakeLocation, instance: dg.DagsterInstance
) -> None:
    store = LakeStore(lake)
    _small_commits(store)
    before, files_before = snapshot(store), _files(lake)
    limits = LakeLimits(keep_snapshot_hours=0.0, small_files_warn=10_000)
    mirror = MirrorResource.from_settings(_settings(lake, limits))

    result = dg.materialize(
        [*LAKE_ASSETS, *LAKE_CHECKS], resources={"mirror": mirror}, instance=instance
    )
    assert result.success
    done = {
        event.asset_key.to_user_string(): metadata_of(event)
        for event in result.get_asset_materialization_events()
        for event in [event.event_specific_data.materialization]  # type: ignore[union-attr]
    }
    assert done["lake_flushed_inlines"]["tables_flushed"] >= 1
    assert done["lake_compacted_files"]["files_written"] >= 1
    assert done["lake_compacted_files"]["data_files"] < done["lake_flushed_inlines"]["data_files"]
    assert done["lake_expired_snapshots"]["snapshots_expired"] >= COMMITS
    assert done["lake_expired_snapshots"]["snapshots"] <= 2
    assert done["lake_deleted_files"]["files_deleted"] >= COMMITS
    assert _files(lake) < files_before / 4
    assert (
        _files(lake)
        == done["lake_deleted_files"]["data_files"] + (done["lake_deleted_files"]["delete_files"])
    )
    assert snapshot(store) == before
    checks = {check.check_name: check.passed for check in result.get_asset_check_evaluations()}
    assert checks == {"few_small_files": True, "snapshots_expire": True}
    store.close()


def test_the_checks_warn_when_housekeeping_falls_behind(
    lake: LakeLocation, instance: dg.DagsterInstance
) -> None:
    store = LakeStore(lake)
    _small_commits(store, 3)
    store.close()
    # Small files are all there is (none reaches 4 MiB): over a bound of one, compaction
    # cannot help. And with snapshots kept for a negative time, the slack alone remains.
    limits = LakeLimits(small_files_warn=1, keep_snapshot_hours=-2.5)
    mirror = MirrorResource.from_settings(_settings(lake, limits))
    result = dg.materialize(
        [*LAKE_ASSETS, *LAKE_CHECKS],
        resources={"mirror": mirror},
        instance=instance,
        selection=dg.AssetSelection.checks(*LAKE_CHECKS),
    )
    evaluations = {check.check_name: check for check in result.get_asset_check_evaluations()}
    assert evaluations["few_small_files"].passed is False
    assert evaluations["few_small_files"].severity == dg.AssetCheckSeverity.WARN
    assert metadata_of(evaluations["few_small_files"])["small_files"] > 1
    assert evaluations["snapshots_expire"].passed is False
    assert metadata_of(evaluations["snapshots_expire"])["oldest_snapshot_hours"] >= 0
