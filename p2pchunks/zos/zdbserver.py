"""A zdb-compatible server: the reference hub's zdb mode, and the agent's zdb proxy.

Owns: the accept loop and one session per connection (read → parse → dispatch → write), the small command set a
hub client needs, and the hub's knobs and counters (latency, egress rate cap, outage switch, ``HubStats``):

    PING            → +PONG
    SELECT ns [pw]  → +OK (any namespace; the backend decides what a namespace holds)
    GET key         → the value as a bulk string, or nil
    EXISTS key      → :1 or :0
    anything else   → -Command not supported (HELLO included), as 0-db answers a command it does not know
    wrong arguments → -Unexpected arguments (GET, EXISTS) / -Invalid argument (SELECT), 0-db's words
    a broken request (or one over the limits of ``resp``) → -ERR Protocol error, and the connection is closed

0-db has no HELLO: a RESP3 client (redis-py 8 by default) fails its handshake on a real 0-db and here alike, and
must speak RESP2 (redis-py ``protocol=2``); rfs and redis-cli do.

Where the data comes from is a ``ZdbBackend``: ``HubRootBackend`` reads a hub root directory; the agent's proxy
plugs in its cache. With ``available = False`` every GET, EXISTS and PING answers an error (an outage, as a client
sees one from a zdb that is up but failing). Latency: a GET or EXISTS reply leaves no earlier than ``latency_ms``
after the bytes carrying the request arrived, so a pipeline of GETs pays it once, as over a real link.

Must not know: chunk verification, peers, manifests, the HTTP hub.
"""

from __future__ import annotations

import string
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

import trio

from ..config.schema import join_hostport
from ..errors import BadConfig, ChunkNotFound, P2PChunksError
from ..hub.ratelimit import TokenBucket
from ..hub.stats import HubStats
from ..ids import chunk_relpath
from .resp import (
    NIL,
    PONG,
    Command,
    ProtocolViolation,
    RequestParser,
    bulk,
    error,
    integer,
    protocol_error,
)
from .resp import OK as OK_REPLY

DEFAULT_NAMESPACE = "default"
_RECEIVE_SIZE = 64 * 1024
_CHUNK_KEY_SIZES = (16, 32)


class ZdbBackend(Protocol):
    async def get(self, namespace: str, key: bytes) -> bytes | None: ...

    async def exists(self, namespace: str, key: bytes) -> bool: ...


