"""A small HTTP/1.1 server: h11 speaks the protocol, trio moves the bytes, ``os.sendfile`` sends file bodies.

Owns: connections (keep-alive; pipelined requests are answered one at a time, in order, because h11 runs one
request/response cycle at a time), the limits that stop a slow or hostile client from pinning the server (header
and body sizes, header/body/idle timeouts, a connection cap), and turning a handler's :class:`Response` into
bytes on the wire: ``bytes``, a :class:`FileBody` sent zero-copy, or an async iterator that the handler paces.
Must not know: any route, status policy or application object; the handler decides everything about a request.

Theory of operation. One task per connection, all in the server's nursery. Each cycle reads a request head under
a deadline, then its body under another, calls the handler, sends the response and either starts the next cycle
or closes. A connection that sends nothing is closed quietly after ``idle_timeout`` (``header_timeout`` while it
is fresh); one that stalls halfway through a request gets 408 (the slowloris defence). Protocol errors get 400
(431 for a head over ``max_header_bytes``, 413 for a body over ``max_body_bytes``); a handler that raises gets a
500 JSON answer and the server goes on. At ``max_connections`` open connections the server stops accepting and
newcomers wait in the kernel's backlog until a connection closes.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import cast

import h11
import trio

from .messages import (
    Body,
    FileBody,
    Handler,
    OnSent,
    Request,
    Response,
    error_body,
    error_response,
    json_response,
    parse_target,
    reason,
    response_head,
)

__all__ = [
    "Body",
    "FileBody",
    "Handler",
    "OnSent",
    "Request",
    "Response",
    "ServerLimits",
    "bound_port",
    "json_response",
    "open_listeners",
    "serve_http",
    "serve_listeners",
]

log = logging.getLogger(__name__)

RECV_BYTES = 64 * 1024
PIECE_BYTES = 64 * 1024
DRAIN_SECONDS = 1.0
DRAIN_BYTES = 256 * 1024
_SENDFILE_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK, errno.EBADF}


@dataclass(frozen=True)
class ServerLimits:
    max_header_bytes: int = 16384
    max_body_bytes: int = 1 << 20
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_connections: int = 512


async def open_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """Bind ``host:port`` now (port 0: any free one), so the port is known before anything is served."""
    return list(await trio.open_tcp_listeners(port, host=host))


def bound_port(listeners: list[trio.SocketListener]) -> int:
    return int(listeners[0].socket.getsockname()[1])


async def serve_listeners(
    handler: Handler,
    listeners: list[trio.SocketListener],
    *,
    limits: ServerLimits = ServerLimits(),
    on_sent: OnSent | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on already bound ``listeners`` until cancelled (then close them).

    ``on_sent(request, n)`` is called once per handled request with the body bytes actually handed to the socket.
    """
    try:
        slots = trio.Semaphore(limits.max_connections)
        run = partial(_run_connection, handler=handler, limits=limits, on_sent=on_sent, slots=slots)
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(_accept_loop, listener, slots, nursery, run)
            task_status.started(bound_port(listeners))
    finally:
        for listener in listeners:
            listener.socket.close()


