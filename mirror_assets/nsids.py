"""Tracked collections: exact NSIDs and `prefix.*` wildcards, as Jetstream's `wantedCollections`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# An NSID is three or more dot-separated segments; this check is deliberately lenient
# (letters, digits and inner hyphens in every segment) and leaves the fine print to
# Jetstream. A wildcard replaces the final segments with `*`.
_SEGMENT = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NSID = re.compile(rf"^{_SEGMENT}(?:\.{_SEGMENT}){{2,}}$")
_PREFIX = re.compile(rf"^{_SEGMENT}(?:\.{_SEGMENT})*\.\*$")
MAX_COLLECTIONS = 100  # Jetstream's own limit on wantedCollections


def is_nsid(text: str) -> bool:
    """One exact NSID (no wildcard, no list)."""
    return _NSID.fullmatch(text) is not None


@dataclass(frozen=True)
class CollectionFilter:
    """The set of collections the mirror tracks."""

    patterns: tuple[str, ...]
    exact: frozenset[str] = field(init=False)
    prefixes: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        # Computed once: `matches` runs for every event of the stream.
        object.__setattr__(self, "exact", frozenset(p for p in self.patterns if p[-1] != "*"))
        object.__setattr__(self, "prefixes", tuple(p[:-1] for p in self.patterns if p[-1] == "*"))

    @classmethod
    def parse(cls, value: str) -> CollectionFilter:
        patterns = tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))
        if not patterns:
            raise ValueError("COLLECTIONS is empty: name at least one NSID, e.g. app.blento.card")
        if len(patterns) > MAX_COLLECTIONS:
            raise ValueError(f"COLLECTIONS names {len(patterns)} entries; Jetstream takes 100")
        for pattern in patterns:
            if not (_NSID.match(pattern) or _PREFIX.match(pattern)):
                raise ValueError(
                    f"COLLECTIONS entry {pattern!r} is neither an NSID (app.blento.card) "
                    "nor a prefix wildcard (app.blento.*)"
                )
        return cls(patterns)

    def matches(self, collection: str) -> bool:
        return collection in self.exact or collection.startswith(self.prefixes)

    def __str__(self) -> str:
        return ",".join(self.patterns)
