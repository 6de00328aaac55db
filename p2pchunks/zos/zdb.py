"""The hub transport for ``zdb://host:port/namespace``: chunks from a 0-db (the Zero-OS hub) over RESP.

Owns: the ``zdb://`` URL, a small pool of TCP connections (``SELECT`` on connect when the namespace is not
``default``, with the URL's password if any, as rfs does), one request at a time per connection or a pipeline of
``GET``\\s, per-request timeouts, and the translation of zdb replies into our values and errors:

    GET id          bulk → the chunk's bytes         nil → ChunkNotFound
    EXISTS id       :1 / :0 → True / False
    PING            +PONG
    any -error      HubUnavailable (the hub answered, but not with data)
    refused, reset, closed, malformed reply         HubUnavailable, and the connection is dropped
    no reply within ``timeout``                     HubTimeout, and the connection is dropped

A chunk's key is the raw digest: ``bytes.fromhex(chunk_id)`` (16 bytes for rfs 1 ids, 32 for rfs 2).
A connection taken from the pool that turns out dead (the server closed it while idle) is retried once on a
fresh connection; every command used here is idempotent.

Must not know: verification, retries across hubs, the cache, what a manifest is (zdb carries none: a manifest
is only found if a key of that name exists).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import trio

from ..errors import BadConfig, ChunkNotFound, HubTimeout, HubUnavailable, ManifestNotFound
from ..ids import validate_chunk_id
from .resp import NEED_DATA, ErrorReply, ProtocolViolation, Reply, ReplyParser, encode_command

DEFAULT_PORT = 9900
DEFAULT_NAMESPACE = "default"
PIPELINE_WINDOW = 128
"""GETs sent before reading their replies in ``get_many`` (keeps both sides' socket buffers from filling)."""
_RECEIVE_SIZE = 256 * 1024

T = TypeVar("T")


@dataclass(frozen=True)
class ZdbAddress:
    host: str
    port: int
    namespace: str
    password: str | None = None

    def __str__(self) -> str:
        return f"zdb://{self.host}:{self.port}/{self.namespace}"


def parse_zdb_url(url: str) -> ZdbAddress:
    """``zdb://[:password@]host[:port][/namespace]`` → its parts (port 9900, namespace ``default``)."""
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise BadConfig(f"bad zdb url {url!r}: {exc}") from None
    if parts.scheme != "zdb" or not parts.hostname:
        raise BadConfig(f"bad zdb url {url!r}: want zdb://host:port/namespace")
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) > 1:
        raise BadConfig(f"bad zdb url {url!r}: one namespace at most")
    namespace = unquote(segments[0]) if segments else DEFAULT_NAMESPACE
    password = unquote(parts.password) if parts.password else None
    return ZdbAddress(parts.hostname, port, namespace, password)


class _Broken(Exception):
    """Internal: the connection is unusable (closed, reset, or spoke nonsense)."""


class _Connection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.parser = ReplyParser()

    async def call(self, commands: Sequence[bytes], on_reply: Callable[[], None]) -> list[Reply]:
        """Send ``commands`` at once, then read one reply per command, calling ``on_reply`` after each."""
        try:
            await self.stream.send_all(b"".join(commands))
            replies: list[Reply] = []
            while len(replies) < len(commands):
                reply = self.parser.next_reply()
                if reply is NEED_DATA:
                    data = await self.stream.receive_some(_RECEIVE_SIZE)
                    if not data:
                        raise _Broken("connection closed by zdb")
                    self.parser.feed(data)
                elif isinstance(reply, ProtocolViolation):
                    raise _Broken(f"malformed reply from zdb: {reply.reason}")
                else:
                    replies.append(reply)
                    on_reply()
            return replies
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _Broken(f"connection to zdb lost: {exc or type(exc).__name__}") from exc

    async def close(self) -> None:
        await trio.aclose_forcefully(self.stream)


