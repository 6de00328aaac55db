"""RESP, the Redis serialization protocol (version 2), as spoken by 0-db: bytes in, events out, no I/O.

Owns: encoding commands and replies; parsing requests on the server side (arrays of bulk strings, and inline
commands such as ``PING\\r\\n`` typed into a terminal) within hard limits; turning a server's replies into plain
values on the client side (hiredis does the parsing).

Must not know: sockets, trio, namespaces, chunk ids, what any command means.

Theory of operation. A ``RequestParser`` is fed whatever bytes arrived and hands out one event at a time:
a :class:`Command` (its arguments as raw bytes), ``None`` while the next command is incomplete, or a
:class:`ProtocolViolation` once the peer broke the protocol or a limit. A violation is final: the parser keeps
answering it, and the server replies with :func:`protocol_error` and closes the connection. A
``ReplyParser`` does the same for replies: a value (``bytes`` for simple and bulk strings, ``int``, ``None``
for nil, ``list`` for arrays, :class:`ErrorReply` for ``-`` lines), ``NEED_DATA``, or a violation.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import hiredis

MAX_BULK = 8 * 1024 * 1024
"""Largest bulk string accepted, either way (the largest zdb chunk is far below this)."""
MAX_ARGS = 64
"""Most arguments in one request."""
MAX_LINE = 64 * 1024
"""Longest header or inline-command line."""

CRLF = b"\r\n"
NIL = b"$-1\r\n"
OK = b"+OK\r\n"
PONG = b"+PONG\r\n"


@dataclass(frozen=True)
class Command:
    """One request: ``args[0]`` is the command name, the rest its arguments, all raw bytes."""

    args: tuple[bytes, ...]

    @property
    def name(self) -> str:
        """The command name with ASCII letters upper-cased (``"GET"``), for dispatch."""
        return self.args[0].upper().decode("latin-1")


@dataclass(frozen=True)
class ProtocolViolation:
    """The peer broke the protocol or a limit; the connection must be closed."""

    reason: str


@dataclass(frozen=True)
class ErrorReply:
    """An error reply (``-Namespace not found``), as the message after the dash."""

    message: str


class _Need(enum.Enum):
    NEED_DATA = "need data"


NEED_DATA = _Need.NEED_DATA
"""The next reply is not complete yet: feed more bytes."""

Reply: TypeAlias = bytes | int | list["Reply"] | ErrorReply | None


# --- encoding ---------------------------------------------------------------------------------------------------


def _line(text: str) -> bytes:
    raw = text.encode()
    if b"\r" in raw or b"\n" in raw:
        raise ValueError(f"a RESP line cannot hold CR or LF: {text!r}")
    return raw


def simple(text: str) -> bytes:
    """``+text``: a status reply."""
    return b"+" + _line(text) + CRLF


def error(message: str) -> bytes:
    """``-message``: an error reply (by convention the first word is a code such as ``ERR``)."""
    return b"-" + _line(message) + CRLF


def protocol_error(violation: ProtocolViolation) -> bytes:
    """The reply a server sends before closing a connection that broke the protocol."""
    return error(f"ERR Protocol error: {violation.reason}")


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


def bulk(data: bytes | bytearray | memoryview | None) -> bytes:
    """``$len`` + data, or nil for ``None``."""
    if data is None:
        return NIL
    return b"$%d\r\n%b\r\n" % (len(data), bytes(data))


def array(items: Sequence[bytes] | None) -> bytes:
    """An array of already-encoded replies, or the nil array for ``None``."""
    if items is None:
        return b"*-1\r\n"
    return b"*%d\r\n" % len(items) + b"".join(items)


def encode_command(*args: bytes | str | int) -> bytes:
    """A request as an array of bulk strings (what every client sends)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(parts)


# --- server side: requests --------------------------------------------------------------------------------------


