"""Page cursors carry a keyed MAC (docs/api.md, "Stable pages"): only the API makes them,
with a key kept beside the mirror file that every API process over the file shares.

Apps run through Litestar's test client over real files; the key file's race is run by
real processes.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from mirror_api.cursor_key import KEY_BYTES, cursor_key, cursor_key_path
from mirror_api.paging import MAX_CURSOR_CHARACTERS, TAG_BYTES
from mirror_assets.atproto.syntax import is_did, is_nsid, is_record_key
from mirror_assets.store.file import FileStore
from tests.support.api_helpers import ROOT, api_client, settings_for, store_rows
from tests.support.events_factory import CARD, at, create, did
from tests.support.store_helpers import apply_events

Client = TestClient[Litestar]
BAD_CURSOR = {"error": "Invalid cursor parameter"}
ALICE = did("alice")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Five records of one user, one a second apart."""
    path = tmp_path / "mirror.duckdb"
    apply_events(path, [create(ALICE, f"r{i}", rev=i + 1, t=i) for i in range(5)])
    return path


@pytest.fixture
def client(db: Path) -> Iterator[Client]:
    with api_client(settings_for(db)) as client:
        yield client


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(cursor: str) -> bytes:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))


def _signed(key: bytes, payload: bytes) -> str:
    """A cursor as the API makes one, with `key`."""
    return _b64(hashlib.blake2b(payload, digest_size=TAG_BYTES, key=key).digest() + payload)


def _first_cursor(client: Client, path: str = f"/records/{CARD}") -> str:
    response = client.get(path, params={"limit": 2})
    assert response.status_code == 200, response.text
    cursor: str = response.json()["cursor"]
    return cursor


def _page(client: Client, cursor: str, path: str = f"/records/{CARD}") -> tuple[int, object]:
    response = client.get(path, params={"limit": 2, "cursor": cursor})
    return response.status_code, response.json()


def test_a_cursor_signed_with_the_files_key_is_taken(client: Client, db: Path) -> None:
    """The key beside the file signs the cursors: a position signed with it is a page."""
    cursor = _first_cursor(client)
    key = cursor_key_path(db).read_bytes()
    payload = _unb64(cursor)[TAG_BYTES:]
    assert _signed(key, payload) == cursor
    status, body = _page(client, cursor)
    assert status == 200
    assert [r["rkey"] for r in body["records"]] == ["r2", "r1"]  # type: ignore[index]


def test_a_cursor_made_with_another_key_is_refused(client: Client, db: Path) -> None:
    payload = _unb64(_first_cursor(client))[TAG_BYTES:]
    other_key = os.urandom(KEY_BYTES)
    assert _page(client, _signed(other_key, payload)) == (400, BAD_CURSOR)


def test_a_cursor_of_the_old_unkeyed_checksum_is_refused(client: Client) -> None:
    """Cursors given out before cursors were keyed (a 4-byte unkeyed BLAKE2b) are a 400."""
    payload = _unb64(_first_cursor(client))[TAG_BYTES:]
    old = _b64(hashlib.blake2b(payload, digest_size=4).digest() + payload)
    assert _page(client, old) == (400, BAD_CURSOR)


@pytest.mark.parametrize("where", ["tag", "position", "endpoint"])
def test_a_tampered_cursor_is_refused(client: Client, where: str) -> None:
    raw = bytearray(_unb64(_first_cursor(client)))
    payload_at = TAG_BYTES
    spot = {"tag": 0, "position": len(raw) - 1, "endpoint": payload_at}[where]
    raw[spot] ^= 0x01
    assert _page(client, _b64(bytes(raw))) == (400, BAD_CURSOR)


def test_a_records_cursor_is_refused_on_users(client: Client) -> None:
    assert _page(client, _first_cursor(client), f"/users/{CARD}") == (400, BAD_CURSOR)


def test_a_cursor_longer_than_the_bound_is_refused_even_if_signed(client: Client, db: Path) -> None:
    """The length is checked before anything is decoded: a signed cursor past the bound is
    refused, one of the same make within it is a page."""
    key = cursor_key(db)
    within = _signed(key, f"records {at(3)} at://x".encode())
    assert _page(client, within)[0] == 200
    text = "at://" + "x" * MAX_CURSOR_CHARACTERS
    beyond = _signed(key, f"records {at(3)} {text}".encode())
    assert len(beyond) > MAX_CURSOR_CHARACTERS
    assert _page(client, beyond) == (400, BAD_CURSOR)


