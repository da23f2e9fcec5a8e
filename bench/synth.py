"""Synthetic Jetstream traffic and preloaded records for the ingest benchmark.

Everything is deterministic for a given seed, so the server process (which builds the
frames) and the benchmark process (which preloads records and checks the result) agree on
URIs, revs and expected row counts without shipping the stream between them.

Two stream shapes:

* ``fresh``: 99 % commits (80 % create, 12 % update, 8 % delete of records created earlier
  in the stream), 1 % identity and account events.
* ``touch``: 99 % commits, half of them creates of new records and half updates (60 %) or
  deletes (40 %) of records from the preloaded set (each preloaded record touched at most
  once, so no update ever follows a delete), 1 % identity and account events.

Account events never carry ``deleted`` (it purges and blocks a DID, which would make the
expected row counts depend on batch boundaries); they flip accounts between active,
deactivated, takendown and suspended, which hides and shows rows (the UPDATE path).
"""

from __future__ import annotations

import base64
import random
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

COLLECTIONS = ("app.blento.card", "app.blento.page")
TRACKED = ",".join(COLLECTIONS)
TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
STEP_US = 100  # stream events are this far apart on Jetstream's clock
PRELOAD_STEP_US = 1  # preloaded records were created this far apart (before the stream)
CLOCK_ID = 7


def tid(time_us: int, clock_id: int = CLOCK_ID) -> str:
    """A TID: 53 bits of microseconds after a 0 bit, 10 bits of clock id, base32-sortable."""
    n = (time_us << 10) | clock_id
    return "".join(TID_ALPHABET[(n >> shift) & 31] for shift in range(60, -1, -5))


@dataclass(frozen=True)
class StreamSpec:
    """What the server replays; both processes derive the same stream from it."""

    events: int
    shape: str = "fresh"  # or "touch"
    preload: int = 0  # size of the preloaded set a "touch" stream refers to
    dids: int = 50_000
    seed: int = 1
    base_us: int = 0  # time_us of the first event; 0: derived from the wall clock

    def resolved(self) -> StreamSpec:
        """Pin base_us so that the whole stream lies in the past (a run stops at 'now')."""
        if self.base_us:
            return self
        now_us = time.time_ns() // 1000
        span = self.events * STEP_US + 3_600_000_000
        return StreamSpec(**{**asdict(self), "base_us": now_us - span})

    @property
    def preload_base_us(self) -> int:
        return self.base_us - self.preload * PRELOAD_STEP_US - 60_000_000


@dataclass
class StreamInfo:
    """Counts the benchmark checks the store against."""

    frames: int = 0
    bytes: int = 0
    creates: int = 0
    updates: int = 0
    deletes: int = 0
    identities: int = 0
    accounts: int = 0
    expected_live: int = 0  # rows of record_versions with deleted = false after the stream
    expected_tombstones: int = 0  # ... with deleted = true (assuming an empty table first)
    expected_live_preloaded: int = 0  # ... when the preloaded set was loaded first
    expected_tombstones_preloaded: int = 0
    record_bytes: int = 0  # mean size of a record JSON object
    build_seconds: float = 0.0


def make_dids(count: int, seed: int) -> list[str]:
    rnd = random.Random(seed * 7919 + 1)
    return ["did:plc:" + base64.b32encode(rnd.randbytes(15)).decode().lower() for _ in range(count)]


def _words(rnd: random.Random, count: int) -> list[str]:
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    return ["".join(rnd.choices(letters, weights, k=rnd.randint(2, 9))) for _ in range(count)]


class _Text:
    """Word salad: slices of a long random text, so records do not repeat."""

    def __init__(self, rnd: random.Random) -> None:
        words = _words(rnd, 3000)
        self.corpus = " ".join(rnd.choices(words, k=250_000))
        self.rnd = rnd

    def take(self, low: int, high: int) -> str:
        length = self.rnd.randint(low, high)
        start = self.rnd.randrange(len(self.corpus) - length)
        return self.corpus[start : start + length].strip()


def _iso(time_us: int) -> str:
    return datetime.fromtimestamp(time_us / 1e6, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _cid(rnd: random.Random) -> str:
    return "bafyrei" + base64.b32encode(rnd.randbytes(33)).decode().lower()[:52]


def _record(collection: str, text: _Text, created: str, position: int) -> str:
    # About 300 bytes, the size of a typical small app record.
    return (
        f'{{"$type":"{collection}","title":"{text.take(16, 40)}",'
        f'"text":"{text.take(120, 200)}","url":"https://example.com/{position:x}",'
        f'"position":{position},"createdAt":"{created}"}}'
    )


def preloaded_uri_parts(k: int, dids: list[str], spec: StreamSpec) -> tuple[str, str, str]:
    """(did, collection, rkey) of preloaded record k; must match `preload_chunk`."""
    return (
        dids[k % len(dids)],
        COLLECTIONS[0] if k % 10 < 7 else COLLECTIONS[1],
        tid(spec.preload_base_us + k * PRELOAD_STEP_US, k % 1024),
    )


def build_stream(spec: StreamSpec) -> tuple[list[str], list[int], StreamInfo]:
    """The frames (JSON text) and their time_us, in stream order, and what they should do."""
    started = time.perf_counter()
    spec = spec.resolved()
    rnd = random.Random(spec.seed)
    text = _Text(random.Random(spec.seed + 1))
    dids = make_dids(spec.dids, spec.seed)
    info = StreamInfo()
    frames: list[str] = []
    times: list[int] = []
    live: list[tuple[str, str, str]] = []  # records created in this stream and not deleted
    touched: set[int] = set()
    seq = 1_000_000
    record_bytes = 0
    for i in range(spec.events):
        time_us = spec.base_us + i * STEP_US
        rev = tid(time_us)
        draw = rnd.random()
        did = dids[rnd.randrange(len(dids))]
        if draw < 0.006:
            seq += 1
            handle = f"user{rnd.randrange(10**6)}.bsky.social"
            frame = (
                f'{{"did":"{did}","time_us":{time_us},"kind":"identity","identity":'
                f'{{"did":"{did}","handle":"{handle}","seq":{seq},"time":"{_iso(time_us)}"}}}}'
            )
            info.identities += 1
        elif draw < 0.010:
            seq += 1
            state = rnd.random()
            if state < 0.70:
                account = f'"active":true,"did":"{did}","seq":{seq},"time":"{_iso(time_us)}"'
            else:
                status = (
                    "deactivated" if state < 0.85 else "takendown" if state < 0.95 else "suspended"
                )
                account = (
                    f'"active":false,"did":"{did}","seq":{seq},"time":"{_iso(time_us)}",'
                    f'"status":"{status}"'
                )
            frame = (
                f'{{"did":"{did}","time_us":{time_us},"kind":"account","account":{{{account}}}}}'
            )
            info.accounts += 1
        else:
            op = rnd.random()
            target: tuple[str, str, str] | None = None
            operation = "create"
            if spec.shape == "fresh":
                if op >= 0.80 and live:
                    index = rnd.randrange(len(live))
                    if op < 0.92:
                        operation, target = "update", live[index]
                    else:
                        operation, target = "delete", live[index]
                        live[index] = live[-1]
                        live.pop()
            elif op >= 0.5 and len(touched) < spec.preload:
                k = rnd.randrange(spec.preload)
                while k in touched:
                    k = rnd.randrange(spec.preload)
                touched.add(k)
                operation = "update" if op < 0.8 else "delete"
                target = preloaded_uri_parts(k, dids, spec)
            if target is None:
                collection = COLLECTIONS[0] if rnd.random() < 0.7 else COLLECTIONS[1]
                target = (did, collection, tid(time_us, rnd.randrange(1024)))
                if spec.shape == "fresh":
                    live.append(target)
            did, collection, rkey = target
            head = (
                f'{{"did":"{did}","time_us":{time_us},"kind":"commit","commit":{{"rev":"{rev}",'
                f'"operation":"{operation}","collection":"{collection}","rkey":"{rkey}"'
            )
            if operation == "delete":
                frame = head + "}}"
                info.deletes += 1
            else:
                record = _record(collection, text, _iso(time_us), i)
                record_bytes += len(record)
                frame = f'{head},"record":{record},"cid":"{_cid(rnd)}"}}}}'
                if operation == "create":
                    info.creates += 1
                else:
                    info.updates += 1
        frames.append(frame)
        times.append(time_us)
        info.bytes += len(frame)
    info.frames = len(frames)
    info.record_bytes = record_bytes // max(1, info.creates + info.updates)
    if spec.shape == "fresh":
        info.expected_live = info.creates - info.deletes
        info.expected_tombstones = info.deletes
    else:
        # On an empty table an update of an absent record inserts it; a delete, a tombstone.
        info.expected_live = info.creates + info.updates
        info.expected_tombstones = info.deletes
        info.expected_live_preloaded = spec.preload + info.creates - info.deletes
        info.expected_tombstones_preloaded = info.deletes
    info.build_seconds = time.perf_counter() - started
    return frames, times, info


# -- preloading ---------------------------------------------------------------------------


def _tid_array(values: pa.Array) -> pa.Array:
    """Vectorised `tid` for an int64 array of (time_us << 10 | clock_id)."""
    alphabet = pa.array(list(TID_ALPHABET))
    digits = [
        alphabet.take(pc.bit_wise_and(pc.shift_right(values, shift), 31))
        for shift in range(60, -1, -5)
    ]
    return pc.binary_join_element_wise(*digits, "")


class PreloadPools:
    """Random text and CIDs drawn per row, so preloaded rows compress like real ones."""

    def __init__(self, seed: int, size: int = 1_000_003) -> None:
        rnd = random.Random(seed + 2)
        text = _Text(random.Random(seed + 3))
        self.size = size
        self.titles = pa.array([text.take(16, 40) for _ in range(size)])
        self.texts = pa.array([text.take(120, 200) for _ in range(size)])
        self.cids = pa.array([_cid(rnd) for _ in range(size)])


PRELOAD_FIELDS = (
    "uri", "did", "collection", "rkey", "cid", "record", "rev", "time_us", "deleted", "hidden",
)  # fmt: skip


def preload_chunk(
    start: int, stop: int, spec: StreamSpec, dids: pa.Array, pools: PreloadPools
) -> pa.Table:
    """Preloaded records start..stop-1 as rows of record_versions (see schema.py)."""
    k = pa.array(range(start, stop), pa.int64())
    n = stop - start
    did_index = pc.subtract(k, pc.multiply(pc.divide(k, len(dids)), len(dids)))
    is_card = pc.less(pc.subtract(k, pc.multiply(pc.divide(k, 10), 10)), 7)
    collection = pc.if_else(is_card, COLLECTIONS[0], COLLECTIONS[1])
    time_us = pc.add(pc.multiply(k, PRELOAD_STEP_US), spec.preload_base_us)
    clock = pc.subtract(k, pc.multiply(pc.divide(k, 1024), 1024))
    rkey = _tid_array(pc.bit_wise_or(pc.shift_left(time_us, 10), clock))
    did = dids.take(did_index)
    uri = pc.binary_join_element_wise("at://", did, "/", collection, "/", rkey, "")

    def pick(pool: pa.Array, salt: int) -> pa.Array:
        draw = pc.multiply(pc.random(n, initializer=start * 4 + salt), len(pool) - 1)
        return pool.take(pc.cast(pc.floor(draw), pa.int64()))

    created = pc.strftime(pc.cast(time_us, pa.timestamp("us")), format="%Y-%m-%dT%H:%M:%S")
    record = pc.binary_join_element_wise(
        '{"$type":"',
        collection,
        '","title":"',
        pick(pools.titles, 1),
        '","text":"',
        pick(pools.texts, 2),
        '","url":"https://example.com/p',
        pc.cast(k, pa.string()),
        '","position":',
        pc.cast(k, pa.string()),
        ',"createdAt":"',
        created,
        'Z"}',
        "",
    )
    return pa.table(
        {
            "uri": uri,
            "did": did,
            "collection": collection,
            "rkey": rkey,
            "cid": pick(pools.cids, 3),
            "record": record,
            "rev": rkey,
            "time_us": time_us,
            "deleted": pa.repeat(False, n),
            "hidden": pa.repeat(False, n),
        }
    )
