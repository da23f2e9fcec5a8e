"""The secret that signs the API's page cursors, kept in a file beside the mirror's data.

A cursor carries a keyed MAC (paging.py), so only this API can make one: a client cannot
mint cursors at will, each a distinct question whose answer the API would compute and keep.
The key is made on first use, 32 random bytes in `<MIRROR_DB>.cursor-key`, readable by its
owner only; every API process over the same file (API_WORKERS, a restart) reads the same
key, so a cursor made by one is good at all of them (docs/api.md).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path

KEY_BYTES = 32
KEY_FILE_MODE = 0o600


class CursorKeyError(RuntimeError):
    """The key file is there but is not a key this API made."""


def cursor_key_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".cursor-key")


def cursor_key(db_path: Path) -> bytes:
    """The key beside `db_path`, made now if there is none yet."""
    path = cursor_key_path(db_path)
    try:
        return _read_key(path)
    except FileNotFoundError:
        _create_key(path)
    return _read_key(path)


def _create_key(path: Path) -> None:
    """Write a new key under a temporary name, then link it to the final one: a link either
    makes the whole file appear or fails because another process linked first, so processes
    starting together all end up reading the one key that won."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file with mode 0600, which no umask can widen.
    fd, temporary = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(KEY_BYTES))
            out.flush()
            os.fsync(out.fileno())
        # Another process that made the key first wins: its key is the one.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        Path(temporary).unlink()


def _read_key(path: Path) -> bytes:
    with path.open("rb") as source:
        status = os.fstat(source.fileno())
        if status.st_mode & 0o077 and status.st_uid == os.geteuid():
            os.fchmod(source.fileno(), KEY_FILE_MODE)  # anyone who reads it can forge cursors
        key = source.read(KEY_BYTES + 1)
    if len(key) != KEY_BYTES:
        raise CursorKeyError(
            f"{path} holds {len(key)} bytes, not a {KEY_BYTES}-byte cursor key; remove it and "
            "the API makes a new one (cursors given out before become invalid)"
        )
    return key
