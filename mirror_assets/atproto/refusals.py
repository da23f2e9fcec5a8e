"""What the mirror refuses at its door, by reason, and how refusals are counted.

Whatever comes from the network (Jetstream frames, PDS answers, DID documents) is checked
where it enters (docs/validation.md). Something refused is skipped, never raised out of a
reader: it is counted by reason, its first few are logged, and one example per reason goes
into the run's metadata, so a new kind of refusal shows in the Dagster UI.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

log = logging.getLogger(__name__)

LOGGED_PER_REASON = 5
SAMPLE_CHARACTERS = 300  # an example's detail is cut to this; a refused value can be huge


class Reason(StrEnum):
    """Why something from the network was refused (each is a metadata key `refused_...`)."""

    # Jetstream frames
    MALFORMED = "malformed"  # not JSON, not text, or no kind/time_us
    TOO_DEEP = "too_deep"  # nested deeper than any valid frame can be
    UNKNOWN_KIND = "unknown_kind"  # a kind this mirror does not know
    INVALID = "invalid"  # a known kind with missing or mistyped fields
    TIME_OUT_OF_RANGE = "time_out_of_range"  # before the network existed, or in the future
    # identifiers (atproto.com/specs)
    INVALID_DID = "invalid_did"  # not a did:plc or did:web DID in its exact syntax
    INVALID_COLLECTION = "invalid_collection"  # not an NSID
    INVALID_RKEY = "invalid_rkey"  # not a record key
    INVALID_REV = "invalid_rev"  # a commit's rev that is not a TID
    INVALID_CID = "invalid_cid"
    # record values: the data model (atproto.com/specs/data-model)
    RECORD_NOT_JSON = "record_not_json"  # broken JSON, or strings that are not Unicode
    RECORD_NOT_OBJECT = "record_not_object"  # not an object, or one shaped like a blob or link
    RECORD_TOO_LARGE = "record_too_large"  # more than 2 MiB of JSON
    RECORD_TOO_DEEP = "record_too_deep"  # containers nested more than 32 deep
    RECORD_TOO_LONG = "record_too_long"  # a container of 131,072+ elements, or a key of 8 KiB+
    RECORD_FLOAT = "record_float"  # a number with a fraction
    RECORD_INTEGER_RANGE = "record_integer_range"  # an integer outside 64 bits
    RECORD_BAD_TYPE = "record_bad_type"  # `$type` missing (records) or not a non-empty string
    RECORD_BAD_KEY = "record_bad_key"  # an empty key
    RECORD_BAD_BYTES = "record_bad_bytes"  # a `$bytes` object that is not one base64 string
    RECORD_BAD_LINK = "record_bad_link"  # a `$link` object that is not one CID string
    RECORD_BAD_BLOB = "record_bad_blob"  # a blob without its ref, mimeType or size
    # PDS answers
    OTHER_REPO_OR_COLLECTION = "other_repo_or_collection"  # a listed record of another listing
    INVALID_CURSOR = "invalid_cursor"  # a page cursor too long to keep


class RefusedError(Exception):
    """One input broke a rule: the reason it counts under, and a detail for people."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Refusals:
    """Refusals of one run, by reason, with the first example of each."""

    counts: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)

    def add(self, reason: Reason, detail: str, source: str) -> None:
        self.counts[reason] += 1
        seen = self.counts[reason]
        if seen == 1:
            self.samples[reason] = f"{source}: {detail}"[:SAMPLE_CHARACTERS]
        if seen <= LOGGED_PER_REASON:
            log.warning("refused (%s) from %s: %s", reason, source, detail[:SAMPLE_CHARACTERS])

    def refuse(self, error: RefusedError, source: str) -> None:
        self.add(error.reason, error.detail, source)

    def update(self, other: Refusals) -> None:
        self.counts.update(other.counts)
        for reason, sample in other.samples.items():
            self.samples.setdefault(reason, sample)

    def __len__(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict[str, int]:
        """`refused_<reason>` counts, for run metadata."""
        return {f"refused_{reason}": n for reason, n in sorted(self.counts.items())}