def test_the_longest_uri_the_protocol_allows_fits_in_a_cursor(tmp_path: Path) -> None:
    """A did:web of a whole host name, an NSID and a record key at their limits: its cursor
    is within the bound, and leads to the next page."""
    host = ".".join(["a" * 63] * 3 + ["b" * 57, "com"])
    collection = ".".join(["com"] + ["c" * 63] * 4) + "." + "n" * 57
    longest_did, rkeys = f"did:web:{host}", ["k" * 511 + "1", "k" * 511 + "2"]
    assert len(host) == 253 and len(collection) == 317
    assert is_did(longest_did) and is_nsid(collection) and all(map(is_record_key, rkeys))
    db = tmp_path / "mirror.duckdb"
    FileStore(db).init()
    uris = store_rows(
        db, [longest_did] * 2, ['{"$type":"x"}'] * 2, [at(1), at(2)], collection, rkeys=rkeys
    )
    with api_client(settings_for(db, collection)) as client:
        cursor = _first_cursor_of_one(client, f"/records/{collection}")
        assert len(cursor) <= MAX_CURSOR_CHARACTERS
        response = client.get(f"/records/{collection}", params={"limit": 1, "cursor": cursor})
    assert response.status_code == 200, response.text
    assert [r["uri"] for r in response.json()["records"]] == [uris[0]]


def _first_cursor_of_one(client: Client, path: str) -> str:
    response = client.get(path, params={"limit": 1})
    assert response.status_code == 200, response.text
    cursor: str = response.json()["cursor"]
    return cursor


def test_two_apps_over_one_file_take_each_others_cursors(db: Path) -> None:
    """Several API workers (API_WORKERS), or one restarted: one key, so any cursor works."""
    with api_client(settings_for(db)) as first, api_client(settings_for(db)) as second:
        from_first, from_second = _first_cursor(first), _first_cursor(second)
        assert from_first == from_second
        assert _page(second, from_first) == _page(first, from_first)
        assert _page(first, from_second)[0] == 200


def test_a_key_file_already_there_is_reused(db: Path) -> None:
    key = os.urandom(KEY_BYTES)
    path = cursor_key_path(db)
    path.write_bytes(key)
    path.chmod(0o600)
    with api_client(settings_for(db)) as client:
        cursor = _first_cursor(client)
    assert cursor == _signed(key, _unb64(cursor)[TAG_BYTES:])
    assert path.read_bytes() == key


def test_the_key_file_is_private_even_under_umask_0(db: Path) -> None:
    previous = os.umask(0)
    try:
        with api_client(settings_for(db)) as client:
            _first_cursor(client)
    finally:
        os.umask(previous)
    key_file = cursor_key_path(db)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_bytes()) == KEY_BYTES
    assert sorted(p.name for p in db.parent.iterdir() if "cursor-key" in p.name) == [
        key_file.name
    ], "a temporary key file was left behind"


def test_a_key_file_open_to_others_is_made_private(db: Path) -> None:
    """A key file others can read lets them sign cursors: its mode is narrowed on use."""
    path = cursor_key_path(db)
    path.write_bytes(os.urandom(KEY_BYTES))
    path.chmod(0o644)
    assert cursor_key(db) == path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "content", [b"", b"short", b"k" * (KEY_BYTES + 1)], ids=["empty", "short", "long"]
)
def test_a_key_file_of_the_wrong_size_is_an_error_not_a_weak_key(db: Path, content: bytes) -> None:
    cursor_key_path(db).write_bytes(content)
    with api_client(settings_for(db)) as client:
        response = client.get(f"/records/{CARD}", params={"limit": 2})
    assert response.status_code == 500
    assert response.json() == {"error": "Internal server error"}
    assert cursor_key_path(db).read_bytes() == content  # left for the operator to look at


# Each process waits for the `go` file, then reads (or makes) the key and prints it.
_RACER = """
import sys, time
from pathlib import Path
from mirror_api.cursor_key import cursor_key
db, go = Path(sys.argv[1]), Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
print(cursor_key(db).hex())
"""


@contextmanager
def _racers(db: Path, go: Path, count: int) -> Iterator[list[subprocess.Popen[str]]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(db), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    try:
        yield racers
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
            racer.wait()


def test_processes_making_the_key_at_once_all_get_the_same_one(tmp_path: Path) -> None:
    """API workers start together: whichever links its key first, all read that one."""
    db, go = tmp_path / "data" / "mirror.duckdb", tmp_path / "go"
    with _racers(db, go, 6) as racers:
        time.sleep(1.0)  # every process has started and waits for the signal
        go.touch()
        outputs = [racer.communicate(timeout=60) for racer in racers]
    assert [racer.returncode for racer in racers] == [0] * 6, [err for _, err in outputs]
    keys = {out.strip() for out, _ in outputs}
    assert len(keys) == 1, keys
    assert bytes.fromhex(keys.pop()) == cursor_key_path(db).read_bytes()
    assert [p.name for p in db.parent.iterdir()] == [cursor_key_path(db).name]
