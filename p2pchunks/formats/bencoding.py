"""Canonical bencoding and a bounded, strict decoder.

Owns the byte format only: ``bencode`` writes the one canonical form (dict keys sorted as bytes, no duplicates,
``str`` as UTF-8, integers in the signed 64-bit range), and ``bdecode`` accepts exactly that form and nothing
else. The decoder is written for hostile input: it never recurses, it checks every length against the input that
is left before slicing, and it stops at ``max_size`` bytes, ``max_depth`` nested containers and ``max_items``
values. Every rejection is a :class:`BadManifest` naming the byte position and what was wrong there.

Must not know: manifests, torrents, signatures, or any other meaning of the documents.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..errors import BadManifest

__all__ = ["DEFAULT_MAX_DEPTH", "DEFAULT_MAX_ITEMS", "DEFAULT_MAX_SIZE", "bdecode", "bencode"]

DEFAULT_MAX_SIZE = 32 * 1024 * 1024
DEFAULT_MAX_DEPTH = 32
DEFAULT_MAX_ITEMS = 2_000_000

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1

# Canonical integers and string lengths. Anything the regexes refuse is diagnosed by ``_explain_int``.
_INT_RE = re.compile(rb"i(0|-?[1-9][0-9]{0,18})e")
_LEN_RE = re.compile(rb"(0|[1-9][0-9]{0,15}):")

_DIGITS = frozenset(b"0123456789")
_I, _L, _D, _E = ord("i"), ord("l"), ord("d"), ord("e")


# --- encoding -------------------------------------------------------------------------------------------------


class Raw(bytes):
    """Bytes that are already a canonical bencoding: ``bencode`` puts them in as they are."""


def bencode(obj: object) -> bytes:
    """The canonical bencoding of ``obj`` (bytes/str/int/list/tuple/dict); :class:`BadManifest` if impossible."""
    out: list[bytes] = []
    _encode(obj, out, 0)
    return b"".join(out)


def _encode(obj: object, out: list[bytes], depth: int) -> None:
    if depth > 256:
        raise BadManifest("cannot bencode: nested deeper than 256 levels")
    # Exact types first: the fast path for what bdecode returns; everything else goes through _encode_other.
    if type(obj) is bytes:
        out += (b"%d:" % len(obj), obj)
    elif type(obj) is int:
        if not INT_MIN <= obj <= INT_MAX:
            raise BadManifest(f"cannot bencode integer {obj}: outside the signed 64-bit range")
        out.append(b"i%de" % obj)
    elif type(obj) is list or type(obj) is tuple:
        out.append(b"l")
        for item in obj:
            _encode(item, out, depth + 1)
        out.append(b"e")
    elif type(obj) is dict and all(type(key) is bytes for key in obj):
        out.append(b"d")
        for key in sorted(obj):
            out += (b"%d:" % len(key), key)
            _encode(obj[key], out, depth + 1)
        out.append(b"e")
    else:
        _encode_other(obj, out, depth)


def _encode_other(obj: object, out: list[bytes], depth: int) -> None:
    if isinstance(obj, Raw):
        out.append(bytes(obj))
    elif isinstance(obj, bytes | bytearray | memoryview):
        raw = bytes(obj)
        out += (b"%d:" % len(raw), raw)
    elif isinstance(obj, str):
        raw = obj.encode("utf-8")
        out += (b"%d:" % len(raw), raw)
    elif isinstance(obj, bool):
        raise BadManifest("cannot bencode a bool (use 0 or 1)")
    elif isinstance(obj, int):
        _encode(int(obj), out, depth)
    elif isinstance(obj, list | tuple):
        _encode(list(obj), out, depth)
    elif isinstance(obj, Mapping):
        items: dict[bytes, object] = {}
        for key, value in obj.items():
            if isinstance(key, str):
                key = key.encode("utf-8")
            if not isinstance(key, bytes):
                raise BadManifest(f"cannot bencode dict key of type {type(key).__name__}")
            if key in items:
                raise BadManifest(f"cannot bencode: duplicate dict key {key!r}")
            items[key] = value
        _encode(items, out, depth)
    else:
        raise BadManifest(f"cannot bencode a value of type {type(obj).__name__}")


# --- decoding -------------------------------------------------------------------------------------------------


class _Dict:
    """A dict under construction: the pending key (None while a key is expected) and the last key seen."""

    __slots__ = ("last", "pending", "value")

    def __init__(self) -> None:
        self.value: dict[bytes, object] = {}
        self.pending: bytes | None = None
        self.last: bytes | None = None


def bdecode(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_items: int = DEFAULT_MAX_ITEMS,
) -> object:
    """Decode one canonical bencoded value filling all of ``data`` (bytes/int/list/dict[bytes, ...])."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadManifest(f"bencoded data must be bytes, not {type(data).__name__}")
    buf = bytes(data)
    size = len(buf)
    if size > max_size:
        raise BadManifest(f"bencoded document of {size} bytes is larger than the limit of {max_size}")
    if size == 0:
        raise BadManifest("empty bencoded document")
    stack: list[list[object] | _Dict] = []
    items = 0
    pos = 0
    while True:
        if pos >= size:
            raise BadManifest(f"truncated at position {pos}: {len(stack)} container(s) not closed")
        top = stack[-1] if stack else None
        start = pos
        c = buf[pos]
        if isinstance(top, _Dict) and top.pending is None and c != _E and c not in _DIGITS:
            raise BadManifest(f"position {pos}: dict key must be a byte string, found {chr(c)!r}")
        value: object
        if c == _E:
            if top is None:
                raise BadManifest(f"position {pos}: unexpected 'e' outside any list or dict")
            if isinstance(top, _Dict) and top.pending is not None:
                raise BadManifest(f"position {pos}: dict key {top.pending[:40]!r} has no value")
            stack.pop()
            value = top.value if isinstance(top, _Dict) else top
            pos += 1
        elif c in (_L, _D):
            items += 1
            if items > max_items:
                raise BadManifest(f"position {pos}: more than {max_items} values")
            if len(stack) >= max_depth:
                raise BadManifest(f"position {pos}: nested deeper than {max_depth} levels")
            stack.append([] if c == _L else _Dict())
            pos += 1
            continue
        else:
            items += 1
            if items > max_items:
                raise BadManifest(f"position {pos}: more than {max_items} values")
            if c == _I:
                value, pos = _read_int(buf, pos)
            elif c in _DIGITS:
                value, pos = _read_bytes(buf, pos)
            else:
                raise BadManifest(f"position {pos}: unexpected byte {chr(c)!r} where a value should start")
        if not stack:
            break
        parent = stack[-1]
        if isinstance(parent, list):
            parent.append(value)
        elif parent.pending is None:
            assert isinstance(value, bytes)  # guaranteed by the key check above
            if parent.last is not None and value <= parent.last:
                what = "duplicate" if value == parent.last else "unsorted"
                raise BadManifest(f"position {start}: {what} dict key {value[:40]!r}")
            parent.pending = parent.last = value
        else:
            parent.value[parent.pending] = value
            parent.pending = None
    if pos != size:
        raise BadManifest(f"trailing data at position {pos}: {size - pos} byte(s) after the value")
    return value


