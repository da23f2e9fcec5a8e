"""Many writers on one DuckLake at once, and a writer killed mid-transaction, with real
processes only (the lake keeps writers apart by its transactions, `store/lake.py`).

1. Two backfill processes (`run_backfill`, each over DIDs of its own on the PDS stand-in)
   and one ingest process (`run_ingest`, reading a scripted Jetstream stand-in: creates,
   updates, deletes, replays, a duplicate frame, account and identity events, and live
   commits for the DIDs being backfilled) start writing one lake at the same moment. The
   lake must then hold exactly the state the scenario leads to (computed here from the
   scenario, whatever order the writers committed in), one row per key, and two
   `mirror api` processes over the lake must serve it: `/records` walked page by page on
   each (they came up before the writes, so what they kept of the empty lake must give
   way), and a cursor made by one works on the other.
2. A process that commits batches in a loop through `LakeStore.transact` is SIGKILLed at
   a random moment inside a transaction (once while it writes, twice after its writes,
   in COMMIT or a re-run), three times, while a second writer keeps committing beside
   it. After each kill the lake holds every batch the killed writer reported committed,
   all of each batch or none of it (the one it was in may have committed before it
   could say so), and a new writer goes on from there; at the end both writers' batches
   are all there, exactly.

The writers are this module run as a child (`child(argv)`): settings from the
environment (MIRROR_STORE, MIRROR_DATA_PATH, ...), the lake opened, then a start signal,
so that all of them write at once; each notes its transactions (wall-clock span, attempts:
a conflict makes `LakeStore.transact` run it again) for the report.
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO, TypeVar

import duckdb
import httpx
import pytest

from mirror_assets.config import LAKE_PREFIX, LakeLocation, Settings
from mirror_assets.model.apply import ApplyResult, apply_batch
from mirror_assets.model.batch import EventBatch
from mirror_assets.runs.backfill import run_backfill
from mirror_assets.runs.ingest import run_ingest
from mirror_assets.store.contract import Transaction
from mirror_assets.store.lake import LakeStore
from tests.support.api_helpers import ApiProcess, newest_first, serve_api
from tests.support.atproto_server import AtprotoStandIn
from tests.support.events_factory import (
    BASE_US,
    CARD,
    PAGE,
    Event,
    RecordRow,
    TombstoneRow,
    account,
    at,
    cid_of,
    did,
    identity,
    record_body,
    rev_tid,
)
from tests.support.jetstream_server import JetstreamServer
from tests.support.store_helpers import Snapshot, batch_of, snapshot

pytestmark = pytest.mark.lake

ROOT = Path(__file__).resolve().parents[2]
TRACKED = f"{CARD},{PAGE}"
UNTRACKED = "app.bsky.feed.like"
CURSOR_KEY = "lake-concurrency-test-key-" + "0123456789abcdef" * 2  # shared by both APIs
START_SECONDS = 60.0  # a child's imports and ATTACH, on a loaded 2-core machine
RUN_SECONDS = 90.0  # a writer's whole run, at most
CHILD = "import sys; from tests.store.test_lake_concurrency import child; child(sys.argv[1:])"

R = TypeVar("R")
Span = tuple[float, float, int]  # a transaction: wall-clock start and end, attempts


# -- the writer processes ----------------------------------------------------------------------


class ObservedLake(LakeStore):
    """The lake store, noting each transaction: its wall-clock span (comparable between
    processes) and how many attempts it took (each attempt after the first followed a
    conflict with another writer)."""

    def __init__(self, lake: LakeLocation) -> None:
        super().__init__(lake)
        self.attempts = 0
        self.spans: list[Span] = []

    @contextmanager
    def writing(self) -> Iterator[Transaction]:
        self.attempts += 1
        with super().writing() as tx:
            yield tx

    def transact(self, write: Callable[[duckdb.DuckDBPyConnection], R]) -> tuple[R, float]:
        started, attempts = time.time(), self.attempts
        try:
            return super().transact(write)
        finally:
            self.spans.append((started, time.time(), self.attempts - attempts))


def child(argv: list[str]) -> None:
    """A writer process: `<role> <spec.json>`. Opens the lake the environment names, says
    it is ready, waits for the start signal (a file, which may add to the spec), runs its
    role, and writes what it did."""
    role, spec_path = argv
    spec: dict[str, Any] = json.loads(Path(spec_path).read_text())
    settings = Settings.from_env(env_file=None)
    assert settings.lake is not None, "MIRROR_STORE does not name a lake"
    store = ObservedLake(settings.lake)
    store.cursor_us()  # attach now: the start signal is about writing, not opening
    Path(spec["ready"]).touch()
    deadline = time.monotonic() + START_SECONDS
    while not Path(spec["go"]).exists():
        if time.monotonic() > deadline:
            sys.exit("no start signal")
        time.sleep(0.005)
    spec |= json.loads(Path(spec["go"]).read_text() or "{}")  # what the signal adds
    result: dict[str, Any] = {"started": time.time()}
    if role == "backfill":
        pairs = [(d, c) for d in spec["dids"] for c in (CARD, PAGE)]
        report = run_backfill(settings, spec["dids"], restart=pairs, store=store)
        result |= report.summary() | {"errors": report.errors, "done": report.done_dids}
    elif role == "ingest":
        result |= run_ingest(settings, store=store).summary()
    elif role == "batches":
        result["batches"] = _commit_batches(store, spec)
    else:
        sys.exit(f"unknown role {role}")
    result |= {"ended": time.time(), "spans": store.spans}
    Path(spec["out"]).write_text(json.dumps(result))
    store.close()


def _commit_batches(store: ObservedLake, spec: dict[str, Any]) -> int:
    """Commit batch after batch (see `batch_events`) from `first`, each in one transaction,
    until `count` batches are done or the stop file appears; how many were committed.

    The log (each line flushed at once) says `begin n` before the transaction, `applied n`
    when its writes are done and COMMIT comes next (again on each re-run after a
    conflict), and `committed n <seconds> <seconds since applied> <waited> <attempts>`
    after it. With `cursor` false the batches leave the cursor alone, as a backfill's do,
    and `pause` seconds pass between them."""
    n, done = spec["first"], 0
    stop = Path(spec["stop"]) if spec.get("stop") else None
    with Path(spec["log"]).open("a") as log:
        while done != spec.get("count") and not (stop is not None and stop.exists()):
            batch = batch_of(batch_events(spec["prefix"], n, spec["base_t"]))
            if not spec.get("cursor", True):
                batch = replace(batch, cursor_us=None, endpoint=None)
            applied: list[float] = []
            write = functools.partial(_apply_noting, batch=batch, log=log, n=n, applied=applied)
            _note(log, f"begin {n}")
            started = time.monotonic()
            _, waited = store.transact(write)
            ended = time.monotonic()
            attempts = store.spans[-1][2]
            _note(
                log,
                f"committed {n} {ended - started:.3f} {ended - applied[-1]:.3f} {waited:.3f} "
                f"{attempts}",
            )
            n, done = n + 1, done + 1
            time.sleep(spec.get("pause", 0.0))
    return done


def _apply_noting(
    con: duckdb.DuckDBPyConnection, batch: EventBatch, log: TextIO, n: int, applied: list[float]
) -> ApplyResult:
    result = apply_batch(con, batch)
    applied.append(time.monotonic())
    _note(log, f"applied {n}")
    return result


def _note(log: TextIO, line: str) -> None:
    log.write(line + "\n")
    log.flush()


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    spec: dict[str, Any]
    output: Path

    def log(self) -> str:
        return self.output.read_text(errors="replace")[-4000:]

    def result(self, timeout: float = RUN_SECONDS) -> dict[str, Any]:
        """Wait for a normal end; what the child wrote."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            message = f"{self.name} still running after {timeout} s:\n{self.log()}"
            raise AssertionError(message) from None
        assert code == 0, f"{self.name} failed (exit {code}):\n{self.log()}"
        return dict(json.loads(Path(self.spec["out"]).read_text()))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class Children:
    """Writer processes of one test; each is killed at the end if still running."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        self.go = folder / "go"
        self.started: list[Child] = []

    def start(
        self,
        name: str,
        role: str,
        env: dict[str, str] | None = None,
        go: Path | None = None,
        **spec: Any,
    ) -> Child:
        """Start a writer; it waits for `go` (by default the signal all share)."""
        spec |= {
            "ready": str(self.folder / f"{name}.ready"),
            "go": str(go or self.go),
            "out": str(self.folder / f"{name}.out.json"),
        }
        spec_path = self.folder / f"{name}.json"
        spec_path.write_text(json.dumps(spec))
        output = self.folder / f"{name}.log"
        with output.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-c", CHILD, role, str(spec_path)],
                cwd=self.folder,
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started = Child(name, process, spec, output)
        self.started.append(started)
        return started

    def wait_ready(self, *children: Child) -> None:
        deadline = time.monotonic() + START_SECONDS
        for one in children:
            while not Path(one.spec["ready"]).exists():
                assert one.process.poll() is None, f"{one.name} exited:\n{one.log()}"
                assert time.monotonic() < deadline, f"{one.name} never got ready:\n{one.log()}"
                time.sleep(0.01)

    @staticmethod
    def signal(go: Path, **spec: Any) -> None:
        """Let the writers waiting for `go` start, adding `spec` to theirs (written whole
        before it appears)."""
        unseen = go.with_name(go.name + ".part")
        unseen.write_text(json.dumps(spec))
        unseen.rename(go)

    def kill_all(self) -> None:
        for one in self.started:
            one.kill()


def lake_env(lake: LakeLocation) -> dict[str, str]:
    return {"MIRROR_STORE": LAKE_PREFIX + lake.catalog, "MIRROR_DATA_PATH": lake.data_path}


@pytest.fixture
def made_lake(lake: LakeLocation) -> Iterator[LakeLocation]:
    """The test's lake with its schema made, as `mirror init` leaves it."""
    store = LakeStore(lake)
    store.init()
    store.close()
    yield lake


