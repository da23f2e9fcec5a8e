"""Just enough DAG-CBOR and CAR to read the firehose: frames, commit blocks, records as JSON.

Records become JSON the way the AT Protocol data model writes them (and as the PDS's
`listRecords` and Jetstream do): a CID link (CBOR tag 42) is `{"$link": "b..."}`, a byte
string is `{"$bytes": base64 without padding}`. cbor2 keeps tag 42 apart from plain
bytes, which is why it is used here rather than a decoder that returns both as bytes.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import cbor2

CID_TAG = 42


def read_frame(frame: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """An event stream frame: a header object, then a body object, back to back."""
    stream = io.BytesIO(frame)
    decoder = cbor2.CBORDecoder(stream)
    header, body = decoder.decode(), decoder.decode()
    if stream.read(1):
        raise ValueError("trailing bytes after the frame's body")
    if not isinstance(header, dict) or not isinstance(body, dict):
        raise ValueError(f"frame parts are not maps: {header!r}")
    return header, body


def cid_string(value: Any) -> str:
    """A CID link (tag 42, or the raw binary CID of a CAR section) as its base32 string."""
    if isinstance(value, cbor2.CBORTag):
        if value.tag != CID_TAG or not value.value.startswith(b"\x00"):
            raise ValueError(f"not a CID link: {value!r}")
        value = value.value[1:]  # the identity multibase prefix of binary CIDs in DAG-CBOR
    return "b" + base64.b32encode(value).decode().lower().rstrip("=")


def read_car(data: bytes) -> dict[str, Any]:
    """The blocks of a CAR v1 file, decoded, by CID string."""
    position = 0
    header_length, position = _varint(data, position)
    position += header_length
    blocks: dict[str, Any] = {}
    while position < len(data):
        length, position = _varint(data, position)
        end = position + length
        cid_end = _cid_end(data, position)
        blocks[cid_string(data[position:cid_end])] = cbor2.loads(data[cid_end:end])
        position = end
    return blocks


def to_json(value: Any) -> Any:
    """A decoded DAG-CBOR value in the data model's JSON form."""
    if isinstance(value, cbor2.CBORTag):
        return {"$link": cid_string(value)}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode().rstrip("=")}
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_json(item) for item in value]
    return value


def _cid_end(data: bytes, position: int) -> int:
    """Where the binary CIDv1 at `position` ends: version, codec, then a multihash."""
    for _ in range(3):  # version, codec, hash function
        _, position = _varint(data, position)
    digest_length, position = _varint(data, position)
    return position + digest_length


def _varint(data: bytes, position: int) -> tuple[int, int]:
    """An unsigned LEB128 varint at `position`, and the position after it."""
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
