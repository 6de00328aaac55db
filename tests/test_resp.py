"""RESP encoding and parsing: tables fed whole, byte by byte and with trailing data; hypothesis for the rest.

Replies we encode are read back with hiredis (an independent parser); requests are parsed by ours.
"""

from __future__ import annotations

import itertools

import hiredis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pchunks.zos.resp import (
    MAX_ARGS,
    MAX_BULK,
    MAX_LINE,
    NEED_DATA,
    NIL,
    Command,
    ErrorReply,
    ProtocolViolation,
    Reply,
    ReplyParser,
    RequestParser,
    array,
    bulk,
    encode_command,
    error,
    integer,
    protocol_error,
    simple,
)

# --- encoding ---------------------------------------------------------------------------------------------------

ENCODINGS: list[tuple[str, bytes, bytes, object]] = [
    # (label, encoded, expected bytes, what hiredis reads back)
    ("simple", simple("OK"), b"+OK\r\n", b"OK"),
    ("error", error("ERR nope"), b"-ERR nope\r\n", hiredis.ReplyError("ERR nope")),
    ("integer", integer(1), b":1\r\n", 1),
    ("negative integer", integer(-42), b":-42\r\n", -42),
    ("bulk", bulk(b"a\r\nb"), b"$4\r\na\r\nb\r\n", b"a\r\nb"),
    ("empty bulk", bulk(b""), b"$0\r\n\r\n", b""),
    ("nil", bulk(None), b"$-1\r\n", None),
    ("NIL constant", NIL, b"$-1\r\n", None),
    ("array", array([bulk(b"x"), integer(2)]), b"*2\r\n$1\r\nx\r\n:2\r\n", [b"x", 2]),
    ("empty array", array([]), b"*0\r\n", []),
    ("nil array", array(None), b"*-1\r\n", None),
    ("command", encode_command("GET", b"\x00\xff", 7), b"*3\r\n$3\r\nGET\r\n$2\r\n\x00\xff\r\n$1\r\n7\r\n", None),
]


@pytest.mark.parametrize(("label", "encoded", "expected", "readback"), ENCODINGS, ids=[c[0] for c in ENCODINGS])
def test_encoding(label: str, encoded: bytes, expected: bytes, readback: object) -> None:
    assert encoded == expected
    if label == "command":
        return
    reader = hiredis.Reader()
    reader.feed(encoded)
    got = reader.gets()
    if isinstance(readback, hiredis.ReplyError):
        assert isinstance(got, hiredis.ReplyError)
        assert str(got) == str(readback)
    else:
        assert got == readback
    assert reader.gets() is False


@pytest.mark.parametrize("bad", ["a\r\nb", "line\n", "cr\r"])
def test_status_lines_refuse_crlf(bad: str) -> None:
    with pytest.raises(ValueError, match="CR or LF"):
        simple(bad)
    with pytest.raises(ValueError, match="CR or LF"):
        error(bad)


def test_protocol_error_reply() -> None:
    assert protocol_error(ProtocolViolation("bad length")) == b"-ERR Protocol error: bad length\r\n"


# --- requests (server side) -------------------------------------------------------------------------------------

PING = b"*1\r\n$4\r\nPING\r\n"
Event = Command | ProtocolViolation