class RequestParser:
    """Incremental parser of requests; see the module docstring."""

    def __init__(self, *, max_bulk: int = MAX_BULK, max_args: int = MAX_ARGS, max_line: int = MAX_LINE) -> None:
        self.max_bulk = max_bulk
        self.max_args = max_args
        self.max_line = max_line
        self._buf = bytearray()
        self._violation: ProtocolViolation | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._violation is None:
            self._buf += data

    def next_event(self) -> Command | ProtocolViolation | None:
        """The next complete command, ``None`` if more bytes are needed, or the (final) violation."""
        if self._violation is not None:
            return self._violation
        while True:
            try:
                result = self._parse()
            except _Violation as v:
                self._violation = ProtocolViolation(str(v))
                self._buf.clear()
                return self._violation
            if result is None:
                return None
            args, end = result
            del self._buf[:end]
            if args:  # empty inline lines and ``*0`` are skipped, as redis does
                return Command(args)

    def _find_line(self, start: int, what: str) -> int | None:
        """Index of the CRLF ending the line at ``start``, ``None`` if not arrived yet."""
        end = self._buf.find(CRLF, start, start + self.max_line + 2)
        if end < 0:
            if len(self._buf) - start > self.max_line:
                raise _Violation(f"{what} longer than {self.max_line} bytes")
            return None
        return end

    def _int(self, start: int, end: int, what: str) -> int:
        digits = bytes(self._buf[start:end])
        if not digits or len(digits) > 20 or not digits.lstrip(b"-").isdigit() or digits.count(b"-") > 1:
            raise _Violation(f"invalid {what} {digits[:32]!r}")
        return int(digits)

    def _parse(self) -> tuple[tuple[bytes, ...], int] | None:
        buf = self._buf
        if not buf:
            return None
        if buf[0] != ord("*"):
            return self._parse_inline()
        end = self._find_line(0, "multibulk header")
        if end is None:
            return None
        count = self._int(1, end, "multibulk length")
        if count > self.max_args:
            raise _Violation(f"too many arguments ({count} > {self.max_args})")
        pos = end + 2
        args: list[bytes] = []
        for _ in range(max(count, 0)):
            if pos >= len(buf):
                return None
            if buf[pos] != ord("$"):
                raise _Violation(f"expected '$', got {chr(buf[pos])!r}")
            end = self._find_line(pos, "bulk header")
            if end is None:
                return None
            length = self._int(pos + 1, end, "bulk length")
            if not 0 <= length <= self.max_bulk:
                raise _Violation(f"invalid bulk length {length}")
            start = end + 2
            if len(buf) < start + length + 2:
                return None
            if buf[start + length : start + length + 2] != CRLF:
                raise _Violation("bulk string not followed by CRLF")
            args.append(bytes(buf[start : start + length]))
            pos = start + length + 2
        return tuple(args), pos

    def _parse_inline(self) -> tuple[tuple[bytes, ...], int] | None:
        end = self._buf.find(b"\n", 0, self.max_line + 2)
        if end < 0:
            if len(self._buf) > self.max_line:
                raise _Violation(f"inline request longer than {self.max_line} bytes")
            return None
        line = bytes(self._buf[:end]).removesuffix(b"\r")
        args = tuple(line.split())
        if len(args) > self.max_args:
            raise _Violation(f"too many arguments ({len(args)} > {self.max_args})")
        return args, end + 1


class _Violation(Exception):
    """Internal: unwinds the parser to ``next_event``, which turns it into a :class:`ProtocolViolation`."""


# --- client side: replies ---------------------------------------------------------------------------------------


class ReplyParser:
    """Incremental parser of replies (hiredis underneath), bounded to ``max_bulk`` bytes pending per reply."""

    def __init__(self, *, max_bulk: int = MAX_BULK) -> None:
        self.max_pending = max_bulk + MAX_LINE
        self._reader = hiredis.Reader()
        self._violation: ProtocolViolation | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._violation is None:
            self._reader.feed(bytes(data))

    def next_reply(self) -> Reply | _Need | ProtocolViolation:
        if self._violation is not None:
            return self._violation
        try:
            reply = self._reader.gets()
        except hiredis.ProtocolError as exc:
            self._violation = ProtocolViolation(str(exc))
            return self._violation
        if reply is False:
            if self._reader.len() > self.max_pending:
                self._violation = ProtocolViolation(f"reply larger than {self.max_pending} bytes")
                return self._violation
            return NEED_DATA
        return _translate(reply)


def _translate(value: object) -> Reply:
    if isinstance(value, hiredis.ReplyError):
        return ErrorReply(str(value))
    if isinstance(value, list):
        return [_translate(item) for item in value]
    if value is None or isinstance(value, bytes | int):
        return value
    return ErrorReply(f"unexpected reply type {type(value).__name__}")  # RESP3 types we never ask for
