"""The h11-on-trio server over real sockets on 127.0.0.1: framing, keep-alive, limits, file and iterator bodies.

Responses read from raw sockets are parsed by an independent h11 *client* state machine, so a stray body byte
(after HEAD, say) or a broken chunked encoding fails the parse rather than slipping by.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import h11
import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from p2pchunks.http.messages import parse_target
from p2pchunks.http.server import (
    FileBody,
    Request,
    Response,
    ServerLimits,
    json_response,
    serve_http,
)

Handler = Callable[[Request], Awaitable[Response]]
CHUNKED_POST = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


class Sent:
    """What ``on_sent`` reported, in order; ``await wait(n)`` until ``n`` reports came in."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, int]] = []
        self._changed = trio.Event()

    def __call__(self, request: Request, nbytes: int) -> None:
        self.reports.append((request.path, nbytes))
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self, count: int) -> list[tuple[str, int]]:
        with trio.fail_after(10):
            while len(self.reports) < count:
                await self._changed.wait()
        return self.reports


async def start(
    nursery: trio.Nursery, handler: Handler, limits: ServerLimits | None = None, sent: Sent | None = None
) -> int:
    port: int = await nursery.start(
        partial(serve_http, handler, "127.0.0.1", 0, limits=limits or ServerLimits(), on_sent=sent)
    )
    return port


async def echo(request: Request) -> Response:
    return json_response(
        200,
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "raw_query": request.raw_query,
            "headers": request.headers,
            "body": request.body.decode("latin-1"),
            "client": list(request.client),
        },
    )


