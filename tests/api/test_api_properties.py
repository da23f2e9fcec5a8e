"""Properties of the API's parameters, whatever a stranger sends (docs/api.md): any `limit`,
`cursor` and `did` query value and any collection path segment is answered 200, 400 or 404
with the contract's JSON body, never a 5xx.

One app over a small real file, through Litestar's test client. Dagster is not running (a
closed port) and `?did=` waits 10 ms, so a valid DID exercises the path where Dagster
cannot be asked.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient

from mirror_api.paging import MAX_LIMIT
from tests.support.api_helpers import api_client, set_handle, settings_for
from tests.support.events_factory import CARD, PAGE, create, did
from tests.support.store_helpers import apply_events

Client = TestClient[Litestar]

ALICE, BOB = did("alice"), did("bob")
RECORDS = 12  # Alice's cards
ERRORS = {
    400: {"Invalid limit parameter", "Invalid cursor parameter", "Invalid did parameter"},
    404: {"Collection not tracked", "Not found"},
}
EXAMPLES = settings(
    max_examples=250,
    deadline=None,
    database=None,  # no example database written into the work tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    db = tmp_path_factory.mktemp("properties") / "mirror.duckdb"
    events = [create(ALICE, f"a{i:02d}", rev=i + 1, t=i) for i in range(RECORDS)]
    events.append(create(BOB, "p1", rev=1, t=3, collection=PAGE))
    apply_events(db, events)
    set_handle(db, ALICE, "alice.test")
    with api_client(settings_for(db)) as client:
        yield client


def _cursors(client: Client) -> list[str]:
    """Cursors the API made: of /records at every limit that has a next page, and of
    /users."""
    made = []
    for limit in range(1, RECORDS):
        made.append(client.get(f"/records/{CARD}", params={"limit": limit}).json()["cursor"])
    made.append(client.get(f"/users/{CARD}", params={"limit": 1}).json().get("cursor", "x"))
    return made


# What a stranger may put in a value: anything, and the shapes that reach deeper code.
_ANY_TEXT = st.text(max_size=40)
_LIMITS = st.one_of(
    st.none(),
    _ANY_TEXT,
    st.integers(-5, 10**30).map(str),
    st.integers(0, 200).map(lambda n: "0" * (n % 3) + str(n)),
)
_DIDS = st.one_of(
    st.none(),
    _ANY_TEXT,
    st.sampled_from([ALICE, BOB, did("nobody"), "alice.test", "Alice.TEST", "nobody.test"]),
    st.from_regex(r"did:(plc|web|key):[a-z2-7.%:]{0,40}", fullmatch=True),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567", min_size=20, max_size=28).map(
        lambda tail: "did:plc:" + tail
    ),
)
# Tracked collections half the time: an untracked one is a 404 before any parameter is read.
_COLLECTIONS = st.one_of(
    st.sampled_from([CARD, PAGE]),
    st.sampled_from([CARD, PAGE]),
    st.sampled_from([CARD, PAGE]),
    st.text(max_size=60),
    st.sampled_from(["app.blento.cards", "app.other.thing", "APP.BLENTO.CARD", "app.blento"]),
    st.from_regex(r"[a-z]{1,5}(\.[a-z]{1,5}){1,4}", fullmatch=True),
)


def _cursor_values(made: list[str]) -> st.SearchStrategy[str | None]:
    return st.one_of(
        st.none(),
        _ANY_TEXT,
        st.sampled_from(made),
        st.sampled_from(made).map(lambda cursor: cursor[:-1]),
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
        st.just("A" * 5000),
    )


def _segment(value: str) -> str:
    return quote(value, safe="")


def _params(**values: str | None) -> dict[str, str]:
    return {name: value for name, value in values.items() if value is not None}


def _check_contract(response: httpx.Response, keys: set[str], items: str) -> dict[str, Any]:
    """The status is 200, 400 or 404 and the body the contract's for it: on a 200, an
    object with `items` (a list) and only the given keys; else `{"error": <its message>}`."""
    assert response.status_code in (200, 400, 404), (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["access-control-allow-origin"] == "*"
    body: dict[str, Any] = response.json()
    if response.status_code == 200:
        assert items in body and isinstance(body[items], list), body
        assert set(body) <= keys, body
    else:
        assert set(body) == {"error"}, body
        assert body["error"] in ERRORS[response.status_code], body
    return body


def test_records_answers_any_parameters_by_the_contract(client: Client) -> None:
    @EXAMPLES
    @given(
        collection=_COLLECTIONS,
        limit=_LIMITS,
        cursor=_cursor_values(_cursors(client)),
        user=_DIDS,
    )
    def answers(collection: str, limit: str | None, cursor: str | None, user: str | None) -> None:
        response = client.get(
            f"/records/{_segment(collection)}", params=_params(limit=limit, cursor=cursor, did=user)
        )
        body = _check_contract(response, {"records", "cursor", "backfill"}, "records")
        if response.status_code == 200:
            assert len(body["records"]) <= MAX_LIMIT
            assert ("backfill" in body) == (user is not None)

    answers()


def test_users_answers_any_parameters_by_the_contract(client: Client) -> None:
    @EXAMPLES
    @given(collection=_COLLECTIONS, limit=_LIMITS, cursor=_cursor_values(_cursors(client)))
    def answers(collection: str, limit: str | None, cursor: str | None) -> None:
        response = client.get(
            f"/users/{_segment(collection)}", params=_params(limit=limit, cursor=cursor)
        )
        _check_contract(response, {"users", "cursor"}, "users")

    answers()


def test_stats_and_backfill_answer_any_path_by_the_contract(client: Client) -> None:
    @EXAMPLES
    @given(collection=_COLLECTIONS, user=_DIDS.filter(lambda value: value is not None))
    def answers(collection: str, user: str) -> None:
        stats = client.get(f"/stats/{_segment(collection)}")
        if stats.status_code == 200:
            assert set(stats.json()) == {
                "collection",
                "unique_users",
                "total_records",
                "last_record_time_us",
            }
        else:
            _check_contract(stats, set(), "")
        backfill = client.get(f"/backfill/{_segment(collection)}/{_segment(user)}")
        if backfill.status_code == 200:
            assert set(backfill.json()) == {"did", "collection", "status", "state"}
        else:
            _check_contract(backfill, set(), "")

    answers()


def test_a_positive_limit_gives_that_many_records_up_to_the_maximum(client: Client) -> None:
    @EXAMPLES
    @given(limit=st.integers(1, 10**40), zeros=st.integers(0, 3))
    def answers(limit: int, zeros: int) -> None:
        response = client.get(f"/records/{CARD}", params={"limit": "0" * zeros + str(limit)})
        body = _check_contract(response, {"records", "cursor"}, "records")
        assert response.status_code == 200
        assert len(body["records"]) == min(limit, MAX_LIMIT, RECORDS)
        assert ("cursor" in body) == (min(limit, MAX_LIMIT) < RECORDS)

    answers()


def test_any_change_to_a_cursor_the_api_made_is_refused(client: Client) -> None:
    """A cursor with any one byte changed, or cut anywhere, is a 400: never a page from
    somewhere the API did not send the client."""
    made = _cursors(client)[:-1]  # those of /records

    @EXAMPLES
    @given(cursor=st.sampled_from(made), data=st.data())
    def refused(cursor: str, data: st.DataObject) -> None:
        at = data.draw(st.integers(0, len(cursor) - 1))
        other = data.draw(
            st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        )
        cut = data.draw(st.booleans())
        changed = cursor[:at] if cut else cursor[:at] + other + cursor[at + 1 :]
        if changed == cursor or _same_bytes(changed, cursor):
            return
        response = client.get(f"/records/{CARD}", params={"cursor": changed})
        assert (response.status_code, response.json()) == (
            400,
            {"error": "Invalid cursor parameter"},
        ), changed

    refused()


def test_a_cursor_the_api_did_not_make_is_refused(client: Client) -> None:
    """Whatever position a forged cursor holds, signed the way cursors were before they
    were keyed, or with a key of its own, it is a 400: a client cannot make the API answer
    (and keep) pages of positions it chose."""

    @EXAMPLES
    @given(
        endpoint=st.sampled_from(["records", "users"]),
        number=st.one_of(st.integers(-(2**70), 2**70), st.integers(0, 10**17)),
        text=st.one_of(st.text(max_size=80), st.just(f"at://{ALICE}/{CARD}/a05")),
        key=st.one_of(st.none(), st.binary(min_size=32, max_size=32)),
    )
    def refused(endpoint: str, number: int, text: str, key: bytes | None) -> None:
        payload = f"{endpoint} {number} {text}".encode()
        if key is None:  # the unkeyed checksum of old cursors
            tag = hashlib.blake2b(payload, digest_size=4).digest()
        else:
            tag = hashlib.blake2b(payload, digest_size=16, key=key).digest()
        forged = base64.urlsafe_b64encode(tag + payload).decode().rstrip("=")
        response = client.get(f"/{endpoint}/{CARD}", params={"cursor": forged})
        assert (response.status_code, response.json()) == (
            400,
            {"error": "Invalid cursor parameter"},
        ), payload

    refused()


def _same_bytes(one: str, other: str) -> bool:
    """Whether two base64 texts decode to the same bytes (the last character of unpadded
    base64 carries bits that decoding drops)."""

    def decoded(text: str) -> bytes | None:
        try:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except ValueError:
            return None

    return decoded(one) is not None and decoded(one) == decoded(other)
