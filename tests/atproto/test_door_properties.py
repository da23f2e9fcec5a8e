"""Properties of the door (docs/validation.md), over generated input: no frame makes the
decoder raise, and no record value makes the data-model check raise anything but a refusal;
what passes is JSON every reader takes."""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient

from mirror_api.app import create_app
from mirror_assets.atproto.data_model import MAX_INTEGER, MIN_INTEGER, check_record
from mirror_assets.atproto.events import BadFrame, CommitEvent, decode_frame
from mirror_assets.atproto.refusals import Reason, RefusedError
from tests.support.api_helpers import settings_for
from tests.support.events_factory import BASE_US, CARD, create, did, latest_us
from tests.support.store_helpers import apply_events

_DUCKDB = duckdb.connect()
_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["", "$type", "$link", "$bytes", "a", "b", "size", "ref", "mimeType"])
            | st.text(max_size=8),
            children,
            max_size=4,
        )
    ),
    max_leaves=25,
)
records = st.dictionaries(st.text(max_size=8), json_values, max_size=5).map(
    lambda value: {"$type": CARD, **value}
)


def _walk(value: Any) -> list[Any]:
    """Every scalar of a decoded JSON value."""
    if isinstance(value, dict):
        return [item for child in value.values() for item in _walk(child)]
    if isinstance(value, list):
        return [item for child in value for item in _walk(child)]
    return [value]


def _assert_checked_json(checked: bytes) -> None:
    """What passes: JSON with integers only, in 64 bits, that DuckDB's JSON type takes and that
    checks to itself again."""
    value = json.loads(checked)
    for scalar in _walk(value):
        assert not isinstance(scalar, float)
        if isinstance(scalar, int) and not isinstance(scalar, bool):
            assert MIN_INTEGER <= scalar <= MAX_INTEGER
    _DUCKDB.execute("SELECT ?::JSON", [checked.decode()]).fetchall()
    assert check_record(checked) == checked


@_SETTINGS
@given(st.one_of(json_values, records))
def test_a_record_value_passes_as_checked_json_or_is_refused(value: Any) -> None:
    try:
        checked = check_record(json.dumps(value).encode())
    except RefusedError as refused:
        assert isinstance(refused.reason, Reason)
        return
    _assert_checked_json(checked)
    original = [s for s in _walk(value) if isinstance(s, float)]
    assert all(number.is_integer() for number in original)  # other floats never pass


@_SETTINGS
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_no_bytes_make_the_record_check_raise_anything_but_a_refusal(raw: bytes) -> None:
    try:
        checked = check_record(raw)
    except RefusedError:
        return
    _assert_checked_json(checked)


@_SETTINGS
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_no_frame_makes_the_decoder_raise(frame: bytes | str) -> None:
    decoded = decode_frame(frame, latest_us())
    assert isinstance(decoded, BadFrame) or decoded.did


frames = st.fixed_dictionaries(
    {
        "did": st.sampled_from([did("alice"), "did:web:example.com"]) | st.text(max_size=40),
        "time_us": st.integers(min_value=-(2**70), max_value=2**70)
        | st.integers(min_value=BASE_US, max_value=BASE_US + 10**9),
        "kind": st.sampled_from(["commit", "identity", "account", "sync"]),
        "commit": st.fixed_dictionaries(
            {
                "rev": st.sampled_from(["3jzfcijpj2z2a"]) | st.text(max_size=14),
                "operation": st.sampled_from(["create", "update", "delete", "upsert"]),
                "collection": st.sampled_from([CARD, "app.blento.page"]) | st.text(max_size=30),
                "rkey": st.sampled_from(["3jzfcijpj2z2a", "self"]) | st.text(max_size=20),
                "record": json_values | records,
                "cid": st.sampled_from([create(did("a"), "k", rev=1, t=0)["commit"]["cid"]])
                | st.text(max_size=60),
            }
        ),
        "identity": st.fixed_dictionaries(
            {"did": st.text(max_size=40), "seq": st.integers(), "time": st.text(max_size=30)}
        ),
        "account": json_values,
    }
)


@_SETTINGS
@given(frames)
def test_no_frame_shape_makes_the_decoder_raise_and_what_passes_is_checked(
    event: dict[str, Any],
) -> None:
    latest = latest_us()
    decoded = decode_frame(json.dumps(event), latest)
    if isinstance(decoded, BadFrame):
        assert decoded.time_us is None or decoded.time_us <= latest
        return
    assert decoded.time_us <= latest
    if isinstance(decoded, CommitEvent) and decoded.commit.operation != "delete":
        _assert_checked_json(bytes(decoded.commit.record))


# Records in the data model: integers in 64 bits, no floats, keys neither empty nor `$...`.
model_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=MIN_INTEGER, max_value=MAX_INTEGER)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(min_size=1, max_size=8).filter(lambda key: not key.startswith("$")),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)
model_records = st.dictionaries(
    st.text(min_size=1, max_size=8).filter(lambda key: not key.startswith("$")),
    model_values,
    max_size=5,
).map(lambda value: {"$type": CARD, **value})


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(model_records)
def test_a_record_in_the_data_model_passes_the_door_and_is_served_as_it_came(
    tmp_path_factory: pytest.TempPathFactory, value: dict[str, Any]
) -> None:
    """The ingest path end to end: a frame in, a page out; no record that passed the door
    can fail a page."""
    event = create(did("alice"), "3kcard", rev=1, t=1)
    event["commit"]["record"] = value
    decoded = decode_frame(json.dumps(event), latest_us())
    assert isinstance(decoded, CommitEvent), decoded
    db = tmp_path_factory.mktemp("page") / "mirror.duckdb"
    apply_events(db, [event])
    app = create_app(settings_for(db))
    with TestClient[Litestar](app=app) as client:
        response = client.get(f"/records/{CARD}")
    assert response.status_code == 200, response.text
    [served] = response.json()["records"]
    assert served["record"] == value