async def read_response(
    stream: trio.SocketStream, buffer: bytearray, method: str = "GET"
) -> tuple[h11.Response, bytes]:
    """One response from ``stream`` (bytes already read past the previous response are in ``buffer``)."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    if buffer:  # (receive_data(b"") would mean end of stream)
        client.receive_data(bytes(buffer))
        buffer.clear()
    head: h11.Response | None = None
    body: list[bytes] = []
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.InformationalResponse):
            continue
        elif isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            buffer.extend(client.trailing_data[0])
            assert head is not None
            return head, b"".join(body)
        else:
            raise AssertionError(f"unexpected {event!r}")


async def read_to_eof(stream: trio.SocketStream) -> bytes:
    parts = []
    while data := await stream.receive_some(65536):
        parts.append(data)
    return b"".join(parts)


def header(response: h11.Response, name: str) -> str | None:
    values = [v.decode() for k, v in response.headers if k == name.encode()]
    return values[0] if values else None


async def test_request_fields_reach_the_handler(nursery: trio.Nursery) -> None:
    port = await start(nursery, echo)
    with trio.fail_after(10):
        async with httpx.AsyncClient() as client:
            reply = await client.post(
                f"http://127.0.0.1:{port}/a%20b/c%2Fd?x=1&y=%E2%9C%93&x=2&flag",
                content=b"payload",
                headers={"X-Thing": "yes"},
            )
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert int(reply.headers["content-length"]) == len(reply.content)
    got = reply.json()
    assert got["method"] == "POST"
    assert got["path"] == "/a b/c/d"
    assert got["query"] == {"x": "2", "y": "✓", "flag": ""}
    assert got["raw_query"] == "x=1&y=%E2%9C%93&x=2&flag"
    assert got["headers"]["x-thing"] == "yes"
    assert got["body"] == "payload"
    assert got["client"][0] == "127.0.0.1"


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/", "/", {}),
        (b"/chunks/ab/cd", "/chunks/ab/cd", {}),
        (b"/%2e%2e/x", "/../x", {}),
        (b"/p?a=1&b", "/p", {"a": "1", "b": ""}),
        (b"http://example/abs?q=%20", "/abs", {"q": " "}),
        (b"/bin?info_hash=%FF%00", "/bin", {"info_hash": "\ufffd\x00"}),
    ],
)
def test_parse_target_table(target: bytes, path: str, query: dict[str, str]) -> None:
    assert parse_target(target)[:2] == (path, query)


@pytest.mark.parametrize("target", [b"/%ff", b"/a%00b", b"*"])
def test_parse_target_rejects(target: bytes) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_target(target)


@given(st.lists(st.text(min_size=1).filter(lambda s: "\x00" not in s), max_size=5))
def test_parse_target_round_trips_any_path(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    assert parse_target(quote(path, safe="/").encode())[0] == path


async def test_keep_alive_reuses_one_connection(nursery: trio.Nursery) -> None:
    port = await start(nursery, echo)
    with trio.fail_after(10):
        async with httpx.AsyncClient() as client:
            replies = [await client.get(f"http://127.0.0.1:{port}/n{i}") for i in range(5)]
    assert [r.json()["path"] for r in replies] == [f"/n{i}" for i in range(5)]
    assert len({r.json()["client"][1] for r in replies}) == 1


async def test_pipelined_requests_are_answered_in_order(nursery: trio.Nursery) -> None:
    port = await start(nursery, echo)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            requests = b"".join(
                b"POST /p%d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nab%d" % (i, i) for i in range(4)
            )
            await stream.send_all(requests + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            buffer = bytearray()
            bodies = [json.loads((await read_response(stream, buffer))[1]) for _ in range(5)]
            assert await read_to_eof(stream) == b""
    assert [(b["path"], b["body"]) for b in bodies] == [(f"/p{i}", f"ab{i}") for i in range(4)] + [("/last", "")]


async def test_head_sends_headers_of_get_and_no_body(nursery: trio.Nursery) -> None:
    sent = Sent()
    port = await start(nursery, lambda request: _fixed(b"0123456789"), sent=sent)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\nGET /y HTTP/1.1\r\nHost: x\r\n\r\n")
            buffer = bytearray()
            head, head_body = await read_response(stream, buffer, "HEAD")
            get, get_body = await read_response(stream, buffer)
    assert head.status_code == get.status_code == 200
    assert header(head, "content-length") == "10"
    assert head_body == b""
    assert get_body == b"0123456789"
    assert await sent.wait(2) == [("/x", 0), ("/y", 10)]


async def _fixed(body: bytes) -> Response:
    return Response(200, [("content-type", "text/plain")], body)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"BLAH\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n", 400),
        (b"GET /%ff HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Many: a\r\n" * 3000, 431),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n", 413),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"8000\r\n" + b"z" * 0x8000 + b"\r\n",
            413,
        ),
    ],
    ids=[
        "garbage",
        "no-host",
        "bad-length",
        "bad-utf8",
        "huge-header",
        "huge-incomplete-head",
        "huge-declared-body",
        "huge-chunked-body",
    ],
)
async def test_bad_requests_get_an_error_and_the_connection_closes(
    nursery: trio.Nursery, raw: bytes, status: int
) -> None:
    port = await start(nursery, echo, ServerLimits(max_body_bytes=0x4000))
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(raw)
            response, body = await read_response(stream, bytearray())
            assert await read_to_eof(stream) == b""
    assert response.status_code == status
    assert json.loads(body)["status"] == status
    assert header(response, "connection") == "close"


async def test_slowloris_head_gets_408(nursery: trio.Nursery) -> None:
    port = await start(nursery, echo, ServerLimits(header_timeout=0.3))
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            for _ in range(3):  # keep dripping, as slowloris does; the deadline holds regardless
                await trio.sleep(0.1)
                await stream.send_all(b"X-A: b\r\n")
            response, _ = await read_response(stream, bytearray())
            assert await read_to_eof(stream) == b""
    assert response.status_code == 408


async def test_stalled_body_gets_408(nursery: trio.Nursery) -> None:
    port = await start(nursery, echo, ServerLimits(body_timeout=0.3))
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            response, _ = await read_response(stream, bytearray())
    assert response.status_code == 408


async def test_idle_connection_is_closed_quietly(nursery: trio.Nursery) -> None:
    port = await start(nursery, echo, ServerLimits(idle_timeout=0.2))
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
            buffer = bytearray()
            response, _ = await read_response(stream, buffer)
            assert response.status_code == 200
            assert bytes(buffer) + await read_to_eof(stream) == b""


async def test_expect_100_continue(nursery: trio.Nursery) -> None:
    port = await start(nursery, echo)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"PUT /u HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
            interim = await stream.receive_some(65536)
            assert interim.startswith(b"HTTP/1.1 100 ")
            await stream.send_all(b"hi")
            _, body = await read_response(stream, bytearray())
    assert json.loads(body)["body"] == "hi"


async def test_handler_exception_is_a_500_and_the_server_lives_on(nursery: trio.Nursery) -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("kaput")
        return await _fixed(b"fine")

    port = await start(nursery, handler)
    with trio.fail_after(10):
        async with httpx.AsyncClient() as client:
            boom = await client.get(f"http://127.0.0.1:{port}/boom")
            fine = await client.get(f"http://127.0.0.1:{port}/ok")
    assert boom.status_code == 500
    assert boom.json() == {"error": "internal server error", "status": 500}
    assert (fine.status_code, fine.content) == (200, b"fine")


async def test_max_connections_makes_newcomers_wait(nursery: trio.Nursery) -> None:
    port = await start(nursery, echo, ServerLimits(max_connections=2))
    with trio.fail_after(10):
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        for stream in held:  # each is accepted and served, then kept alive
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_response(stream, bytearray()))[0].status_code == 200
        third = await trio.open_tcp_stream("127.0.0.1", port)  # the kernel's backlog takes it
        async with third:
            await third.send_all(b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n")
            with trio.move_on_after(0.3) as waited:
                await third.receive_some(65536)
            assert waited.cancelled_caught, "served beyond max_connections"
            await held[0].aclose()
            response, body = await read_response(third, bytearray())
        await held[1].aclose()
    assert response.status_code == 200
    assert json.loads(body)["path"] == "/third"


async def test_file_body_sends_the_region(nursery: trio.Nursery, tmp_path: Path) -> None:
    blob = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "blob"
    path.write_bytes(blob)
    regions = {"/small": (1000, 5000), "/all": (0, len(blob)), "/tail": (len(blob) - 1, 1), "/none": (10, 0)}

    async def handler(request: Request) -> Response:
        offset, length = regions[request.path]
        return Response(200, [], FileBody(path, offset, length))

    sent = Sent()
    port = await start(nursery, handler, sent=sent)
    with trio.fail_after(20):
        async with httpx.AsyncClient() as client:
            replies = {name: await client.get(f"http://127.0.0.1:{port}{name}") for name in regions}
    for name, (offset, length) in regions.items():
        assert replies[name].content == blob[offset : offset + length], name
        assert replies[name].headers["content-length"] == str(length)
    assert await sent.wait(len(regions)) == [(name, length) for name, (_, length) in regions.items()]


async def test_file_body_outside_the_file_is_a_500_before_any_byte(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"12345")
    bodies = {"/past": FileBody(path, 3, 10), "/missing": FileBody(tmp_path / "nope", 0, 1)}
    port = await start(nursery, lambda request: _respond_with(bodies[request.path]))
    with trio.fail_after(10):
        async with httpx.AsyncClient() as client:
            replies = [await client.get(f"http://127.0.0.1:{port}{name}") for name in bodies]
            again = await client.get(f"http://127.0.0.1:{port}/past")
    assert [r.status_code for r in replies] == [500, 500]
    assert again.status_code == 500


async def _respond_with(body: FileBody) -> Response:
    return Response(200, [], body)


class Pieces:
    """An async iterator body that records whether it was closed."""

    def __init__(self, pieces: list[bytes], gate: trio.Event | None = None) -> None:
        self.pieces = pieces
        self.gate = gate
        self.closed = False

    async def generate(self) -> AsyncIterator[bytes]:
        try:
            for i, piece in enumerate(self.pieces):
                if i == 1 and self.gate is not None:
                    await self.gate.wait()
                yield piece
        finally:
            self.closed = True


async def test_iterator_body_is_chunked_and_closed(nursery: trio.Nursery) -> None:
    made: list[Pieces] = []

    generators: list[Any] = []

    async def handler(request: Request) -> Response:
        made.append(Pieces([b"alpha", b"", b"beta" * 1000, b"gamma"]))
        generators.append(made[-1].generate())
        return Response(200, [("content-type", "text/plain")], generators[-1])

    sent = Sent()
    port = await start(nursery, handler, sent=sent)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /it HTTP/1.1\r\nHost: x\r\n\r\nHEAD /it HTTP/1.1\r\nHost: x\r\n\r\n")
            buffer = bytearray()
            got, body = await read_response(stream, buffer)
            head, head_body = await read_response(stream, buffer, "HEAD")
    assert header(got, "transfer-encoding") == "chunked"
    assert body == b"alpha" + b"beta" * 1000 + b"gamma"
    assert head_body == b""
    assert head.status_code == 200
    assert await sent.wait(2) == [("/it", len(body)), ("/it", 0)]
    assert made[0].closed  # ran to its end
    assert all(g.ag_frame is None for g in generators)  # both closed, the HEAD one without ever starting


async def test_client_gone_mid_body_closes_the_iterator(nursery: trio.Nursery) -> None:
    gate = trio.Event()
    pieces = Pieces([b"x" * 1024, b"y" * 1024 * 1024] * 8, gate)
    sent = Sent()
    port = await start(nursery, lambda request: _respond_with_iterator(pieces), sent=sent)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while b"x" * 1024 not in received:  # the first piece arrived; the second waits for the gate
            received += await stream.receive_some(65536)
        await stream.aclose()
        gate.set()
        reports = await sent.wait(1)
        async with httpx.AsyncClient() as client:  # the server is still serving
            assert (await client.get(f"http://127.0.0.1:{port}/")).status_code == 200
    assert pieces.closed
    assert 1024 <= reports[0][1] < 8 * (1024 * 1024 + 1024)  # what left before the client went, not all


async def _respond_with_iterator(pieces: Pieces) -> Response:
    if pieces.gate is not None and pieces.gate.is_set():
        return await _fixed(b"ok")
    return Response(200, [], pieces.generate())


async def test_bad_header_from_the_handler_is_a_500(nursery: trio.Nursery) -> None:
    port = await start(nursery, lambda request: _fixed_with_header(("bad header", "x")))
    with trio.fail_after(10):
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"http://127.0.0.1:{port}/")
    assert reply.status_code == 500


async def _fixed_with_header(extra: tuple[str, str]) -> Response:
    return Response(200, [extra], b"body")