def spans_of(result: dict[str, Any]) -> list[Span]:
    """The transactions a child noted."""
    return [(float(start), float(end), int(n)) for start, end, n in result["spans"]]


def overlaps(spans: dict[str, list[Span]]) -> dict[str, int]:
    """For each pair of writers, how many of their transactions ran at the same time."""
    names = sorted(spans)
    counts: dict[str, int] = {}
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            counts[f"{first}/{second}"] = sum(
                1
                for a_start, a_end, _ in spans[first]
                for b_start, b_end, _ in spans[second]
                if a_start < b_end and b_start < a_end
            )
    return counts


def conflicts(spans: list[Span]) -> tuple[int, int, int]:
    """Transactions, transactions that conflicted at least once, and re-runs in all."""
    return len(spans), sum(1 for *_, n in spans if n > 1), sum(n - 1 for *_, n in spans)


def duplicate_keys(store: LakeStore) -> dict[str, list[tuple[Any, ...]]]:
    """Keys held by more than one row, per table (the lake has no keys to refuse them)."""
    queries = {
        "record_versions": "SELECT uri, count(*) AS n FROM record_versions GROUP BY uri",
        "accounts": "SELECT did, count(*) AS n FROM accounts GROUP BY did",
        "backfills": "SELECT did || ' ' || collection, count(*) AS n FROM backfills GROUP BY ALL",
        "ingest_state": "SELECT 'the cursor', count(*) AS n FROM ingest_state",
    }
    found: dict[str, list[tuple[Any, ...]]] = {}
    with store.reading() as con:
        for table, query in queries.items():
            rows = con.execute(f"SELECT * FROM ({query}) WHERE n > 1").fetchall()
            if rows:
                found[table] = sorted(rows)
    return found