class ZdbTransport:
    """A hub transport over zdb; see the module docstring. Create and use it inside one trio run."""

    def __init__(self, url: str, *, timeout: float = 10.0, max_connections: int = 8) -> None:
        if timeout <= 0 or max_connections < 1:
            raise BadConfig(f"zdb transport: need timeout > 0, max_connections ≥ 1 (got {timeout}, {max_connections})")
        self.address = parse_zdb_url(url)
        self.timeout = timeout
        self._limiter = trio.CapacityLimiter(max_connections)
        self._idle: list[_Connection] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"ZdbTransport({str(self.address)!r})"

    # --- the Transport interface ---------------------------------------------------------------------------------

    async def fetch_chunk(self, chunk_id: str) -> bytes:
        (reply,) = await self._run([encode_command(b"GET", _key(chunk_id))])
        if reply is None:
            raise ChunkNotFound(chunk_id, f"not on {self.address}")
        return self._expect_bytes(reply, "GET")

    async def fetch_manifest(self, name: str) -> bytes:
        (reply,) = await self._run([encode_command(b"GET", name.encode())])
        if reply is None:
            raise ManifestNotFound(f"manifest {name!r} not on {self.address} (zdb hubs carry chunks only)")
        return self._expect_bytes(reply, "GET")

    async def exists(self, chunk_id: str) -> bool:
        (reply,) = await self._run([encode_command(b"EXISTS", _key(chunk_id))])
        if isinstance(reply, int):
            return reply > 0
        raise self._unexpected(reply, "EXISTS")

    async def ping(self) -> None:
        (reply,) = await self._run([encode_command(b"PING")])
        if reply != b"PONG":
            raise self._unexpected(reply, "PING")

    async def get_many(self, chunk_ids: Sequence[str]) -> list[bytes | None]:
        """Each chunk's bytes, or ``None`` where zdb has no such key; pipelined on one connection."""
        commands = [encode_command(b"GET", _key(chunk_id)) for chunk_id in chunk_ids]
        replies = await self._run(commands)
        return [None if reply is None else self._expect_bytes(reply, "GET") for reply in replies]

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()

    async def __aenter__(self) -> ZdbTransport:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- the pool ------------------------------------------------------------------------------------------------

    async def _run(self, commands: list[bytes]) -> list[Reply]:
        """Send ``commands`` in windows over one pooled connection; each reply must come within ``timeout``."""

        async def job(conn: _Connection, on_reply: Callable[[], None]) -> list[Reply]:
            replies: list[Reply] = []
            for start in range(0, len(commands), PIPELINE_WINDOW):
                replies += await conn.call(commands[start : start + PIPELINE_WINDOW], on_reply)
            return replies

        return await self._with_connection(job)

    async def _with_connection(self, job: Callable[[_Connection, Callable[[], None]], Awaitable[T]]) -> T:
        if self._closed:
            raise HubUnavailable(f"{self!r} is closed")
        try:
            with trio.fail_after(self.timeout) as scope:

                def on_reply() -> None:
                    scope.deadline = trio.current_time() + self.timeout

                async with self._limiter:
                    for attempt in range(2):
                        reused = bool(self._idle)
                        conn = self._idle.pop() if reused else await self._connect(on_reply)
                        try:
                            result = await job(conn, on_reply)
                        except _Broken as exc:
                            await conn.close()
                            if reused and attempt == 0:
                                continue  # died while idle in the pool: once more on a fresh connection
                            raise HubUnavailable(f"{self.address}: {exc}") from exc
                        except BaseException:
                            await conn.close()  # cancelled or timed out mid-reply: the stream is out of step
                            raise
                        await self._release(conn)
                        return result
        except trio.TooSlowError:
            raise HubTimeout(f"{self.address}: no reply within {self.timeout:g}s") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connect(self, on_reply: Callable[[], None]) -> _Connection:
        address = self.address
        try:
            stream = await trio.open_tcp_stream(address.host, address.port)
        except OSError as exc:
            raise HubUnavailable(f"{address}: cannot connect: {exc}") from exc
        conn = _Connection(stream)
        if address.namespace == DEFAULT_NAMESPACE:
            return conn
        select = [b"SELECT", address.namespace.encode()] + ([address.password.encode()] if address.password else [])
        try:
            (reply,) = await conn.call([encode_command(*select)], on_reply)
        except _Broken as exc:
            await conn.close()
            raise HubUnavailable(f"{address}: {exc}") from exc
        except BaseException:
            await conn.close()
            raise
        if reply != b"OK":
            await conn.close()
            raise self._unexpected(reply, "SELECT")
        return conn

    async def _release(self, conn: _Connection) -> None:
        if self._closed:
            await conn.close()
        else:
            self._idle.append(conn)

    # --- replies -------------------------------------------------------------------------------------------------

    def _expect_bytes(self, reply: Reply, command: str) -> bytes:
        if isinstance(reply, bytes):
            return reply
        raise self._unexpected(reply, command)

    def _unexpected(self, reply: Reply, command: str) -> HubUnavailable:
        if isinstance(reply, ErrorReply):
            return HubUnavailable(f"{self.address}: {command} failed: {reply.message}")
        return HubUnavailable(f"{self.address}: unexpected reply to {command}: {reply!r:.80}")


def _key(chunk_id: str) -> bytes:
    """The zdb key of a chunk: its raw digest."""
    return bytes.fromhex(validate_chunk_id(chunk_id))
