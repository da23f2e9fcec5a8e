"""Every answer of the API as a msgspec struct: the original Worker's shapes
(docs/api.md), with new fields only added, never removed."""

from __future__ import annotations

import msgspec


class ErrorBody(msgspec.Struct, frozen=True):
    error: str


class Health(msgspec.Struct, frozen=True):
    status: str


class Cursor(msgspec.Struct, frozen=True):
    time_us: int
    date: str  # ISO 8601, UTC
    seconds_ago: int


class NoCursor(msgspec.Struct, frozen=True):
    cursor: None = None


class Record(msgspec.Struct, frozen=True):
    uri: str
    did: str
    collection: str
    rkey: str
    cid: str
    # The record's JSON text as stored, served without decoding it (docs/api.md): it was
    # checked where it entered the mirror, and JSON may carry values a decoder refuses
    # (1e400, nesting thousands of levels deep), which would fail every page holding the
    # record. Its OpenAPI schema (an object) comes from `openapi.RecordJsonSchema`.
    record: msgspec.Raw
    time_us: int


class BackfillState(msgspec.Struct, frozen=True, omit_defaults=True):
    did: str
    collection: str
    status: str  # unknown | in_progress | complete
    state: str | None  # the mirror's own status (pending, failed, takendown, ...), or none
    error: str | None = None  # why it failed or ended; left out when there is none


class RecordsPage(msgspec.Struct, frozen=True, omit_defaults=True):
    records: list[Record]
    cursor: str | None = None  # left out on the last page
    backfill: BackfillState | None = None  # with `?did=`


class User(msgspec.Struct, frozen=True):
    did: str
    record_count: int


class UsersPage(msgspec.Struct, frozen=True, omit_defaults=True):
    users: list[User]
    cursor: str | None = None


class Stats(msgspec.Struct, frozen=True):
    collection: str
    unique_users: int
    total_records: int
    last_record_time_us: int | None
