"""bencoding: canonical encoder, strict bounded decoder, checked against two independent implementations."""

from __future__ import annotations

from typing import Any

import bencodepy
import libtorrent as lt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pchunks.errors import BadManifest
from p2pchunks.formats.bencoding import bdecode, bencode

# (document, decoded value): every document is canonical, so it must also re-encode to itself.
VALID: list[tuple[bytes, object]] = [
    (b"i0e", 0),
    (b"i42e", 42),
    (b"i-7e", -7),
    (b"i9223372036854775807e", 2**63 - 1),
    (b"i-9223372036854775808e", -(2**63)),
    (b"0:", b""),
    (b"4:spam", b"spam"),
    (b"3:\x00\xff:", b"\x00\xff:"),
    (b"le", []),
    (b"de", {}),
    (b"li1e4:spamlee", [1, b"spam", []]),
    (b"d1:ai1e1:bli2eee", {b"a": 1, b"b": [2]}),
    (b"d0:i0e1:ade2:aai1ee", {b"": 0, b"a": {}, b"aa": 1}),
    (b"d4:infod6:lengthi5e4:name1:xee", {b"info": {b"length": 5, b"name": b"x"}}),
]

# (document, words the error must contain)
INVALID: list[tuple[bytes, str]] = [
    (b"", "empty"),
    (b"i-0e", "'-0'"),
    (b"i03e", "leading zero"),
    (b"i-03e", "leading zero"),
    (b"ie", "empty integer"),
    (b"i-e", "empty integer"),
    (b"i1x2e", "non-digit"),
    (b"i12", "not terminated"),
    (b"i12345678901234567890e", "too long"),
    (b"i9223372036854775808e", "64-bit"),
    (b"03:abc", "leading zero"),
    (b"3abc", "malformed string length"),
    (b"5:abc", "exceeds"),
    (b"99999999999:x", "exceeds"),
    (b"99999999999999999:x", "malformed string length"),
    (b"d1:bi1e1:ai2ee", "unsorted dict key"),
    (b"d1:ai1e1:ai2ee", "duplicate dict key"),
    (b"di1ei2ee", "key must be a byte string"),
    (b"dlei1ee", "key must be a byte string"),
    (b"d1:ae", "has no value"),
    (b"e", "unexpected 'e'"),
    (b"x", "unexpected byte"),
    (b"l", "truncated"),
    (b"li1e", "truncated"),
    (b"i1ei2e", "trailing data"),
    (b"lee", "trailing data"),
]


@pytest.mark.parametrize(("doc", "value"), VALID)
def test_valid_document_whole(doc: bytes, value: object) -> None:
    assert bdecode(doc) == value
    assert bencode(value) == doc


@pytest.mark.parametrize(("doc", "value"), VALID)
def test_every_prefix_of_a_valid_document_is_rejected(doc: bytes, value: object) -> None:
    for end in range(len(doc)):
        with pytest.raises(BadManifest):
            bdecode(doc[:end])


@pytest.mark.parametrize(("doc", "value"), VALID)
@pytest.mark.parametrize("tail", [b"e", b"i1e", b"0:", b"\x00", b" "])
def test_trailing_data_is_rejected(doc: bytes, value: object, tail: bytes) -> None:
    with pytest.raises(BadManifest, match="trailing data"):
        bdecode(doc + tail)


@pytest.mark.parametrize(("doc", "words"), INVALID)
def test_invalid_document(doc: bytes, words: str) -> None:
    with pytest.raises(BadManifest) as info:
        bdecode(doc)
    assert words in str(info.value)


def test_error_names_the_position() -> None:
    with pytest.raises(BadManifest, match="position 7: unsorted dict key b'a'"):
        bdecode(b"d1:bi1e1:ai2ee")
    with pytest.raises(BadManifest, match="position 2: integer '-0'"):
        bdecode(b"lli-0eee")


def test_size_limit() -> None:
    doc = b"10:" + b"x" * 10
    assert bdecode(doc, max_size=len(doc)) == b"x" * 10
    with pytest.raises(BadManifest, match="larger than the limit"):
        bdecode(doc, max_size=len(doc) - 1)


def test_depth_limit_is_exact() -> None:
    assert bdecode(b"l" * 4 + b"e" * 4, max_depth=4) == [[[[]]]]
    with pytest.raises(BadManifest, match="deeper than 4"):
        bdecode(b"l" * 5 + b"e" * 5, max_depth=4)


def test_deep_nesting_does_not_recurse() -> None:
    doc = b"l" * 200_000 + b"e" * 200_000
    with pytest.raises(BadManifest, match="deeper than 32"):
        bdecode(doc)
    assert bdecode(doc, max_depth=200_000) is not None  # no RecursionError with a huge explicit limit


def test_item_limit_counts_every_value() -> None:
    doc = b"li1ei2ee"  # the list and its two integers: 3 values
    assert bdecode(doc, max_items=3) == [1, 2]
    with pytest.raises(BadManifest, match="more than 2 values"):
        bdecode(doc, max_items=2)


def test_decoder_refuses_non_bytes() -> None:
    with pytest.raises(BadManifest, match="must be bytes"):
        bdecode("i1e")  # type: ignore[arg-type]


def test_encoder_is_canonical() -> None:
    assert bencode({"b": 1, b"a": "é", "": (1, [])}) == b"d0:li1elee1:a2:\xc3\xa91:bi1ee"
    assert bencode(bytearray(b"ab")) == bencode(memoryview(b"ab")) == b"2:ab"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"a": 1, b"a": 2}, "duplicate dict key"),
        ({1: 2}, "dict key of type int"),
        (True, "bool"),
        (2**63, "64-bit"),
        (1.5, "type float"),
        ([None], "type NoneType"),
    ],
)
def test_encoder_refuses(value: object, words: str) -> None:
    with pytest.raises(BadManifest, match=words):
        bencode(value)


# --- properties -----------------------------------------------------------------------------------------------

INTS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
VALUES: st.SearchStrategy[Any] = st.recursive(
    st.binary(max_size=40) | INTS,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.binary(max_size=12), inner, max_size=6),
    max_leaves=40,
)


@given(VALUES)
def test_round_trip(value: object) -> None:
    assert bdecode(bencode(value)) == value


@given(VALUES)
def test_agrees_with_independent_encoders(value: Any) -> None:
    doc = bencode(value)
    assert bencodepy.encode(value) == doc
    assert lt.bencode(value) == doc
    assert bencodepy.decode(doc) == bdecode(doc)


@given(st.binary(max_size=64))
def test_random_bytes_raise_only_bad_manifest(data: bytes) -> None:
    try:
        value = bdecode(data)
    except BadManifest:
        return
    assert bencode(value) == data  # anything accepted is canonical


@given(VALUES, st.data())
def test_damaged_documents_raise_only_bad_manifest(value: object, data: st.DataObject) -> None:
    doc = bencode(value)
    cut = data.draw(st.integers(0, len(doc) - 1))
    with pytest.raises(BadManifest):
        bdecode(doc[:cut])
    index = data.draw(st.integers(0, len(doc) - 1))
    damaged = doc[:index] + bytes([data.draw(st.integers(0, 255))]) + doc[index + 1 :]
    try:
        decoded = bdecode(damaged)
    except BadManifest:
        return
    assert bencode(decoded) == damaged
