"""The API's reader: answers kept per version of the store, within a bound of bytes, and
recomputed after every write."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from mirror_api import reader as reader_module
from mirror_api.reader import MirrorReader
from mirror_api.sources import file as file_source
from mirror_api.sources.file import FileSource
from mirror_assets.store.contract import MirrorStore
from mirror_assets.store.lock import write_lock
from tests.support.api_helpers import open_files_of, reader_of
from tests.support.events_factory import create, did
from tests.support.store_helpers import apply_events

ALICE = did("alice")


def _counter(calls: list[str], name: str) -> Callable[[duckdb.DuckDBPyConnection], int]:
    """A question that counts the records, noting each time it is actually asked."""

    def count_records(con: duckdb.DuckDBPyConnection) -> int:
        calls.append(name)
        return int(con.execute("SELECT count(*) FROM mirror.records").fetchall()[0][0])

    return count_records


def test_a_question_is_answered_once_per_version_of_the_store(store: MirrorStore) -> None:
    apply_events(store, [create(ALICE, "a1", rev=1, t=1)])
    reader, calls = reader_of(store), list[str]()

    assert reader.query("count", _counter(calls, "first")) == 1
    assert reader.query("count", _counter(calls, "again")) == 1
    assert calls == ["first"]  # the second answer came from memory
    assert reader.query("other", _counter(calls, "other")) == 1
    assert calls == ["first", "other"]

    apply_events(store, [create(ALICE, "a2", rev=2, t=2)])
    assert reader.query("count", _counter(calls, "after the write")) == 2
    assert calls == ["first", "other", "after the write"]
    reader.close()


def _sized(calls: list[str], name: str, size: int) -> Callable[[duckdb.DuckDBPyConnection], str]:
    """A question whose answer is a string of JSON `size` bytes long, noting each time it
    is actually asked."""

    def answer(con: duckdb.DuckDBPyConnection) -> str:
        calls.append(name)
        return "x" * (size - 2)  # and its two quotes

    return answer


def test_the_answers_kept_are_bounded_by_their_bytes(tmp_path: Path) -> None:
    db = tmp_path / "mirror.duckdb"
    apply_events(db, [create(ALICE, "a1", rev=1, t=1)])
    reader, calls = MirrorReader(FileSource(db), cache_bytes=100), list[str]()
    for key in ("a", "b"):
        reader.query(key, _sized(calls, key, 40))
    assert reader.kept_bytes == 80
    reader.query("a", _sized(calls, "a again", 40))  # kept: now the most recently used
    reader.query("c", _sized(calls, "c", 40))  # 120 bytes do not fit: "b" goes
    assert reader.kept_bytes == 80
    assert calls == ["a", "b", "c"]
    reader.query("b", _sized(calls, "b again", 40))
    reader.query("c", _sized(calls, "c again", 40))
    assert calls == ["a", "b", "c", "b again"]  # "b" was computed again, "c" was kept
    assert reader.kept_bytes == 80
    reader.close()


def test_an_answer_larger_than_the_bound_is_served_but_not_kept(tmp_path: Path) -> None:
    db = tmp_path / "mirror.duckdb"
    apply_events(db, [create(ALICE, "a1", rev=1, t=1)])
    reader, calls = MirrorReader(FileSource(db), cache_bytes=100), list[str]()
    reader.query("small", _sized(calls, "small", 60))
    assert reader.query("huge", _sized(calls, "huge", 101)) == "x" * 99
    assert reader.kept_bytes == 60  # the small one stays; the huge one was not kept
    reader.query("huge", _sized(calls, "huge again", 101))
    reader.query("small", _sized(calls, "small again", 60))
    assert calls == ["small", "huge", "huge again"]
    reader.close()


def test_a_write_lets_go_of_every_kept_answer(store: MirrorStore) -> None:
    apply_events(store, [create(ALICE, "a1", rev=1, t=1)])
    reader, calls = reader_of(store, cache_bytes=1000), list[str]()
    for key in ("a", "b", "c"):
        reader.query(key, _sized(calls, key, 100))
    assert reader.kept_bytes == 300
    apply_events(store, [create(ALICE, "a2", rev=2, t=2)])
    reader.query("d", _sized(calls, "d", 100))
    assert reader.kept_bytes == 100
    reader.close()


def test_the_answers_kept_are_bounded_in_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny answers (an unknown handle's `null`) are bounded by their number: each kept one
    costs its key and objects besides its bytes."""
    monkeypatch.setattr(reader_module, "MAX_KEPT_ANSWERS", 2)
    db = tmp_path / "mirror.duckdb"
    apply_events(db, [create(ALICE, "a1", rev=1, t=1)])
    reader, calls = MirrorReader(FileSource(db)), list[str]()
    for key in ("a", "b", "c", "a"):
        reader.query(key, _counter(calls, key))
    assert calls == ["a", "b", "c", "a"]  # "a" was the least recently used, and went
    reader.query("c", _counter(calls, "c again"))
    assert calls[-1] == "a"
    reader.close()


def test_before_the_file_exists_an_empty_mirror_answers(tmp_path: Path) -> None:
    db = tmp_path / "mirror.duckdb"
    reader, calls = MirrorReader(FileSource(db)), list[str]()
    assert reader.query("count", _counter(calls, "empty")) == 0
    assert not db.exists()  # the API never creates the file
    apply_events(db, [create(ALICE, "a1", rev=1, t=1)])
    assert reader.query("count", _counter(calls, "file")) == 1
    reader.close()


def test_the_file_stays_attached_between_close_requests_and_a_writer_ends_that(
    tmp_path: Path,
) -> None:
    db = tmp_path / "mirror.duckdb"
    apply_events(db, [create(ALICE, "a1", rev=1, t=1)])
    reader, calls = MirrorReader(FileSource(db)), list[str]()
    reader.query("first", _counter(calls, "first"))
    assert open_files_of(db) == [str(db)]  # kept attached for the next request
    reader.query("second", _counter(calls, "second"))
    # A writer that comes meanwhile gets the file within a few polls, not after the linger.
    waited = time.monotonic()
    with write_lock(db, timeout=file_source.LINGER_SECONDS / 2):
        assert open_files_of(db) == []
    assert time.monotonic() - waited < file_source.LINGER_SECONDS
    apply_events(db, [create(ALICE, "a2", rev=2, t=2)])
    # The next request attaches the file again and sees the write.
    assert reader.query("third", _counter(calls, "third")) == 2
    deadline = time.monotonic() + file_source.LINGER_SECONDS + 5
    while open_files_of(db) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert open_files_of(db) == []  # let go once idle
    reader.close()


def test_the_same_question_asked_at_once_is_computed_once_per_version(tmp_path: Path) -> None:
    db = tmp_path / "mirror.duckdb"
    apply_events(db, [create(ALICE, "a1", rev=1, t=1)])
    reader, calls = MirrorReader(FileSource(db)), list[str]()
    count = _counter(calls, "count")

    def slowly(con: duckdb.DuckDBPyConnection) -> int:
        time.sleep(0.3)  # long enough for every caller to ask before the answer is kept
        return count(con)

    async def everyone_asks() -> list[int]:
        return await asyncio.gather(*(reader.ask("count", slowly) for _ in range(8)))

    assert asyncio.run(everyone_asks()) == [1] * 8
    assert calls == ["count"]
    apply_events(db, [create(ALICE, "a2", rev=2, t=2)])
    assert asyncio.run(everyone_asks()) == [2] * 8  # a new version: asked anew, once
    assert calls == ["count", "count"]
    reader.close()
