"""Tracked collections: exact NSIDs and `prefix.*` wildcards, as Jetstream's `wantedCollections`."""

from __future__ import annotations

from dataclasses import dataclass, field

from mirror_assets.atproto.syntax import is_nsid, is_nsid_prefix

MAX_COLLECTIONS = 100  # Jetstream's own limit on wantedCollections


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
            if not (is_nsid(pattern) or is_nsid_prefix(pattern)):
                raise ValueError(
                    f"COLLECTIONS entry {pattern!r} is neither an NSID (app.blento.card) "
                    "nor a prefix wildcard (app.blento.*)"
                )
        return cls(patterns)

    def matches(self, collection: str) -> bool:
        """Whether a collection is tracked; one matched by a wildcard must be an NSID too
        (anything may follow a prefix in what a stranger sends)."""
        if collection in self.exact:
            return True
        return collection.startswith(self.prefixes) and is_nsid(collection)

    def __str__(self) -> str:
        return ",".join(self.patterns)