def _read_int(buf: bytes, pos: int) -> tuple[int, int]:
    match = _INT_RE.match(buf, pos)
    if match is None:
        raise BadManifest(f"position {pos}: {_explain_int(buf, pos)}")
    value = int(match.group(1))
    if not INT_MIN <= value <= INT_MAX:
        raise BadManifest(f"position {pos}: integer outside the signed 64-bit range")
    return value, match.end()


def _explain_int(buf: bytes, pos: int) -> str:
    end = buf.find(b"e", pos + 1, pos + 23)
    if end < 0:
        return "integer not terminated by 'e' within 21 characters (truncated or too long)"
    body = buf[pos + 1 : end]
    if body in (b"", b"-"):
        return "empty integer"
    if body == b"-0":
        return "integer '-0' is not canonical"
    digits = body[1:] if body.startswith(b"-") else body
    if not all(ch in _DIGITS for ch in digits):
        return f"integer {body[:21]!r} has a non-digit character"
    if digits.startswith(b"0"):
        return f"integer {body.decode()} has a leading zero"
    return "integer too long"


def _read_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    match = _LEN_RE.match(buf, pos)
    if match is None:
        if buf[pos] == ord("0") and pos + 1 < len(buf) and buf[pos + 1] in _DIGITS:
            raise BadManifest(f"position {pos}: string length has a leading zero")
        raise BadManifest(f"position {pos}: malformed string length (want digits then ':', at most 16 digits)")
    length = int(match.group(1))
    start = match.end()
    left = len(buf) - start
    if length > left:
        raise BadManifest(f"position {pos}: string length {length} exceeds the {left} byte(s) left")
    return buf[start : start + length], start + length