def describe(duplicates: dict[str, list[tuple[Any, ...]]]) -> str:
    """Per table, how many keys have more than one row, the most rows, a few examples."""
    return "; ".join(
        f"{table}: {len(rows)} keys, up to {max(n for _, n in rows)} rows each, "
        f"e.g. {[key for key, _ in rows[:3]]}"
        for table, rows in duplicates.items()
    )


# -- versions and the state they lead to -------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """One version of a record: from a PDS listing or a Jetstream commit."""

    did: str
    collection: str
    rkey: str
    rev: str
    deleted: bool
    cid: str | None
    record: dict[str, Any] | None
    time_us: int

    @property
    def uri(self) -> str:
        return f"at://{self.did}/{self.collection}/{self.rkey}"

    def order(self) -> tuple[str, bool, str]:
        """Newer: the higher rev, then a delete, then the higher CID (docs/data-model.md)."""
        return (self.rev, self.deleted, self.cid or "")


def commit(
    author: str, operation: str, collection: str, rkey: str, rev: str, t: float, text: str = ""
) -> Event:
    """A Jetstream commit event with any rev."""
    body: dict[str, Any] = {
        "rev": rev,
        "operation": operation,
        "collection": collection,
        "rkey": rkey,
    }
    if operation != "delete":
        record = record_body(collection, text)
        body |= {"record": record, "cid": cid_of(record)}
    return {"did": author, "time_us": at(t), "kind": "commit", "commit": body}


def version_of(event: Event) -> Version:
    c = event["commit"]
    deleted = c["operation"] == "delete"
    return Version(
        event["did"],
        c["collection"],
        c["rkey"],
        c["rev"],
        deleted,
        None if deleted else c["cid"],
        None if deleted else c["record"],
        event["time_us"],
    )


@dataclass
class Expected:
    """The state a set of versions and account events leads to, by the mirror's rules."""

    records: dict[str, RecordRow] = field(default_factory=dict)  # live and shown
    tombstones: dict[str, TombstoneRow] = field(default_factory=dict)
    hidden: set[str] = field(default_factory=set)  # URIs of rows kept but hidden

    @classmethod
    def of(cls, versions: list[Version], statuses: dict[str, str] | None = None) -> Expected:
        """Per URI the newest version wins, whatever order they came in; a DID deleted for
        good keeps nothing, one taken down (suspended, deactivated) keeps its rows hidden."""
        statuses = statuses or {}
        newest: dict[str, Version] = {}
        for version in versions:
            if statuses.get(version.did) == "deleted":
                continue
            kept = newest.get(version.uri)
            if kept is None or version.order() > kept.order():
                newest[version.uri] = version
        expected = cls()
        for uri, v in newest.items():
            if statuses.get(v.did, "active") != "active":
                expected.hidden.add(uri)
            if v.deleted:
                expected.tombstones[uri] = TombstoneRow(
                    v.did, v.collection, v.rkey, v.rev, v.time_us
                )
            elif uri not in expected.hidden:  # the `records` view: live and shown
                assert v.cid is not None and v.record is not None
                expected.records[uri] = RecordRow(
                    v.did, v.collection, v.rkey, v.cid, v.record, v.rev, v.time_us
                )
        return expected

    def api_items(self, collection: str) -> list[dict[str, Any]]:
        """What `/records/{collection}` serves, in its order."""
        return newest_first(
            {
                "uri": uri,
                "did": row.did,
                "collection": row.collection,
                "rkey": row.rkey,
                "cid": row.cid,
                "record": row.record,
                "time_us": row.time_us,
            }
            for uri, row in self.records.items()
            if row.collection == collection
        )


def differences(name: str, got: Mapping[Any, Any], want: Mapping[Any, Any]) -> list[str]:
    """A short account of what differs between two dicts of rows, or nothing."""
    if got == want:
        return []
    extra = sorted(set(got) - set(want))
    missing = sorted(set(want) - set(got))
    changed = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    return [
        f"{name}: {len(got)} against {len(want)} expected; {len(extra)} extra {extra[:3]}, "
        f"{len(missing)} missing {missing[:3]}, {len(changed)} differ "
        + "; ".join(f"{k}: got {got[k]}, want {want[k]}" for k in changed[:2])
    ]


# -- 1. two backfills and an ingest at once, then two APIs ---------------------------------------