REQUESTS: list[tuple[str, bytes, list[Event]]] = [
    # (label, bytes, events; a violation is always last)
    ("ping", PING, [Command((b"PING",))]),
    ("get binary key", b"*2\r\n$3\r\nGET\r\n$3\r\n\x00\r\n\r\n", [Command((b"GET", b"\x00\r\n"))]),
    ("two pipelined", PING + encode_command("EXISTS", "k"), [Command((b"PING",)), Command((b"EXISTS", b"k"))]),
    ("empty bulk arg", b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n", [Command((b"GET", b""))]),
    ("inline", b"PING\r\n", [Command((b"PING",))]),
    ("inline LF only", b"select  ns\n", [Command((b"select", b"ns"))]),
    ("empty inline skipped", b"\r\n\r\nPING\r\n", [Command((b"PING",))]),
    ("*0 skipped", b"*0\r\n" + PING, [Command((b"PING",))]),
    ("*-1 skipped", b"*-1\r\n" + PING, [Command((b"PING",))]),
    ("max args", encode_command(*["a"] * MAX_ARGS), [Command((b"a",) * MAX_ARGS)]),
    ("too many args", b"*%d\r\n" % (MAX_ARGS + 1), [ProtocolViolation(f"too many arguments ({MAX_ARGS + 1} > 64)")]),
    ("too many inline args", b"a " * (MAX_ARGS + 1) + b"\r\n", [ProtocolViolation("too many arguments (65 > 64)")]),
    ("bad count", b"*x\r\n", [ProtocolViolation("invalid multibulk length b'x'")]),
    ("empty count", b"*\r\n", [ProtocolViolation("invalid multibulk length b''")]),
    ("double minus", b"*--1\r\n", [ProtocolViolation("invalid multibulk length b'--1'")]),
    ("no dollar", b"*1\r\n+PING\r\n", [ProtocolViolation("expected '$', got '+'")]),
    ("bad bulk length", b"*1\r\n$abc\r\n", [ProtocolViolation("invalid bulk length b'abc'")]),
    ("negative bulk", b"*1\r\n$-1\r\n", [ProtocolViolation("invalid bulk length -1")]),
    ("bulk too big", b"*1\r\n$%d\r\n" % (MAX_BULK + 1), [ProtocolViolation(f"invalid bulk length {MAX_BULK + 1}")]),
    ("no CRLF after bulk", b"*1\r\n$4\r\nPINGxx", [ProtocolViolation("bulk string not followed by CRLF")]),
    ("violation after a command", PING + b"*1\r\n#", [Command((b"PING",)), ProtocolViolation("expected '$', got '#'")]),
]


def run_parser(chunks: list[bytes]) -> list[Event]:
    parser = RequestParser()
    events: list[Event] = []
    for chunk in chunks:
        parser.feed(chunk)
        while (event := parser.next_event()) is not None:
            events.append(event)
            if isinstance(event, ProtocolViolation):
                assert parser.next_event() == event, "a violation is final"
                return events
    return events


@pytest.mark.parametrize(("label", "data", "expected"), REQUESTS, ids=[c[0] for c in REQUESTS])
@pytest.mark.parametrize("how", ["whole", "byte by byte", "with trailing data"])
def test_requests(label: str, data: bytes, expected: list[Event], how: str) -> None:
    if how == "whole":
        assert run_parser([data]) == expected
    elif how == "byte by byte":
        assert run_parser([data[i : i + 1] for i in range(len(data))]) == expected
    else:
        # whatever follows a complete request waits for its turn (or is dropped after a violation)
        trailing = expected if isinstance(expected[-1], ProtocolViolation) else [*expected, Command((b"PING",))]
        assert run_parser([data + PING + b"*2\r\n$3\r\nGE"]) == trailing


@pytest.mark.parametrize(
    ("label", "data", "reason"),
    [
        ("header line", b"*" + b"1" * (MAX_LINE + 1), f"multibulk header longer than {MAX_LINE} bytes"),
        ("bulk header line", b"*1\r\n$" + b"1" * (MAX_LINE + 1), f"bulk header longer than {MAX_LINE} bytes"),
        ("inline line", b"P" * (MAX_LINE + 1), f"inline request longer than {MAX_LINE} bytes"),
    ],
)
def test_line_limits_without_newline(label: str, data: bytes, reason: str) -> None:
    parser = RequestParser()
    parser.feed(data[:MAX_LINE])
    assert parser.next_event() is None, "at the limit: still waiting"
    parser.feed(data[MAX_LINE:])
    assert parser.next_event() == ProtocolViolation(reason)


def test_incomplete_large_bulk_waits_then_completes() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    wire = encode_command("GET", payload)
    parser = RequestParser()
    for start in range(0, len(wire) - 1, 65536):
        parser.feed(wire[start : min(start + 65536, len(wire) - 1)])
        assert parser.next_event() is None
    parser.feed(wire[-1:])
    assert parser.next_event() == Command((b"GET", payload))


def test_custom_limits() -> None:
    parser = RequestParser(max_bulk=3, max_args=2)
    parser.feed(encode_command("GET", "abc") + encode_command("GET", "abcd"))
    assert parser.next_event() == Command((b"GET", b"abc"))
    assert parser.next_event() == ProtocolViolation("invalid bulk length 4")
    parser.feed(PING)
    assert parser.next_event() == ProtocolViolation("invalid bulk length 4")


def test_command_name_is_upper_case() -> None:
    assert Command((b"get", b"k")).name == "GET"
    assert Command((b"\xff",)).name == "\xff"


args_strategy = st.lists(st.binary(max_size=64), min_size=1, max_size=MAX_ARGS)


@given(args=st.lists(args_strategy, min_size=1, max_size=4), cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_encoded_commands_parse_back_however_split(args: list[list[bytes]], cuts: list[int]) -> None:
    wire = b"".join(encode_command(*a) for a in args)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    chunks = [wire[a:b] for a, b in itertools.pairwise(points)]
    assert run_parser(chunks) == [Command(tuple(a)) for a in args]


@given(data=st.binary(max_size=512))
def test_garbage_never_raises(data: bytes) -> None:
    parser = RequestParser(max_bulk=64, max_args=4, max_line=32)
    parser.feed(data)
    for _ in range(len(data) + 1):
        event = parser.next_event()
        if event is None or isinstance(event, ProtocolViolation):
            break
        assert isinstance(event, Command)
        assert 1 <= len(event.args) <= 4
        assert all(len(a) <= 64 for a in event.args)
    else:
        raise AssertionError("the parser produced more commands than there are bytes")


# --- replies (client side) --------------------------------------------------------------------------------------

REPLIES: list[tuple[str, bytes, Reply]] = [
    ("pong", b"+PONG\r\n", b"PONG"),
    ("bulk", b"$3\r\n\x00\r\n\r\n", b"\x00\r\n"),
    ("nil", b"$-1\r\n", None),
    ("integer", b":0\r\n", 0),
    ("error", b"-Namespace not found\r\n", ErrorReply("Namespace not found")),
    ("array with error", b"*2\r\n-ERR x\r\n$-1\r\n", [ErrorReply("ERR x"), None]),
]


@pytest.mark.parametrize(("label", "data", "expected"), REPLIES, ids=[c[0] for c in REPLIES])
@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_replies(label: str, data: bytes, expected: Reply, byte_by_byte: bool) -> None:
    parser = ReplyParser()
    pieces = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]
    for piece in pieces[:-1]:
        parser.feed(piece)
        assert parser.next_reply() is NEED_DATA
    parser.feed(pieces[-1] + b":7\r\n")  # trailing data: the next reply
    assert parser.next_reply() == expected
    assert parser.next_reply() == 7
    assert parser.next_reply() is NEED_DATA


def test_reply_garbage_is_a_final_violation() -> None:
    parser = ReplyParser()
    parser.feed(b"?what\r\n")
    violation = parser.next_reply()
    assert isinstance(violation, ProtocolViolation)
    parser.feed(b"+OK\r\n")
    assert parser.next_reply() == violation


def test_reply_larger_than_the_limit_is_a_violation() -> None:
    parser = ReplyParser(max_bulk=1024)
    parser.feed(b"$1000000\r\n" + b"x" * 1024)
    assert parser.next_reply() is NEED_DATA, "within the limit: still waiting"
    parser.feed(b"x" * (MAX_LINE + 1))
    assert parser.next_reply() == ProtocolViolation(f"reply larger than {1024 + MAX_LINE} bytes")


@given(values=st.lists(st.one_of(st.binary(max_size=32), st.none(), st.integers(-(2**63), 2**63 - 1))))
def test_encoded_replies_read_back(values: list[bytes | int | None]) -> None:
    parser = ReplyParser()
    parser.feed(b"".join(integer(v) if isinstance(v, int) else bulk(v) for v in values))
    assert [parser.next_reply() for _ in values] == values
    assert parser.next_reply() is NEED_DATA