async def serve_http(
    handler: Handler,
    host: str,
    port: int,
    *,
    limits: ServerLimits = ServerLimits(),
    on_sent: OnSent | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind ``host:port`` and serve ``handler`` until cancelled; ``task_status.started(port actually bound)``."""
    listeners = await open_listeners(host, port)
    await serve_listeners(handler, listeners, limits=limits, on_sent=on_sent, task_status=task_status)


# What trio's own serve_listeners retries on: out of file descriptors, buffers or memory. Anything else is a bug
# or a closed listener and ends the server.
_ACCEPT_CAPACITY_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_BACKOFF_S = 0.1


async def _accept_loop(
    listener: trio.SocketListener,
    slots: trio.Semaphore,
    nursery: trio.Nursery,
    run: Callable[[trio.SocketStream], Awaitable[None]],
) -> None:
    while True:
        await slots.acquire()
        try:
            stream = await listener.accept()
        except OSError as error:
            slots.release()
            if error.errno not in _ACCEPT_CAPACITY_ERRORS:
                raise
            log.warning("accept failed (%s): waiting %.1f s for resources", error, ACCEPT_BACKOFF_S)
            await trio.sleep(ACCEPT_BACKOFF_S)
            continue
        except BaseException:
            slots.release()
            raise
        nursery.start_soon(run, stream)


async def _run_connection(
    stream: trio.SocketStream, *, handler: Handler, limits: ServerLimits, on_sent: OnSent | None, slots: trio.Semaphore
) -> None:
    try:
        async with stream:
            try:
                await _Connection(stream, handler, limits, on_sent).run()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, h11.ProtocolError) as error:
                log.debug("connection dropped: %r", error)
            except Exception:  # e.g. a streamed body that raised after the head went out: drop this one only
                log.exception("connection failed")
    finally:
        slots.release()


class _FileRegion:
    """What h11 passes through untouched in place of a file body (see h11's ``send_with_data_passthrough``)."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


class _Connection:
    def __init__(self, stream: trio.SocketStream, handler: Handler, limits: ServerLimits, on_sent: OnSent | None):
        self.stream = stream
        self.handler = handler
        self.limits = limits
        self.on_sent = on_sent
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        peer = stream.socket.getpeername()
        self.client = (str(peer[0]), int(peer[1]))
        self.started = False  # has any byte of the current request arrived?
        self.sent = 0

    async def run(self) -> None:
        first = True
        while True:
            outcome = await self._read_request(first)
            if isinstance(outcome, tuple):
                await self._fail(*outcome)
                return
            if outcome is None:
                return
            first = False
            await self._respond(outcome, await self._call(outcome))
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return
            self.conn.start_next_cycle()

    # ---- reading ------------------------------------------------------------------------------------------

    async def _next_event(self, scope: trio.CancelScope | None = None) -> object:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.receive_some(RECV_BYTES)
            if data and scope is not None and not self.started:
                self.started = True  # a request is on its way: from now on it has header_timeout to arrive
                scope.deadline = trio.current_time() + self.limits.header_timeout
            self.conn.receive_data(data)

    async def _read_request(self, first: bool) -> Request | tuple[int, str] | None:
        """The next request, an error to answer (status, message), or None to close quietly."""
        self.started = bool(self.conn.trailing_data[0])
        limits = self.limits
        with trio.move_on_after(limits.header_timeout if first or self.started else limits.idle_timeout) as scope:
            try:
                head = await self._next_event(scope)
            except h11.RemoteProtocolError as error:
                return error.error_status_hint, str(error)
        if scope.cancelled_caught:
            return (408, "request header timeout") if self.started else None
        if not isinstance(head, h11.Request):
            return None  # ConnectionClosed (or PAUSED, which cannot happen here)
        # h11 bounds only a head still incomplete in its buffer; one that arrived whole is measured here.
        if len(head.target) + sum(len(k) + len(v) + 4 for k, v in head.headers) > limits.max_header_bytes:
            return 431, f"request head over {limits.max_header_bytes} bytes"
        headers: dict[str, str] = {}
        for raw_name, raw_value in head.headers:
            name, value = raw_name.decode("ascii"), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        try:
            path, query, raw_query = parse_target(head.target)
        except ValueError as error:
            return 400, f"bad request target: {error}"
        declared = headers.get("content-length", "0")
        if declared.isdigit() and int(declared) > limits.max_body_bytes:
            return 413, f"request body over {limits.max_body_bytes} bytes"
        if self.conn.client_is_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))
        parts: list[bytes] = []
        size = 0
        with trio.move_on_after(limits.body_timeout) as scope:
            try:
                while True:
                    event = await self._next_event()
                    if isinstance(event, h11.Data):
                        size += len(event.data)
                        if size > limits.max_body_bytes:
                            return 413, f"request body over {limits.max_body_bytes} bytes"
                        parts.append(event.data)
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return None
            except h11.RemoteProtocolError as error:
                return error.error_status_hint, str(error)
        if scope.cancelled_caught:
            return 408, "request body timeout"
        method = head.method.decode("ascii")
        return Request(method, path, query, headers, b"".join(parts), self.client, raw_query)

    async def _call(self, request: Request) -> Response:
        try:
            return await self.handler(request)
        except Exception:
            log.exception("handler failed on %s %s", request.method, request.path)
            return error_response(500, "internal server error")

    # ---- writing ------------------------------------------------------------------------------------------

    async def _send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def _respond(self, request: Request, response: Response) -> None:
        self.sent = 0
        body = original = response.body
        fd: int | None = None
        try:
            if isinstance(body, FileBody):
                try:
                    fd = _open_region(body)
                except OSError as error:
                    log.error("cannot send %s: %s", body.path, error)
                    response = error_response(500, str(error))
                    body = response.body
            try:
                head = response_head(response)
            except h11.LocalProtocolError as error:
                log.error("handler gave a bad response to %s %s: %s", request.method, request.path, error)
                response = error_response(500, "bad response")
                head, body = response_head(response), response.body
            if request.method == "HEAD" or response.status in (204, 304):
                await self._send(head)
            elif isinstance(body, bytes) and len(body) <= PIECE_BYTES:
                out = [self.conn.send(head), self.conn.send(h11.Data(data=body)) if body else b""]
                await self.stream.send_all(b"".join(x or b"" for x in out))
                self.sent = len(body)
            else:
                await self._send(head)
                await self._send_body(body, fd)
            await self._send(h11.EndOfMessage())
        finally:
            if fd is not None:
                os.close(fd)
            aclose = getattr(original, "aclose", None)
            if aclose is not None:
                await aclose()
            if self.on_sent is not None:
                try:
                    self.on_sent(request, self.sent)
                except Exception:
                    log.exception("on_sent callback failed")

    async def _send_body(self, body: Body, fd: int | None) -> None:
        if isinstance(body, bytes):
            for start in range(0, len(body), PIECE_BYTES):
                piece = body[start : start + PIECE_BYTES]
                await self._send(h11.Data(data=piece))
                self.sent += len(piece)
        elif isinstance(body, FileBody):
            assert fd is not None
            region = _FileRegion(body.length)
            for part in self.conn.send_with_data_passthrough(h11.Data(data=cast(bytes, region))) or []:
                if part is cast(bytes, region):
                    await self._send_file(fd, body.offset, body.length)
                else:
                    await self.stream.send_all(part)
        else:
            async for piece in body:
                if piece:
                    await self._send(h11.Data(data=piece))
                    self.sent += len(piece)

    async def _send_file(self, fd: int, offset: int, length: int) -> None:
        sock = self.stream.socket
        position, end = offset, offset + length
        while position < end:
            try:  # try first, wait only when the socket is full: most chunks go out in one call
                count = os.sendfile(sock.fileno(), fd, position, end - position)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            except OSError as error:
                if error.errno not in _SENDFILE_UNSUPPORTED:
                    raise
                log.debug("sendfile failed (%s): reading instead", error)
                await self._send_file_by_reading(fd, position, end)
                return
            if count == 0:
                raise OSError(errno.EIO, "file ended before its declared length")
            position += count
            self.sent += count

    async def _send_file_by_reading(self, fd: int, position: int, end: int) -> None:
        while position < end:
            piece = await trio.to_thread.run_sync(os.pread, fd, min(PIECE_BYTES, end - position), position)
            if not piece:
                raise OSError(errno.EIO, "file ended before its declared length")
            await self.stream.send_all(piece)
            position += len(piece)
            self.sent += len(piece)

    async def _fail(self, status: int, message: str) -> None:
        """Answer an error the request itself caused, then close without resetting the client."""
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = error_body(status, message)
            headers = [
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                ("connection", "close"),
            ]
            try:
                await self._send(h11.Response(status_code=status, headers=headers, reason=reason(status)))
                await self._send(h11.Data(data=body))
                await self._send(h11.EndOfMessage())
            except h11.LocalProtocolError as error:  # e.g. a HEAD request, whose answer carries no body
                log.debug("error response cut short: %s", error)
        # Closing with unread input would make the kernel send RST and the client might lose our answer: shut
        # our side, read (bounded) what the client still sends, then close.
        with trio.move_on_after(DRAIN_SECONDS):
            await self.stream.send_eof()
            drained = 0
            while drained < DRAIN_BYTES:
                data = await self.stream.receive_some(RECV_BYTES)
                if not data:
                    break
                drained += len(data)


def _open_region(body: FileBody) -> int:
    """Open ``body.path`` and check that it holds the region, so a short file fails before the head is sent."""
    fd = os.open(body.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if body.offset < 0 or body.length < 0 or body.offset + body.length > size:
            raise OSError(errno.EINVAL, f"region {body.offset}+{body.length} is outside a file of {size} bytes")
    except BaseException:
        os.close(fd)
        raise
    return fd