BACKFILL_GROUPS = 2  # backfill processes
DIDS_PER_GROUP = 4
CARDS_PER_DID = 110  # two listRecords pages and the empty one
PAGES_PER_DID = 12
LIVE_DIDS = 6  # DIDs only the stream knows
STEP_SECONDS = 0.01  # between two events of the stream
FLUSH_EVENTS = 8  # the ingest commits every 8 events: many short transactions
PDS_LATENCY_SECONDS = 0.05  # each PDS answer, so the backfills take a while


@dataclass
class Scenario:
    groups: list[list[str]]  # the DIDs of each backfill process
    events: list[Event]  # the stream, in time order
    versions: list[Version]  # every version: the PDS listings' and the stream's
    statuses: dict[str, str]  # the account status each DID ends in
    backfills: dict[tuple[str, str], str]  # the backfill status each pair ends in
    cursor_us: int  # the time of the last frame the ingest is sent
    frames: int  # how many frames it is sent


@dataclass(frozen=True)
class Step:
    """One thing a DID does on the stream; its time is given when the stream is woven."""

    kind: str  # create, update, delete, account, identity
    rkey: str = ""
    rev: str = ""
    text: str = ""
    collection: str = CARD
    status: str | None = None  # account: None is active
    twice: bool = False  # the frame is delivered twice

    def events(self, author: str, t: float) -> list[Event]:
        if self.kind == "account":
            made = account(author, active=self.status is None, t=t, status=self.status)
        elif self.kind == "identity":
            made = identity(author, self.text, t=t)
        else:
            made = commit(author, self.kind, self.collection, self.rkey, self.rev, t, self.text)
        return [made, made] if self.twice else [made]


def live_did_script(n: int) -> list[Step]:
    """A DID only the stream knows: creates, updates (one delivered twice), a delete, a
    replay of an old create (it must lose), a delete of a record never seen (a
    tombstone), a record created again after its delete, an untracked create."""
    steps = [Step("create", f"k{k}", rev_tid(k + 1), f"k{k}") for k in range(5)]
    steps += [
        Step("create", "p0", rev_tid(6), "p0", PAGE),
        Step("update", "k0", rev_tid(7), "k0 edited"),
        Step("update", "k1", rev_tid(8), "k1 edited", twice=True),
        Step("delete", "k2", rev_tid(9)),
        Step("create", "k0", rev_tid(1), "k0"),  # a replay of k0's create
        Step("delete", "ghost", rev_tid(10)),
        Step("create", "k2", rev_tid(11), "k2 again"),
        Step("create", "u0", rev_tid(12), "untracked", UNTRACKED),
        Step("update", "p0", rev_tid(13), "p0 edited", PAGE),
    ]
    if n == 0:
        steps.insert(6, Step("identity", text="live0.test"))
    return steps


def fate_scripts() -> dict[str, list[Step]]:
    """DIDs whose account changes: taken down (rows kept hidden, a later create too),
    deleted (everything purged, a replay after it ignored), deactivated and back."""
    return {
        did("banned"): [
            *(Step("create", f"b{k}", rev_tid(k + 1), f"b{k}") for k in range(3)),
            Step("account", status="takendown"),
            Step("create", "b3", rev_tid(4), "b3"),
        ],
        did("gone"): [
            *(Step("create", f"g{k}", rev_tid(k + 1), f"g{k}") for k in range(3)),
            Step("account", status="deleted"),
            Step("create", "g0", rev_tid(1), "g0"),  # a replay after the deletion
            Step("create", "g3", rev_tid(4), "g3"),
        ],
        did("back"): [
            Step("create", "c0", rev_tid(1), "c0"),
            Step("account", status="deactivated"),
            Step("account"),
            Step("update", "c0", rev_tid(2), "c0 edited"),
        ],
    }


def build_scenario(net: AtprotoStandIn) -> Scenario:
    """Accounts on the PDS for the backfills, and the stream for the ingest."""
    groups = [[did(f"fill{g}x{i}") for i in range(DIDS_PER_GROUP)] for g in range(BACKFILL_GROUPS)]
    versions: list[Version] = []
    listed: dict[str, list[str]] = {}  # each backfilled DID's card rkeys
    for g, group in enumerate(groups):
        for i, author in enumerate(group):
            net.add_account(author)
            for collection, count in ((CARD, CARDS_PER_DID + 7 * i), (PAGE, PAGES_PER_DID)):
                # Times interleave between DIDs: the newest-first order mixes them.
                start_us = BASE_US + 3 * (g * DIDS_PER_GROUP + i)
                rkeys = net.create_records(author, collection, count, start_us)
                if collection == CARD:
                    listed[author] = rkeys
                times = {rkey: start_us + k for k, rkey in enumerate(rkeys)}
                versions += [
                    Version(author, collection, rkey, "", False, cid, value, times[rkey])
                    for rkey, (cid, value) in net.records(author, collection).items()
                ]
    # A complete listing brings each record at the rev its pass read (nothing changes on
    # the PDS from here on).
    versions = [
        Version(v.did, v.collection, v.rkey, net.rev(v.did), False, v.cid, v.record, v.time_us)
        for v in versions
    ]
    statuses = {author: "active" for group in groups for author in group}
    backfills = {(author, c): "complete" for author in statuses for c in (CARD, PAGE)}

    scripts: dict[str, list[Step]] = {}
    # Live commits for DIDs being backfilled, newer than the passes' revs whatever order
    # they land in: an update, a new record, a delete; and a replay of an old version of
    # a listed record (an old rev), which the listing's version beats.
    for group in groups:
        for author in group[:2]:
            rkeys = listed[author]
            scripts[author] = [
                Step("update", rkeys[0], net.new_rev(), "edited live"),
                Step("create", "live", net.new_rev(), "made live"),
                Step("delete", rkeys[1], net.new_rev()),
                Step("create", rkeys[2], rev_tid(3), "an old version"),
                Step("create", "livepage", net.new_rev(), "made live", PAGE),
            ]
    for n in range(LIVE_DIDS):
        scripts[did(f"live{n}")] = live_did_script(n)
    scripts |= fate_scripts()

    # Woven round-robin: each DID's steps in order, the DIDs interleaved.
    events: list[Event] = []
    t = 1.0
    queues = {author: list(steps) for author, steps in scripts.items()}
    while any(queues.values()):
        for author, steps in queues.items():
            if steps:
                t += STEP_SECONDS
                events += steps.pop(0).events(author, t)
    tracked = [e for e in events if e["kind"] != "commit" or e["commit"]["collection"] != UNTRACKED]
    versions += [version_of(e) for e in tracked if e["kind"] == "commit"]
    for e in tracked:
        if e["kind"] == "account":
            info = e["account"]
            statuses[e["did"]] = "active" if info["active"] else info["status"]
        elif e["kind"] == "commit" and e["commit"]["operation"] != "delete":
            backfills.setdefault((e["did"], e["commit"]["collection"]), "pending")
        statuses.setdefault(e["did"], "active")
    backfills = {k: s for k, s in backfills.items() if statuses[k[0]] != "deleted"}
    cursor_us = max(e["time_us"] for e in tracked)
    return Scenario(groups, events, versions, statuses, backfills, cursor_us, len(tracked))