class HubRootBackend:
    """Serves ``<root>/chunks/<ab>/<cd>/<hex(key)>`` for 16- and 32-byte keys, in every namespace alike."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: bytes) -> Path | None:
        if len(key) not in _CHUNK_KEY_SIZES:
            return None
        return self.root / "chunks" / chunk_relpath(key.hex())

    async def get(self, namespace: str, key: bytes) -> bytes | None:
        path = self._path(key)
        if path is None:
            return None
        try:
            return await trio.to_thread.run_sync(path.read_bytes)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    async def exists(self, namespace: str, key: bytes) -> bool:
        path = self._path(key)
        return path is not None and await trio.to_thread.run_sync(path.is_file)


class ZdbServer:
    """One zdb endpoint over a backend; ``serve`` runs it until cancelled."""

    def __init__(
        self,
        backend: ZdbBackend,
        *,
        latency_ms: float = 0,
        rate_mbps: float | None = None,
        stats: HubStats | None = None,
        max_connections: int = 512,
    ) -> None:
        if latency_ms < 0 or (rate_mbps is not None and rate_mbps <= 0) or max_connections < 1:
            raise BadConfig(f"zdb server: bad knobs latency_ms={latency_ms} rate_mbps={rate_mbps}")
        self.backend = backend
        self.latency = latency_ms / 1000
        self.stats = stats if stats is not None else HubStats()
        self.available = True
        self.max_connections = max_connections
        self.connections = 0
        self.egress = TokenBucket(rate_mbps * 125_000 if rate_mbps is not None else None)  # Mbit/s → bytes/s

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on ``host:port`` (0: any free port) and report the bound port through ``task_status``."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        client = _peer_host(stream)
        try:
            if self.connections >= self.max_connections:
                await _say_goodbye(stream, error("ERR max number of clients reached"))
                return
            self.connections += 1
            try:
                await self._session(stream, client)
            finally:
                self.connections -= 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; serve_listeners closes the stream

    async def _session(self, stream: trio.SocketStream, client: str) -> None:
        parser = RequestParser()
        namespace = DEFAULT_NAMESPACE
        while True:
            data = await stream.receive_some(_RECEIVE_SIZE)
            if not data:
                return
            arrived = trio.current_time()
            parser.feed(data)
            while (event := parser.next_event()) is not None:
                if isinstance(event, ProtocolViolation):
                    await _say_goodbye(stream, protocol_error(event))
                    return
                namespace = await self._dispatch(stream, client, event, namespace, arrived)

    async def _dispatch(
        self, stream: trio.SocketStream, client: str, command: Command, namespace: str, arrived: float
    ) -> str:
        """Answer one command; return the session's namespace afterwards."""
        name, args = command.name, command.args[1:]
        arity = {"PING": (0, 1), "SELECT": (1, 2), "GET": (1, 1), "EXISTS": (1, 1)}.get(name)
        if arity is None:
            await stream.send_all(error("Command not supported"))
        elif not arity[0] <= len(args) <= arity[1]:
            await stream.send_all(error("Invalid argument" if name == "SELECT" else "Unexpected arguments"))
        elif name == "SELECT":
            namespace = args[0].decode("utf-8", "replace")
            await stream.send_all(OK_REPLY)
        elif not self.available:
            await self._sleep_latency(name, arrived)
            await stream.send_all(error("ERR hub unavailable"))
        elif name == "PING":
            await stream.send_all(PONG)
        elif name == "EXISTS":
            await self._exists(stream, namespace, args[0], arrived)
        else:
            with self.stats.request(client):
                await self._get(stream, client, namespace, args[0], arrived)
        return namespace

    async def _get(self, stream: trio.SocketStream, client: str, namespace: str, key: bytes, arrived: float) -> None:
        try:
            data = await self.backend.get(namespace, key)
        except ChunkNotFound:
            data = None
        except (P2PChunksError, OSError) as exc:  # the backend failed (the proxy's hub is down, a disk error)
            await self._sleep_latency("GET", arrived)
            await stream.send_all(error(f"ERR {_printable(str(exc))}"))
            return
        await self._sleep_latency("GET", arrived)
        if data is None:
            await stream.send_all(NIL)
            return
        reply = bulk(data)
        await self.egress.acquire(len(reply))
        await stream.send_all(reply)
        self.stats.sent(client, len(data))

    async def _exists(self, stream: trio.SocketStream, namespace: str, key: bytes, arrived: float) -> None:
        try:
            reply = integer(int(await self.backend.exists(namespace, key)))
        except ChunkNotFound:
            reply = integer(0)
        except (P2PChunksError, OSError) as exc:
            reply = error(f"ERR {_printable(str(exc))}")
        await self._sleep_latency("EXISTS", arrived)
        await stream.send_all(reply)

    async def _sleep_latency(self, name: str, arrived: float) -> None:
        if self.latency and name in ("GET", "EXISTS"):
            await trio.sleep_until(arrived + self.latency)


@asynccontextmanager
async def open_zdb_server(
    backend: ZdbBackend,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    latency_ms: float = 0,
    rate_mbps: float | None = None,
    stats: HubStats | None = None,
    max_connections: int = 512,
) -> AsyncIterator[tuple[ZdbServer, str]]:
    """Run a ``ZdbServer`` for the duration of the block; yields it and its ``zdb://host:port/default`` url."""
    server = ZdbServer(
        backend, latency_ms=latency_ms, rate_mbps=rate_mbps, stats=stats, max_connections=max_connections
    )
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.serve, host, port)
        yield server, f"zdb://{join_hostport(host, bound)}/{DEFAULT_NAMESPACE}"
        nursery.cancel_scope.cancel()


async def _say_goodbye(stream: trio.SocketStream, last_words: bytes) -> None:
    """Send a final error and half-close, then drain briefly: closing with unread input would reset the
    connection and could destroy the error before the client reads it."""
    with trio.move_on_after(1):
        await stream.send_all(last_words)
        await stream.send_eof()
        for _ in range(16):
            if not await stream.receive_some(_RECEIVE_SIZE):
                break


def _peer_host(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return "?"


def _printable(text: str, limit: int = 80) -> str:
    return "".join(c if c in string.printable and c not in "\r\n\t\x0b\x0c" else "?" for c in text[:limit])
