"""Record values checked against the AT Protocol data model, whatever their lexicon.

The data model (atproto.com/specs/data-model) is JSON without floats: integers of 64 bits
at most, strings of Unicode, `$bytes` and `$link` objects of one base64 or CID string,
blobs with their ref, MIME type and size, and `$type` a non-empty string wherever it
appears (and always at a record's top level). The limits are the ones the protocol's data
validation guide recommends: 2 MiB of JSON per record, 32 levels of nesting, 131,072
elements per container and 8 KiB per key.

`check_record` returns the record re-encoded from what was checked, so what the mirror
stores, and the API serves as it is, is exactly what passed: no duplicate keys, no escape
DuckDB or a client would refuse. A float with an integral value (`12.0`) is the integer
it spells, as JavaScript reads it; it is stored as `12`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import msgspec

from mirror_assets.atproto.refusals import Reason, RefusedError
from mirror_assets.atproto.syntax import is_cid

MAX_RECORD_BYTES = 2 * 1024 * 1024  # the guide's MAX_JSON_RECORD_SIZE
MAX_DEPTH = 32  # MAX_CBOR_NESTED_LEVELS: the record itself is level 1
MAX_CONTAINER_LENGTH = 128 * 1024  # MAX_CBOR_CONTAINER_LEN
MAX_KEY_BYTES = 8192  # MAX_CBOR_OBJECT_KEY_LEN
MIN_INTEGER, MAX_INTEGER = -(2**63), 2**63 - 1

_BASE64 = re.compile(r"[A-Za-z0-9+/]*")  # RFC 4648 section 4, padding stripped first
_BLOB_KEYS = frozenset({"$type", "ref", "mimeType", "size"})
_CONTAINERS = frozenset({dict, list})


def _integral(text: str) -> int:
    """The decoder's hook for numbers with a fraction or an exponent: one that spells an
    integer (`12.0`, `1e3`) is that integer, as JavaScript reads it; any other is refused."""
    number = float(text)
    if number.is_integer() and MIN_INTEGER <= number <= MAX_INTEGER:
        return int(number)
    raise RefusedError(Reason.RECORD_FLOAT, f"{text[:40]} is not an integer")


_decode = msgspec.json.Decoder(float_hook=_integral).decode
_encode = msgspec.json.Encoder().encode


def check_record(raw: bytes) -> bytes:
    """The record as checked JSON bytes, or `RefusedError` with the rule it breaks."""
    if len(raw) > MAX_RECORD_BYTES:
        raise RefusedError(Reason.RECORD_TOO_LARGE, f"{len(raw)} bytes of JSON")
    value = _parse(raw)
    if type(value) is not dict:
        raise RefusedError(Reason.RECORD_NOT_OBJECT, f"a record is an object, not {_kind(value)}")
    record_type = value.get("$type")
    if type(record_type) is not str or not record_type:
        raise RefusedError(Reason.RECORD_BAD_TYPE, "a record's $type must be a non-empty string")
    if record_type == "blob" or "$link" in value or "$bytes" in value:
        raise RefusedError(Reason.RECORD_NOT_OBJECT, "a record cannot be a blob, link or bytes")
    _check_tree(value, long_keys=len(raw) > MAX_KEY_BYTES)
    return _encode(value)


def _parse(raw: bytes) -> Any:
    try:
        return _decode(raw)
    except RecursionError:
        raise RefusedError(Reason.RECORD_TOO_DEEP, "nested past the decoder's limit") from None
    except msgspec.ValidationError as error:  # an integer of thousands of digits
        raise RefusedError(Reason.RECORD_INTEGER_RANGE, str(error)) from None
    except msgspec.DecodeError as error:
        raise RefusedError(Reason.RECORD_NOT_JSON, str(error)) from None


def _check_tree(root: dict[str, Any], long_keys: bool) -> None:
    """Every object and array of the record, iteratively (no recursion a record could
    exhaust): its depth, its length, its keys, the shape the data model gives it, and its
    integers. (Floats never get here: the decoder's hook refuses them.)"""
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RefusedError(Reason.RECORD_TOO_DEEP, f"more than {MAX_DEPTH} levels")
        if len(node) > MAX_CONTAINER_LENGTH:
            raise RefusedError(Reason.RECORD_TOO_LONG, f"a container of {len(node)} elements")
        if isinstance(node, dict):
            if "" in node:
                raise RefusedError(Reason.RECORD_BAD_KEY, "an object key is empty")
            if long_keys:
                _check_key_lengths(node)
            if ("$type" in node or "$link" in node or "$bytes" in node) and not _check_special(
                node
            ):
                continue
            items: Iterable[Any] = node.values()
        else:
            items = node
        for item in items:
            kind = type(item)
            if kind in _CONTAINERS:
                stack.append((item, depth + 1))
            elif kind is int and not MIN_INTEGER <= item <= MAX_INTEGER:
                raise RefusedError(Reason.RECORD_INTEGER_RANGE, f"{item} does not fit in 64 bits")


def _check_special(node: dict[str, Any]) -> bool:
    """Check an object the data model gives a shape (`$link`, `$bytes`, a blob, `$type`);
    whether its values are left to check as those of any object."""
    if "$link" in node:
        _check_link(node)
        return False
    if "$bytes" in node:
        value = node["$bytes"]
        if len(node) != 1 or type(value) is not str or not _is_base64(value):
            raise RefusedError(Reason.RECORD_BAD_BYTES, "$bytes is one base64 string")
        return False
    if "$type" in node:
        node_type = node["$type"]
        if type(node_type) is not str or not node_type:
            raise RefusedError(Reason.RECORD_BAD_TYPE, "$type must be a non-empty string")
        if node_type == "blob":
            _check_blob(node)
            return False
    return True


def _check_link(node: dict[str, Any]) -> None:
    value = node["$link"]
    if len(node) != 1 or type(value) is not str or not is_cid(value):
        raise RefusedError(Reason.RECORD_BAD_LINK, "$link is one CID string")


def _check_blob(node: dict[str, Any]) -> None:
    ref, mime_type, size = node.get("ref"), node.get("mimeType"), node.get("size")
    if (
        node.keys() != _BLOB_KEYS
        or type(ref) is not dict
        or "$link" not in ref
        or type(mime_type) is not str
        or not mime_type
        or type(size) is not int
        or not 0 <= size <= MAX_INTEGER
    ):
        raise RefusedError(
            Reason.RECORD_BAD_BLOB, "a blob has exactly $type, ref, a mimeType and a size"
        )
    _check_link(ref)


def _check_key_lengths(node: dict[str, Any]) -> None:
    for key in node:
        if len(key) > MAX_KEY_BYTES // 4 and len(key.encode()) > MAX_KEY_BYTES:
            raise RefusedError(Reason.RECORD_TOO_LONG, f"a key of {len(key.encode())} bytes")


def _is_base64(text: str) -> bool:
    """Base64 whose `=` padding, if any, is whole: the data model makes it optional."""
    unpadded = text.rstrip("=")
    padding = len(text) - len(unpadded)
    if padding > 2 or (padding and len(text) % 4):
        return False
    return len(unpadded) % 4 != 1 and _BASE64.fullmatch(unpadded) is not None


def _kind(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )
