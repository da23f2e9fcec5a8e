"""The AT Protocol's identifier syntax (atproto.com/specs): examples from each specification
and the edges of each rule."""

from __future__ import annotations

import pytest

from mirror_assets.atproto.syntax import (
    is_cid,
    is_did,
    is_handle,
    is_nsid,
    is_nsid_prefix,
    is_record_key,
    is_resolvable_handle,
    is_tid,
)


@pytest.mark.parametrize(
    "did",
    [
        "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
        "did:web:user.example.com",
        "did:web:example.com",
        "did:web:localhost",
        "did:web:localhost%3A8080",
        "did:web:localhost%3a2583",
        "did:web:xn--ls8h.test",
    ],
)
def test_dids_of_the_supported_methods(did: str) -> None:
    assert is_did(did)


@pytest.mark.parametrize(
    "did",
    [
        "did:method:val:two",  # valid DID syntax, but a method the protocol does not support
        "did:key:zQ3shZc2QzApp2oymGvQbzP8eKheVshBHbU4ZYjeXqwSKEn6N",
        "did:plc:ewvi7nxzyoun6zhxrhs64oi",  # 23 characters
        "did:plc:ewvi7nxzyoun6zhxrhs64oizz",  # 25
        "did:plc:ewvi7nxzyoun6zhxrhs64oi1",  # 1 is not base32
        "did:plc:EWVI7NXZYOUN6ZHXRHS64OIZ",  # case matters
        "did:plc:ewvi7nxzyoun6zhxrhs64oiz\n",
        "did:web:example.com%3A443",  # ports only for localhost
        "did:web:127.0.0.1",  # an IP address is not a host name
        "did:web:example.com:path",
        "did:web:example",  # one label
        "did:web:-example.com",
        "did:web:" + "a" * 250 + ".com",
        "DID:plc:ewvi7nxzyoun6zhxrhs64oiz",
        "did:METHOD:val",
        "",
    ],
)
def test_other_dids_are_refused(did: str) -> None:
    assert not is_did(did)


@pytest.mark.parametrize(
    "handle",
    ["jay.bsky.social", "8.cn", "name.t--t", "XX.LCS.MIT.EDU", "a.co", "xn--ls8h.test", "a.b"],
)
def test_valid_handles(handle: str) -> None:
    assert is_handle(handle)


@pytest.mark.parametrize(
    "handle",
    [
        "jo@hn.test",
        "john..test",
        "xn--bcher-.tld",
        "john.0",
        "cn.8",
        "org",
        "name.org.",
        "127.0.0.1",
        " a.test",
        "a.test\x00",
        ("a" * 63 + ".") * 4 + "com",  # over 253 characters
        "a" * 64 + ".com",  # a label over 63
    ],
)
def test_invalid_handles(handle: str) -> None:
    assert not is_handle(handle)


@pytest.mark.parametrize(
    ("handle", "resolvable"),
    [
        ("alice.test", True),
        ("alice.bsky.social", True),
        ("laptop.local", False),
        ("blah.arpa", False),
        ("x.onion", False),
        ("handle.invalid", False),
        ("ALICE.LOCALHOST", False),
        ("not a handle", False),
    ],
)
def test_handles_of_disallowed_top_level_domains_never_resolve(
    handle: str, resolvable: bool
) -> None:
    assert is_resolvable_handle(handle) is resolvable


@pytest.mark.parametrize(
    "nsid",
    [
        "com.example.fooBar",
        "net.users.bob.ping",
        "a-0.b-1.c",
        "a.b.c",
        "com.example.fooBarV2",
        "cn.8.lex.stuff",
        "app.blento.card",
    ],
)
def test_valid_nsids(nsid: str) -> None:
    assert is_nsid(nsid)


@pytest.mark.parametrize(
    "nsid",
    [
        "com.exa💩ple.thing",
        "com.example",
        "com.example.3",
        "com.example.foo-bar",  # no hyphen in the name
        "1com.example.foo",  # the first segment cannot start with a digit
        "com..example.foo",
        "com.example.foo/bar",
        "com.example.foo\x00",
        "com.example." + "a" * 64,
        "com." + ("a" * 63 + ".") * 5 + "foo",  # over 317 characters
        "com.example.*",
    ],
)
def test_invalid_nsids(nsid: str) -> None:
    assert not is_nsid(nsid)


@pytest.mark.parametrize(
    ("pattern", "valid"),
    [
        ("app.blento.*", True),
        ("app.*", True),
        ("*", False),
        ("app.blento*", False),
        ("app.*.card", False),
        ("app..*", False),
        ("1app.blento.*", False),
    ],
)
def test_nsid_prefix_globs(pattern: str, valid: bool) -> None:
    assert is_nsid_prefix(pattern) is valid


@pytest.mark.parametrize(
    "rkey", ["3jui7kd54zh2y", "self", "example.com", "~1.2-3_", "dHJ1ZQ", "pre:fix", "_", "k" * 512]
)
def test_valid_record_keys(rkey: str) -> None:
    assert is_record_key(rkey)


@pytest.mark.parametrize(
    "rkey",
    [
        "alpha/beta",
        ".",
        "..",
        "#extra",
        "@handle",
        "any space",
        "any+space",
        "number[3]",
        '"quote"',
        "dHJ1ZQ==",
        "",
        "k" * 513,
    ],
)
def test_invalid_record_keys(rkey: str) -> None:
    assert not is_record_key(rkey)


@pytest.mark.parametrize(
    "tid", ["3jzfcijpj2z2a", "7777777777777", "3zzzzzzzzzzzz", "2222222222222"]
)
def test_valid_tids(tid: str) -> None:
    assert is_tid(tid)


@pytest.mark.parametrize(
    "tid",
    [
        "3jzfcijpj2z21",
        "0000000000000",
        "3JZFCIJPJ2Z2A",
        "3jzfcijpj2z2aa",
        "3jzfcijpj2z2",
        "3jzf-cij-pj2z-2a",
        "zzzzzzzzzzzzz",
        "kjzfcijpj2z2a",
    ],
)
def test_invalid_tids(tid: str) -> None:
    assert not is_tid(tid)


@pytest.mark.parametrize(
    "cid",
    [
        "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
        "bafyreidfayvfuwqa7qlnopdjiqrxzs6blmoeu4rujcjtnci5beludirz2a",
        "zdj7WWeQ43G6JJvLWQWZpyHuAMq6uYWRjkBXFad11vE2LHhQ7",
    ],
)
def test_valid_cids(cid: str) -> None:
    assert is_cid(cid)


@pytest.mark.parametrize(
    "cid",
    [
        "example.com",
        "https://example.com",
        "cid:bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
        ".",
        "12345",
        " bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
        "QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR",  # CIDv0
        "b" * 257,
    ],
)
def test_invalid_cids(cid: str) -> None:
    assert not is_cid(cid)
