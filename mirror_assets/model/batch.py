"""Decoded events gathered into Arrow tables, the unit the store applies in one transaction.

Events keep their arrival order in `seq`, so the store can pick the last version of each
record, account and handle within a batch without relying on the order of rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from mirror_assets.atproto.events import (
    AccountEvent,
    CommitEvent,
    CursorGap,
    Event,
    IdentityEvent,
)

COMMIT_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("uri", pa.string()),
        ("did", pa.string()),
        ("collection", pa.string()),
        ("rkey", pa.string()),
        ("deleted", pa.bool_()),
        ("rev", pa.string()),
        ("cid", pa.string()),
        ("record", pa.string()),
        ("time_us", pa.int64()),
    ]
)
ACCOUNT_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("did", pa.string()),
        ("active", pa.bool_()),
        ("status", pa.string()),
        ("event_time", pa.string()),
        ("event_seq", pa.int64()),
        ("time_us", pa.int64()),
    ]
)
IDENTITY_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("did", pa.string()),
        ("handle", pa.string()),
        ("event_time", pa.string()),
        ("event_seq", pa.int64()),
        ("time_us", pa.int64()),
    ]
)


def _columns(schema: pa.Schema) -> dict[str, list[Any]]:
    return {name: [] for name in schema.names}


@dataclass
class EventBatch:
    """One transaction's worth of events, plus the cursor position they bring the mirror to."""

    commits: pa.Table
    accounts: pa.Table
    identities: pa.Table
    cursor_us: int | None
    endpoint: str | None
    gaps: list[CursorGap] = field(default_factory=list)


class BatchBuilder:
    """Collects events column by column; `build()` hands them over as Arrow tables."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._commits = _columns(COMMIT_SCHEMA)
        self._accounts = _columns(ACCOUNT_SCHEMA)
        self._identities = _columns(IDENTITY_SCHEMA)
        self._seq = 0
        self._record_bytes = 0
        self._cursor_us: int | None = None
        self._endpoint: str | None = None
        self._gaps: list[CursorGap] = []

    def __len__(self) -> int:
        return self._seq

    @property
    def record_bytes(self) -> int:
        """JSON of the records collected so far: a batch is written before it grows large."""
        return self._record_bytes

    def advance(self, time_us: int, endpoint: str) -> None:
        """Move the cursor past an event, applied or not (docs/ingest.md: a quiet collection
        must not re-read the rewind window forever)."""
        if self._cursor_us is None or time_us > self._cursor_us:
            self._cursor_us = time_us
        self._endpoint = endpoint

    def note_gap(self, gap: CursorGap) -> None:
        self._gaps.append(gap)

    @property
    def has_pending(self) -> bool:
        return self._seq > 0 or bool(self._gaps) or self._cursor_us is not None

    def add(self, event: Event) -> None:
        self._seq += 1
        if isinstance(event, CommitEvent):
            self._add_commit(event)
        elif isinstance(event, AccountEvent):
            self._add_account(event)
        elif isinstance(event, IdentityEvent):
            self._add_identity(event)

    def _add_commit(self, event: CommitEvent) -> None:
        op = event.commit
        deleted = op.operation == "delete"
        columns = self._commits
        columns["seq"].append(self._seq)
        columns["uri"].append(f"at://{event.did}/{op.collection}/{op.rkey}")
        columns["did"].append(event.did)
        columns["collection"].append(op.collection)
        columns["rkey"].append(op.rkey)
        columns["deleted"].append(deleted)
        columns["rev"].append(op.rev)
        columns["cid"].append(None if deleted else op.cid)
        # Checked at the door (atproto/events.py): JSON in the data model, encoded afresh as UTF-8.
        record = None if deleted else bytes(op.record).decode()
        columns["record"].append(record)
        self._record_bytes += 0 if record is None else len(record)
        columns["time_us"].append(event.time_us)

    def _add_account(self, event: AccountEvent) -> None:
        info = event.account
        columns = self._accounts
        columns["seq"].append(self._seq)
        columns["did"].append(event.did)
        columns["active"].append(info.active)
        columns["status"].append(info.status)
        columns["event_time"].append(info.time)
        columns["event_seq"].append(info.seq)
        columns["time_us"].append(event.time_us)

    def _add_identity(self, event: IdentityEvent) -> None:
        info = event.identity
        columns = self._identities
        columns["seq"].append(self._seq)
        columns["did"].append(event.did)
        columns["handle"].append(info.handle)
        columns["event_time"].append(info.time)
        columns["event_seq"].append(info.seq)
        columns["time_us"].append(event.time_us)

    def build(self) -> EventBatch:
        """Hand over everything collected so far and start empty."""
        batch = EventBatch(
            commits=pa.table(self._commits, schema=COMMIT_SCHEMA),
            accounts=pa.table(self._accounts, schema=ACCOUNT_SCHEMA),
            identities=pa.table(self._identities, schema=IDENTITY_SCHEMA),
            cursor_us=self._cursor_us,
            endpoint=self._endpoint,
            gaps=self._gaps,
        )
        self._reset()
        return batch