def get_json(api: ApiProcess, path: str, params: dict[str, str | int]) -> dict[str, Any]:
    response = httpx.get(f"{api.base_url}{path}", params=params, timeout=30)
    assert response.status_code == 200, f"{api.base_url}{path} {params}: {response.text}"
    return dict(response.json())


def walk_records(api: ApiProcess, collection: str, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Walk `/records/{collection}` from its first page to its last by its cursors; every
    page but the last full and with a cursor."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for page in range(1, 1000):
        params: dict[str, str | int] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        body = get_json(api, f"/records/{collection}", params)
        items += body["records"]
        cursor = body.get("cursor")
        if cursor is None:
            return items, page
        assert len(body["records"]) == limit, f"page {page} of {collection} is not full"
    raise AssertionError(f"the walk of {collection} does not end")


def test_two_backfills_and_an_ingest_write_one_lake_and_two_apis_serve_it(
    made_lake: LakeLocation, tmp_path: Path
) -> None:
    lake = made_lake
    children = Children(tmp_path, lake_env(lake))
    started = time.monotonic()
    with ExitStack() as stack:
        stack.callback(children.kill_all)
        net = stack.enter_context(AtprotoStandIn())
        jetstream = stack.enter_context(JetstreamServer())
        scenario = build_scenario(net)
        for event in scenario.events:
            jetstream.add(event)
        net.latency_seconds = PDS_LATENCY_SECONDS
        env = {
            "PLC_URL": net.url,
            "RELAY_URL": net.url,
            "MIRROR_ALLOW_PRIVATE_NETWORK": "1",
            "MIRROR_DB": str(tmp_path / "unused.duckdb"),  # the lake is the store
            "COLLECTIONS": TRACKED,
            "JETSTREAM_URLS": jetstream.url,
            "INGEST_FLUSH_EVENTS": str(FLUSH_EVENTS),
            "INGEST_IDLE_SECONDS": "1",
            "INGEST_MAX_SECONDS": "60",
            "BACKFILL_DIDS_AT_ONCE": "1",  # one DID after another: more, smaller transactions
            "BACKFILL_HTTP_BACKOFF_SECONDS": "0.01",
            "BACKFILL_HTTP_TIMEOUT_SECONDS": "20",
        }
        writers = [
            children.start(f"backfill{g}", "backfill", env, dids=group)
            for g, group in enumerate(scenario.groups)
        ]
        writers.append(children.start("ingest", "ingest", env))
        # The APIs come up meanwhile, and answer for the empty lake: what they keep of
        # that must give way to the lake's new snapshots.
        api_env = lake_env(lake) | {"API_CURSOR_KEY": CURSOR_KEY, "COLLECTIONS": TRACKED}
        apis = [
            stack.enter_context(
                serve_api(tmp_path / f"api{n}.duckdb", tmp_path / f"api{n}.log", **api_env)
            )
            for n in (1, 2)
        ]
        for api in apis:
            assert get_json(api, f"/records/{CARD}", {"limit": 100}) == {"records": []}
        children.wait_ready(*writers)
        ready = time.monotonic()
        children.signal(children.go)
        results = {writer.name: writer.result() for writer in writers}
        written = time.monotonic()
        net.latency_seconds = 0.0

        spans = {name: spans_of(r) for name, r in results.items()}
        print(
            f"\nwriters and APIs ready {ready - started:.1f} s after the start, writers done "
            f"{written - ready:.1f} s after the signal; transactions at the same time: "
            f"{overlaps(spans)}"
        )
        for name, r in results.items():
            count, conflicted, reruns = conflicts(spans[name])
            print(
                f"  {name}: {count} transactions, {conflicted} conflicted ({reruns} re-runs), "
                f"waited {r['max_lock_wait_seconds']} s at most, ran "
                f"{r['ended'] - r['started']:.1f} s"
            )
        for g, group in enumerate(scenario.groups):
            r = results[f"backfill{g}"]
            assert r["errors"] == {}, r["errors"]
            assert r["listings_completed"] == 2 * len(group), r
            assert sorted(r["done"]) == sorted(group), r
        ingest = results["ingest"]
        assert ingest["stop_reason"] == "idle", ingest
        assert ingest["flushes"] >= scenario.frames // FLUSH_EVENTS, ingest
        assert sum(overlaps(spans).values()) > 0, "the writers never wrote at the same time"

        store = LakeStore(lake)
        try:
            duplicates = duplicate_keys(store)
            assert not duplicates, (
                "keys with more than one row (two writers inserted the same key at once and "
                f"both committed): {describe(duplicates)}"
            )
            got = snapshot(store)
        finally:
            store.close()
        want = Expected.of(scenario.versions, scenario.statuses)
        problems = [
            *state_problems(got, want, scenario.statuses),
            *differences("backfills", got.backfills, scenario.backfills),
        ]
        assert not problems, "\n".join(problems)
        assert got.cursor == scenario.cursor_us, (got.cursor, scenario.cursor_us)
        # The scenario is what it says: each kind of outcome is there.
        assert len(want.tombstones) == LIVE_DIDS + 2 * BACKFILL_GROUPS and len(want.hidden) == 4
        assert len(want.records) > BACKFILL_GROUPS * DIDS_PER_GROUP * CARDS_PER_DID

        for collection, limit in ((CARD, 100), (PAGE, 25)):
            expected = want.api_items(collection)
            for name, api in (("api1", apis[0]), ("api2", apis[1])):
                items, pages = walk_records(api, collection, limit)
                assert items == expected, (
                    f"{name}: /records/{collection} walked in {pages} pages differs: "
                    f"{len(items)} items against {len(expected)}; "
                    f"{differences('items', by_uri(items), by_uri(expected))}"
                )
            # A cursor made by one API, asked of the other: the same next page.
            first = get_json(apis[0], f"/records/{collection}", {"limit": limit})
            after = {"limit": limit, "cursor": first["cursor"]}
            second = [get_json(api, f"/records/{collection}", after) for api in apis]
            assert second[0] == second[1], f"a cursor of API 1 read on API 2: {second}"
            assert second[0]["records"] == expected[limit : 2 * limit]
            stats = [get_json(api, f"/stats/{collection}", {}) for api in apis]
            assert stats[0]["total_records"] == stats[1]["total_records"] == len(expected)
        print(f"  APIs walked in {time.monotonic() - written:.1f} s")
        for api in apis:
            assert api.process.poll() is None, f"an API exited: {api.log_path.read_text()}"
    for n in (1, 2):
        log = (tmp_path / f"api{n}.log").read_text()
        assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


def state_problems(got: Snapshot, want: Expected, statuses: dict[str, str]) -> list[str]:
    """How the records, tombstones, hidden rows and account statuses of a lake differ from
    what the scenario leads to; nothing if they agree."""
    return [
        *differences("records", got.records, want.records),
        *differences("tombstones", got.tombstones, want.tombstones),
        *differences("hidden", dict.fromkeys(hidden_uris(got)), dict.fromkeys(want.hidden)),
        *differences("account statuses", statuses_of(got), statuses),
    ]


def hidden_uris(snap: Snapshot) -> set[str]:
    return {uri for uri, version in snap.versions.items() if version.hidden}


def statuses_of(snap: Snapshot) -> dict[str, str]:
    return {d: a.status for d, a in snap.accounts.items()}


def by_uri(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {item["uri"]: item for item in items}


# -- 2. a writer killed inside its transaction ---------------------------------------------------

KILLS = ("apply", "commit", "commit")  # where in its transaction each writer is killed
COMMITS_BEFORE_KILL = 2  # each new writer commits this many before it may be killed
FINAL_BATCHES = 4  # the last writer's, after the kills
KILLED = ("kill", 1000.0)  # the killed writer's DIDs (prefix) and times (seconds)
STEADY = ("calm", 10.0)  # the other writer's, all before the killed one's
STEADY_PAUSE_SECONDS = 0.2  # between the other writer's batches (which leave the cursor alone)


def batch_events(prefix: str, n: int, base_t: float) -> list[Event]:
    """Batch n of a writer: new records (3 in even batches, 150 in odd ones: small and
    large transactions) for one of three DIDs, an update of a record of batch n - 1, and
    a delete of another. Its last event's time is its cursor."""
    author = did(f"{prefix}{n % 3}")
    t = base_t + n
    size = 3 if n % 2 == 0 else 150
    events = [
        commit(author, "create", CARD, f"r{n}x{i}", rev_tid(10_000 * n + i), t + i / 100_000, "new")
        for i in range(size)
    ]
    if n > 0:
        before = did(f"{prefix}{(n - 1) % 3}")
        events.append(
            commit(
                before, "update", CARD, f"r{n - 1}x0", rev_tid(10_000 * n + 9_000), t + 0.5, "ed"
            )
        )
        events.append(
            commit(before, "delete", CARD, f"r{n - 1}x1", rev_tid(10_000 * n + 9_001), t + 0.6)
        )
    return events


def batches_state(prefix: str, base_t: float, last: int) -> Expected:
    """The state batches 0..last of a writer lead to."""
    return Expected.of(
        [version_of(e) for n in range(last + 1) for e in batch_events(prefix, n, base_t)]
    )


def cursor_of(prefix: str, base_t: float, n: int) -> int:
    return max(int(e["time_us"]) for e in batch_events(prefix, n, base_t))


def rows_of(prefix: str, snap: Snapshot) -> tuple[dict[str, RecordRow], dict[str, TombstoneRow]]:
    """The records and tombstones of one writer's DIDs."""
    dids = {did(f"{prefix}{k}") for k in range(3)}
    return (
        {u: r for u, r in snap.records.items() if r.did in dids},
        {u: r for u, r in snap.tombstones.items() if r.did in dids},
    )


@dataclass
class WriterLog:
    """What a batch writer's log says so far."""

    committed: list[int] = field(default_factory=list)
    apply_seconds: list[float] = field(default_factory=list)  # from begin to applied
    commit_seconds: list[float] = field(default_factory=list)  # from applied to committed
    attempts: list[int] = field(default_factory=list)  # more than 1: it conflicted
    inside: int | None = None  # the batch it began and has not said it committed
    phase: str | None = None  # where in it: "apply" or "commit" (COMMIT, or a re-run)

    @classmethod
    def read(cls, path: Path) -> WriterLog:
        log = cls()
        for line in path.read_text().splitlines() if path.exists() else []:
            word, *numbers = line.split()
            if not numbers or not numbers[0].isdigit():
                continue  # a line cut short by the kill
            if word in ("begin", "applied"):
                log.inside = int(numbers[0])
                log.phase = "apply" if word == "begin" else "commit"
            elif word == "committed" and len(numbers) == 5:
                log.committed.append(int(numbers[0]))
                total, commit_ = float(numbers[1]), float(numbers[2])
                log.apply_seconds.append(total - commit_)
                log.commit_seconds.append(commit_)
                log.attempts.append(int(numbers[4]))
                log.inside = log.phase = None
        return log


@dataclass
class Kill:
    batch: int  # the batch the writer was inside
    phase: str  # "apply" (its writes) or "commit" (after them: COMMIT, or a re-run)
    after_ms: float  # how long after the phase was seen to begin
    typical_ms: float  # how long that phase of its committed batches took (median)
    outcome: str = ""  # whether the batch is in the lake


def _wait_stopped(pid: int) -> None:
    """Until the kernel reports the process stopped (SIGSTOP is delivered asynchronously)."""
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(0.0005)


def kill_inside_a_transaction(writer: Child, phase: str, rng: random.Random) -> Kill:
    """Once the writer has committed COMMITS_BEFORE_KILL batches, SIGKILL it at a random
    moment of `phase` of a later transaction: up to about as long as that phase takes,
    after the log says it began. The writer is frozen (SIGSTOP) first and killed only if
    its log still says it is in that phase of that batch; else it goes on (SIGCONT) and
    the next one is aimed at. Whether the batch committed is for the caller to find out."""
    path = Path(writer.spec["log"])
    pid = writer.process.pid
    deadline = time.monotonic() + START_SECONDS
    while True:
        assert writer.process.poll() is None, f"{writer.name} exited:\n{writer.log()}"
        assert time.monotonic() < deadline, f"{writer.name} was never killed:\n{writer.log()}"
        log = WriterLog.read(path)
        if len(log.committed) < COMMITS_BEFORE_KILL or log.phase != phase:
            time.sleep(0.001)
            continue
        typical = statistics.median(log.commit_seconds if phase == "commit" else log.apply_seconds)
        seen = time.monotonic()
        time.sleep(rng.uniform(0.0, typical))
        os.kill(pid, signal.SIGSTOP)
        _wait_stopped(pid)
        now = WriterLog.read(path)
        if (now.inside, now.phase) == (log.inside, phase):
            os.kill(pid, signal.SIGKILL)
            writer.process.wait(10)
            assert writer.process.returncode == -signal.SIGKILL
            assert log.inside is not None
            return Kill(log.inside, phase, (time.monotonic() - seen) * 1000, typical * 1000)
        os.kill(pid, signal.SIGCONT)  # it moved on meanwhile: aim at the next one


def test_a_writer_killed_inside_a_transaction_loses_nothing_and_a_new_one_goes_on(
    made_lake: LakeLocation, tmp_path: Path
) -> None:
    lake = made_lake
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    children = Children(tmp_path, lake_env(lake) | {"COLLECTIONS": TRACKED})
    store = LakeStore(lake)
    kills: list[Kill] = []
    prefix, base_t = KILLED
    try:
        stop = tmp_path / "stop"
        steady = children.start(
            "steady",
            "batches",
            prefix=STEADY[0],
            base_t=STEADY[1],
            first=0,
            log=str(tmp_path / "steady.batches"),
            stop=str(stop),
            cursor=False,
            pause=STEADY_PAUSE_SECONDS,
        )
        # Each writer after the first is started while the one before it runs, and told
        # where to go on once that one is killed: its start-up is no part of the wait.
        names = [f"writer{n}" for n in range(len(KILLS))] + ["final"]

        def spawn(name: str) -> Child:
            return children.start(
                name,
                "batches",
                go=tmp_path / f"go-{name}",
                prefix=prefix,
                base_t=base_t,
                log=str(tmp_path / f"{name}.batches"),
                count=FINAL_BATCHES if name == "final" else None,
            )

        spawned = [spawn(names[0])]
        children.wait_ready(steady, spawned[0])
        children.signal(children.go)
        first = 0
        for round_, phase in enumerate(KILLS):
            writer = spawned[round_]
            children.signal(Path(writer.spec["go"]), first=first)
            spawned.append(spawn(names[round_ + 1]))
            kill = kill_inside_a_transaction(writer, phase, rng)
            kills.append(kill)
            reported = WriterLog.read(Path(writer.spec["log"])).committed
            assert reported == list(range(first, kill.batch)), (reported, first, kill)

            # The lake: every batch reported, and all of the one cut short or none of it.
            got = snapshot(store)
            ends = {cursor_of(prefix, base_t, n): n for n in (kill.batch - 1, kill.batch)}
            assert got.cursor in ends, (
                f"seed {seed}, {kill}: the cursor {got.cursor} is the end of neither the batch "
                f"cut short nor the one before it ({ends})"
            )
            last = ends[got.cursor]
            kill.outcome = "committed" if last == kill.batch else "not committed"
            want = batches_state(prefix, base_t, last)
            records, tombstones = rows_of(prefix, got)
            found = [
                *differences("records", records, want.records),
                *differences("tombstones", tombstones, want.tombstones),
            ]
            assert not found, f"seed {seed}, after {kill}:\n" + "\n".join(found)
            first = last + 1

        final = spawned[-1]
        children.signal(Path(final.spec["go"]), first=first)
        final_result = final.result()
        stop.touch()
        steady_result = steady.result()
    finally:
        children.kill_all()

    try:
        duplicates = duplicate_keys(store)
        got = snapshot(store)
    finally:
        store.close()
    assert not duplicates, f"keys with more than one row: {describe(duplicates)}"
    last = first + FINAL_BATCHES - 1
    assert final_result["batches"] == FINAL_BATCHES
    steady_log = WriterLog.read(tmp_path / "steady.batches")
    assert steady_log.inside is None
    assert steady_log.committed == list(range(steady_result["batches"]))
    problems: list[str] = []
    for name, (p, t, n) in (
        ("killed", (prefix, base_t, last)),
        ("steady", (*STEADY, steady_log.committed[-1])),
    ):
        want = batches_state(p, t, n)
        records, tombstones = rows_of(p, got)
        problems += differences(f"{name} writer's records", records, want.records)
        problems += differences(f"{name} writer's tombstones", tombstones, want.tombstones)
    assert not problems, f"seed {seed}:\n" + "\n".join(problems)
    assert got.cursor == cursor_of(prefix, base_t, last)

    killed_attempts = [
        n
        for r in range(len(KILLS))
        for n in WriterLog.read(tmp_path / f"writer{r}.batches").attempts
    ]
    print(
        f"\nseed {seed}; kills: "
        + "; ".join(
            f"batch {k.batch} in its {k.phase} phase, {k.after_ms:.0f} ms in (it takes "
            f"{k.typical_ms:.0f} ms): {k.outcome}"
            for k in kills
        )
        + f"\n  killed writers: {len(killed_attempts)} committed batches, "
        f"{sum(n > 1 for n in killed_attempts)} conflicted "
        f"({sum(killed_attempts) - len(killed_attempts)} re-runs)"
    )
    count, conflicted, reruns = conflicts(spans_of(steady_result))
    print(
        f"  the steady writer: {count} transactions beside them, {conflicted} conflicted "
        f"({reruns} re-runs); the last writer (transactions, conflicted, re-runs): "
        f"{conflicts(spans_of(final_result))}"
    )


if __name__ == "__main__":
    child(sys.argv[1:])


# -- 3. a long transaction beside a stream of short ones ---------------------------------------

LONG_SECONDS = 1.0  # inside the long transaction: several short ones would commit meanwhile


def test_a_long_transaction_beside_a_stream_of_short_ones_commits_at_its_first_turn(
    made_lake: LakeLocation,
) -> None:
    """Writers take turns (store/turns.py): a long transaction waits for the short one in
    progress, then commits at its first attempt. Left to conflicts, one of the short ones
    would always commit first and the long one would run again and again."""
    short_store, long_store = LakeStore(made_lake), LakeStore(made_lake)
    stop = threading.Event()
    shorts: list[float] = []

    def short_stream() -> None:
        n = 0
        while not stop.is_set():
            batch = replace(batch_of(batch_events("short", 2 * n, 10.0)), cursor_us=None)
            short_store.transact(functools.partial(apply_batch, batch=batch))
            shorts.append(time.monotonic())
            n += 1

    attempts: list[float] = []

    def long_write(con: duckdb.DuckDBPyConnection) -> ApplyResult:
        attempts.append(time.monotonic())
        time.sleep(LONG_SECONDS)
        return apply_batch(con, batch_of(batch_events("long", 1, 1000.0)))

    streaming = threading.Thread(target=short_stream)
    streaming.start()
    try:
        while len(shorts) < 3:
            time.sleep(0.01)
        long_store.transact(long_write)
        committed = time.monotonic()
        while len(shorts) < 6:  # the stream goes on after it
            time.sleep(0.01)
    finally:
        stop.set()
        streaming.join(60)
        short_store.close()
        long_store.close()
    assert len(attempts) == 1, f"the long transaction ran {len(attempts)} times"
    assert not [t for t in shorts if attempts[0] < t < committed - LONG_SECONDS / 2], (
        "a short transaction committed inside the long one's turn"
    )
