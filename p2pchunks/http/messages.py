"""The messages of the HTTP server: what a handler gets (:class:`Request`) and gives back (:class:`Response`, with a
body of bytes, a :class:`FileBody` sent zero-copy, or an async iterator), and the few translations between them and
h11's events (the request target, the response head, error bodies).

Must not know: connections, limits, sockets; any route or application object.
"""

from __future__ import annotations

import http
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

from ..ids import is_chunk_id

__all__ = ["Body", "FileBody", "Handler", "OnSent", "Request", "Response", "json_response"]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    """Percent-decoded path, without the query."""
    query: dict[str, str]
    """Decoded query fields (last one wins; undecodable bytes replaced); binary values: use ``raw_query``."""
    headers: dict[str, str]
    """Lowercase names; repeated fields joined with ``", "``."""
    body: bytes
    client: tuple[str, int]
    raw_query: str = ""
    """The query exactly as sent (still percent-encoded), for fields that carry raw bytes (tracker announces)."""


@dataclass(frozen=True)
class FileBody:
    """``length`` bytes of ``path`` from ``offset``, sent with ``os.sendfile``."""

    path: Path
    offset: int
    length: int


Body: TypeAlias = bytes | FileBody | AsyncIterator[bytes]


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Body = b""


Handler: TypeAlias = Callable[[Request], Awaitable[Response]]
OnSent: TypeAlias = Callable[[Request, int], None]


def json_response(status: int, obj: object, headers: Iterable[tuple[str, str]] = ()) -> Response:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return Response(status, [("content-type", "application/json"), *headers], body)


def error_body(status: int, message: str, chunk: str | None = None) -> bytes:
    """``{"error", "status"}``, and ``"chunk"`` when the error concerns a chunk (only a well-formed id is echoed)."""
    body: dict[str, object] = {"error": message, "status": status}
    if chunk is not None and is_chunk_id(chunk):
        body["chunk"] = chunk
    return json.dumps(body, separators=(",", ":")).encode()


def error_response(status: int, message: str, chunk: str | None = None) -> Response:
    return Response(status, [("content-type", "application/json")], error_body(status, message, chunk))


def response_head(response: Response) -> h11.Response:
    """The response head; Content-Length added for a body of known length unless the handler framed it."""
    headers = list(response.headers)
    names = {name.lower() for name, _ in headers}
    body = response.body
    length = len(body) if isinstance(body, bytes) else body.length if isinstance(body, FileBody) else None
    bodiless_status = response.status < 200 or response.status in (204, 304)
    if length is not None and not bodiless_status and not names & {"content-length", "transfer-encoding"}:
        headers.append(("content-length", str(length)))
    if "date" not in names:
        headers.append(("date", formatdate(usegmt=True)))
    return h11.Response(status_code=response.status, headers=headers, reason=reason(response.status))


def reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def parse_target(target: bytes) -> tuple[str, dict[str, str], str]:
    """(percent-decoded path, query fields, raw query) of an origin-form or absolute-form request target."""
    text = target.decode("ascii", errors="strict")
    if not text.startswith("/"):  # absolute-form (what proxies send); origin-form may start with "//"
        parts = urlsplit(text)
        text = parts.path + (f"?{parts.query}" if parts.query else "")
    raw_path, _, raw_query = text.partition("?")
    path = unquote(raw_path or "/", errors="strict")
    if not path.startswith("/") or "\x00" in path:
        raise ValueError(f"not an absolute path: {path[:80]!r}")
    query = dict(parse_qsl(raw_query, keep_blank_values=True, errors="replace"))
    return path, query, raw_query
