"""CollectionFilter: exact NSIDs and `prefix.*` wildcards, validated as Jetstream expects."""

from __future__ import annotations

import pytest

from mirror_assets.atproto.nsids import MAX_COLLECTIONS, CollectionFilter


def test_exact_nsids_match_only_themselves() -> None:
    tracked = CollectionFilter.parse("app.blento.card,app.blento.page")
    assert tracked.patterns == ("app.blento.card", "app.blento.page")
    assert tracked.matches("app.blento.card")
    assert tracked.matches("app.blento.page")
    assert not tracked.matches("app.blento.cards")
    assert not tracked.matches("app.blento.car")
    assert not tracked.matches("app.blento")
    assert not tracked.matches("app.bsky.feed.post")


def test_prefix_wildcard_matches_below_the_prefix_only() -> None:
    tracked = CollectionFilter.parse("app.blento.*")
    assert tracked.matches("app.blento.card")
    assert tracked.matches("app.blento.deep.nested.thing")
    assert not tracked.matches("app.blento")  # the prefix itself is not below it
    assert not tracked.matches("app.blentox.card")
    assert not tracked.matches("app.bsky.feed.post")


def test_exact_and_wildcards_mix() -> None:
    tracked = CollectionFilter.parse("app.blento.card, com.example.*")
    assert tracked.exact == frozenset({"app.blento.card"})
    assert tracked.prefixes == ("com.example.",)
    assert tracked.matches("app.blento.card")
    assert tracked.matches("com.example.thing")
    assert not tracked.matches("app.blento.page")


def test_parse_trims_drops_empty_entries_and_duplicates() -> None:
    tracked = CollectionFilter.parse(" app.blento.card ,, app.blento.page,app.blento.card, ")
    assert tracked.patterns == ("app.blento.card", "app.blento.page")
    assert str(tracked) == "app.blento.card,app.blento.page"


@pytest.mark.parametrize("value", ["", " ", ",", " , ,"])
def test_empty_is_rejected(value: str) -> None:
    with pytest.raises(ValueError, match="COLLECTIONS is empty"):
        CollectionFilter.parse(value)


@pytest.mark.parametrize(
    "entry",
    [
        "app",  # one segment
        "app.blento",  # two segments: not an NSID
        "*",  # everything: Jetstream takes no bare wildcard
        "app.*.card",  # wildcard in the middle
        "app.blento*",  # wildcard not after a dot
        "app.blento.**",
        "app..card",
        ".app.blento.card",
        "app.blento.card.",
        "app.blento.ca rd",
        "app.blento.card/x",
        "app.blento.-card",
        "app.blento_x.card",
        "app.blento.é",
    ],
)
def test_invalid_entries_are_rejected_with_a_clear_error(entry: str) -> None:
    with pytest.raises(ValueError) as caught:
        CollectionFilter.parse(f"app.blento.page,{entry}")
    message = str(caught.value)
    assert repr(entry.strip()) in message
    assert "neither an NSID" in message


def test_a_hundred_collections_are_accepted() -> None:
    value = ",".join(f"com.example.c{i}" for i in range(MAX_COLLECTIONS))
    assert len(CollectionFilter.parse(value).patterns) == 100


def test_more_than_a_hundred_are_rejected() -> None:
    value = ",".join(f"com.example.c{i}" for i in range(MAX_COLLECTIONS + 1))
    with pytest.raises(ValueError, match=r"names 101 entries; Jetstream takes 100"):
        CollectionFilter.parse(value)


def test_duplicates_do_not_count_against_the_limit() -> None:
    value = ",".join(["com.example.same"] * 150 + [f"com.example.c{i}" for i in range(99)])
    assert len(CollectionFilter.parse(value).patterns) == 100
