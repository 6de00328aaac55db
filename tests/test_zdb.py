"""ZdbTransport and ZdbServer over 127.0.0.1, each also proven against an independent implementation:
redis-py as a client of our server, and a real redis-server as the server of our transport."""

from __future__ import annotations

import contextlib
import functools
import random
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import trio
import trio.testing

from p2pchunks.errors import BadChunkId, BadConfig, ChunkNotFound, HubTimeout, HubUnavailable, ManifestNotFound
from p2pchunks.hub.stats import HubStats
from p2pchunks.ids import chunk_id_of, chunk_relpath
from p2pchunks.zos.resp import NEED_DATA, Command, ReplyParser, RequestParser, bulk, encode_command
from p2pchunks.zos.zdb import PIPELINE_WINDOW, ZdbAddress, ZdbTransport, parse_zdb_url
from p2pchunks.zos.zdbserver import HubRootBackend, ZdbServer, open_zdb_server

LIMIT = 10  # seconds: every network test is bounded by this


class DictBackend:
    """A backend with real namespaces, and a gate to hold GETs until ``hold`` of them are in flight."""

    def __init__(self, data: dict[str, dict[bytes, bytes]], hold: int = 0) -> None:
        self.data = data
        self.hold = hold
        self.waiting = 0
        self.gate = trio.Event()

    async def get(self, namespace: str, key: bytes) -> bytes | None:
        if self.hold:
            self.waiting += 1
            if self.waiting >= self.hold:
                self.gate.set()
            await self.gate.wait()
        return self.data.get(namespace, {}).get(key)

    async def exists(self, namespace: str, key: bytes) -> bool:
        return key in self.data.get(namespace, {})


def blob(n: int, size: int) -> bytes:
    return bytes((n * 7 + i) % 251 for i in range(size))


CHUNKS = {chunk_id_of(blob(n, 1000 + n * 333), 32 if n % 2 else 16): blob(n, 1000 + n * 333) for n in range(6)}
MISSING = chunk_id_of(b"not there")


@pytest.fixture
def hub_root(tmp_path: Path) -> Path:
    for chunk_id, data in CHUNKS.items():
        path = tmp_path / "chunks" / chunk_relpath(chunk_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return tmp_path


@pytest.fixture
async def hub(hub_root: Path) -> AsyncIterator[tuple[ZdbServer, str]]:
    async with open_zdb_server(HubRootBackend(hub_root)) as (server, url):
        yield server, url


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A port nothing listens on while the block runs: bound by us (so nobody else takes it), never listening, so
    every connection to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


# --- urls -------------------------------------------------------------------------------------------------------

URLS = [
    ("zdb://hub.threefold.me:9900/default", ZdbAddress("hub.threefold.me", 9900, "default")),
    ("zdb://hub.threefold.me", ZdbAddress("hub.threefold.me", 9900, "default")),
    ("zdb://127.0.0.1:1234/ns", ZdbAddress("127.0.0.1", 1234, "ns")),
    ("zdb://user:s%40cret@h/ns/", ZdbAddress("h", 9900, "ns", "s@cret")),
    ("zdb://[::1]:9901/x", ZdbAddress("::1", 9901, "x")),
]


@pytest.mark.parametrize(("url", "expected"), URLS)
def test_parse_url(url: str, expected: ZdbAddress) -> None:
    assert parse_zdb_url(url) == expected


@pytest.mark.parametrize("url", ["http://h/ns", "zdb:///ns", "zdb://h:99999/ns", "zdb://h/a/b", "zdb://h:x/"])
def test_parse_bad_url(url: str) -> None:
    with pytest.raises(BadConfig):
        parse_zdb_url(url)


# --- ZdbTransport ↔ ZdbServer -----------------------------------------------------------------------------------


async def test_fetch_exists_ping_and_missing(hub: tuple[ZdbServer, str]) -> None:
    _, url = hub
    with trio.fail_after(LIMIT):
        async with ZdbTransport(url) as zdb:
            await zdb.ping()
            for chunk_id, data in CHUNKS.items():
                assert await zdb.fetch_chunk(chunk_id) == data
                assert await zdb.exists(chunk_id) is True
            assert await zdb.exists(MISSING) is False
            with pytest.raises(ChunkNotFound) as caught:
                await zdb.fetch_chunk(MISSING)
            assert caught.value.chunk_id == MISSING
            with pytest.raises(ManifestNotFound):
                await zdb.fetch_manifest("alpine")
            with pytest.raises(BadChunkId):
                await zdb.fetch_chunk("XYZ")


async def test_get_many_is_pipelined_on_one_connection(hub: tuple[ZdbServer, str]) -> None:
    server, url = hub
    ids = [*CHUNKS, MISSING] * (PIPELINE_WINDOW // 3)  # several windows, order kept, repeats allowed
    accepted = 0

    with trio.fail_after(LIMIT):
        async with ZdbTransport(url) as zdb:
            got = await zdb.get_many(ids)
            accepted = server.stats.requests
            assert server.connections == 1, "one connection, kept in the pool"
    assert got == [CHUNKS.get(i) for i in ids]
    assert accepted == len(ids)
    assert server.stats.requests_by_client == {"127.0.0.1": len(ids)}


async def test_get_many_sends_the_whole_window_before_reading(nursery: trio.Nursery) -> None:
    """A server that answers nothing until it holds every GET: only a pipelining client gets through."""
    ids = [*CHUNKS, MISSING]

    async def answer_when_all_arrived(stream: trio.SocketStream) -> None:
        parser, keys = RequestParser(), list[bytes]()
        while len(keys) < len(ids):
            parser.feed(await stream.receive_some(65536))
            while isinstance(event := parser.next_event(), Command):
                keys.append(event.args[1])
        await stream.send_all(b"".join(bulk(CHUNKS.get(key.hex())) for key in keys))

    listeners = await nursery.start(functools.partial(trio.serve_tcp, answer_when_all_arrived, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(LIMIT):
        async with ZdbTransport(f"zdb://127.0.0.1:{port}", timeout=LIMIT / 2) as zdb:
            assert await zdb.get_many(ids) == [CHUNKS.get(i) for i in ids]


async def test_namespace_is_selected() -> None:
    key = bytes.fromhex(MISSING)
    backend = DictBackend({"default": {key: b"in default"}, "other": {key: b"in other"}})
    with trio.fail_after(LIMIT):
        async with open_zdb_server(backend) as (_, url):
            base = url.removesuffix("/default")
            async with ZdbTransport(base) as a, ZdbTransport(f"{base}/other") as b, ZdbTransport(f"{base}/none") as c:
                assert await a.fetch_chunk(MISSING) == b"in default"
                assert await b.fetch_chunk(MISSING) == b"in other"
                assert await b.exists(MISSING) is True
                assert await c.exists(MISSING) is False
                with pytest.raises(ChunkNotFound):
                    await c.fetch_chunk(MISSING)


async def test_manifest_found_when_the_key_exists() -> None:
    backend = DictBackend({"default": {b"alpine": b"d8:manifest"}})
    with trio.fail_after(LIMIT):
        async with open_zdb_server(backend) as (_, url), ZdbTransport(url) as zdb:
            assert await zdb.fetch_manifest("alpine") == b"d8:manifest"


async def test_latency_above_the_timeout_is_a_hub_timeout(hub_root: Path) -> None:
    chunk_id, data = next(iter(CHUNKS.items()))
    with trio.fail_after(LIMIT):
        async with open_zdb_server(HubRootBackend(hub_root), latency_ms=400) as (_, url):
            async with ZdbTransport(url, timeout=0.05) as zdb:
                with pytest.raises(HubTimeout):
                    await zdb.fetch_chunk(chunk_id)
                with pytest.raises(HubTimeout):
                    await zdb.get_many([chunk_id])
            async with ZdbTransport(url, timeout=5) as zdb:
                assert await zdb.fetch_chunk(chunk_id) == data, "below the timeout, latency only delays"


async def test_server_down_is_hub_unavailable() -> None:
    with trio.fail_after(LIMIT), refusing_port() as port:
        async with ZdbTransport(f"zdb://127.0.0.1:{port}/default") as zdb:
            with pytest.raises(HubUnavailable) as caught:
                await zdb.fetch_chunk(MISSING)
            assert not isinstance(caught.value, HubTimeout)
            with pytest.raises(HubUnavailable):
                await zdb.ping()


async def test_outage_switch(hub: tuple[ZdbServer, str]) -> None:
    server, url = hub
    chunk_id, data = next(iter(CHUNKS.items()))
    with trio.fail_after(LIMIT):
        async with ZdbTransport(url) as zdb:
            server.available = False
            for call in (zdb.fetch_chunk, zdb.exists):
                with pytest.raises(HubUnavailable, match="hub unavailable"):
                    await call(chunk_id)
            with pytest.raises(HubUnavailable):
                await zdb.ping()
            server.available = True
            assert await zdb.fetch_chunk(chunk_id) == data
            assert server.connections == 1, "an error reply does not cost the connection"


async def test_server_closing_idle_connections_is_retried_once(nursery: trio.Nursery) -> None:
    """A pooled connection the server closed meanwhile is replaced transparently."""
    accepted: list[int] = []

    async def one_answer_then_close(stream: trio.SocketStream) -> None:
        accepted.append(1)
        await stream.receive_some(1024)
        await stream.send_all(b"+PONG\r\n")

    listeners = await nursery.start(functools.partial(trio.serve_tcp, one_answer_then_close, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(LIMIT):
        async with ZdbTransport(f"zdb://127.0.0.1:{port}") as zdb:
            await zdb.ping()
            await trio.testing.wait_all_tasks_blocked()
            await zdb.ping()
    assert len(accepted) == 2


@pytest.mark.parametrize(
    ("label", "reply", "error"),
    [
        ("garbage", b"?\r\n", "malformed reply"),
        ("closed mid-reply", b"$10\r\nabc", "closed by zdb"),
        ("wrong type", b":1\r\n", "unexpected reply to GET"),
    ],
)
async def test_bad_servers_are_hub_unavailable(nursery: trio.Nursery, label: str, reply: bytes, error: str) -> None:
    async def answer(stream: trio.SocketStream) -> None:
        await stream.receive_some(1024)
        await stream.send_all(reply)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, answer, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(LIMIT):
        async with ZdbTransport(f"zdb://127.0.0.1:{port}") as zdb:
            with pytest.raises(HubUnavailable, match=error):
                await zdb.fetch_chunk(MISSING)


async def test_closed_transport_refuses(hub: tuple[ZdbServer, str]) -> None:
    _, url = hub
    zdb = ZdbTransport(url)
    with trio.fail_after(LIMIT):
        await zdb.ping()
        await zdb.aclose()
        with pytest.raises(HubUnavailable, match="closed"):
            await zdb.ping()


# --- the server alone -------------------------------------------------------------------------------------------


END = b"-Command not supported\r\n"


def _replies_due(request: bytes) -> int:
    """One reply per command, plus the marker's; a request the server must refuse gets no end: read to the close."""
    parser = RequestParser()
    parser.feed(request + b"ZZEND\r\n")
    count = 0
    while (event := parser.next_event()) is not None:
        if not isinstance(event, Command):
            return 1 << 30
        count += 1
    return count


async def raw_exchange(url: str, request: bytes, local: str = "127.0.0.1") -> tuple[bytes, bool]:
    """Send ``request`` then an unknown command as an end marker, on a fresh connection from ``local``.

    Returns what came back before the marker's reply (read until one reply per command plus the marker's has been
    parsed), and whether the server closed instead of answering the marker."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local)
    received = b""
    replies, wanted = ReplyParser(), _replies_due(request)
    async with stream:
        await stream.send_all(request + b"ZZEND\r\n")
        while wanted:
            data = await stream.receive_some(65536)
            if not data:
                return received, True
            received += data
            replies.feed(data)
            while wanted and replies.next_reply() is not NEED_DATA:
                wanted -= 1
    assert received.endswith(END)
    return received.removesuffix(END), False


SERVER_CASES = [
    ("inline ping", b"PING\r\n", b"+PONG\r\n"),
    ("select then exists", encode_command("SELECT", "x") + encode_command("EXISTS", "k"), b"+OK\r\n:0\r\n"),
    ("unknown", encode_command("SET", "k", "v"), b"-Command not supported\r\n"),
    ("hello (redis-py 8's first words)", encode_command("HELLO", "3"), b"-Command not supported\r\n"),
    ("arity", encode_command("GET"), b"-Unexpected arguments\r\n"),
    ("select arity", encode_command("SELECT"), b"-Invalid argument\r\n"),
    ("nil", encode_command("GET", "k"), b"$-1\r\n"),
    ("protocol error", b"*1\r\n$x\r\nPING\r\n", b"-ERR Protocol error: invalid bulk length b'x'\r\n"),
    (
        "oversized bulk",
        b"*2\r\n$3\r\nGET\r\n$99999999\r\n",
        b"-ERR Protocol error: invalid bulk length 99999999\r\n",
    ),
]


@pytest.mark.parametrize(("label", "request_bytes", "expected"), SERVER_CASES, ids=[c[0] for c in SERVER_CASES])
async def test_server_replies(hub: tuple[ZdbServer, str], label: str, request_bytes: bytes, expected: bytes) -> None:
    with trio.fail_after(LIMIT):
        received, closed = await raw_exchange(hub[1], request_bytes)
    assert received == expected
    assert closed is expected.startswith(b"-ERR Protocol error"), "a protocol error, and only that, closes"


async def test_max_connections(hub_root: Path) -> None:
    with trio.fail_after(LIMIT):
        async with open_zdb_server(HubRootBackend(hub_root), max_connections=1) as (_, url), ZdbTransport(url) as zdb:
            await zdb.ping()  # holds the one slot while pooled
            assert await raw_exchange(url, b"PING\r\n") == (b"-ERR max number of clients reached\r\n", True)


async def test_stats_count_bytes_per_client_and_peak_inflight() -> None:
    ids = list(CHUNKS)[:4]
    backend = DictBackend({"default": {bytes.fromhex(i): CHUNKS[i] for i in ids}}, hold=len(ids))
    stats = HubStats()
    with trio.fail_after(LIMIT):
        async with open_zdb_server(backend, stats=stats) as (server, url):
            assert server.stats is stats
            async with ZdbTransport(url, max_connections=len(ids)) as zdb, trio.open_nursery() as nursery:
                for chunk_id in ids:  # all held at the backend until every one is in flight
                    nursery.start_soon(zdb.fetch_chunk, chunk_id)
            backend.hold = 0
            reply, _ = await raw_exchange(url, encode_command("GET", bytes.fromhex(ids[0])), local="127.0.0.2")
            assert reply == bulk(CHUNKS[ids[0]])
    assert stats.peak_inflight == len(ids)
    assert stats.inflight == 0
    assert stats.requests == len(ids) + 1
    assert stats.bytes_by_client == {
        "127.0.0.1": sum(len(CHUNKS[i]) for i in ids),
        "127.0.0.2": len(CHUNKS[ids[0]]),
    }
    assert stats.total_bytes == sum(stats.bytes_by_client.values())


async def test_rate_cap_serves_everything_through_the_bucket(hub_root: Path) -> None:
    with trio.fail_after(LIMIT):
        async with open_zdb_server(HubRootBackend(hub_root), rate_mbps=80) as (server, url), ZdbTransport(url) as zdb:
            assert server.egress.rate == 10_000_000
            assert await zdb.get_many(list(CHUNKS)) == list(CHUNKS.values())
    assert server.stats.total_bytes == sum(map(len, CHUNKS.values()))


class FailingBackend:
    """The agent's proxy when its own hub is down."""

    async def get(self, namespace: str, key: bytes) -> bytes | None:
        raise HubUnavailable("upstream hub down")

    async def exists(self, namespace: str, key: bytes) -> bool:
        raise OSError("disk on fire")


async def test_backend_failures_are_error_replies_and_the_session_goes_on() -> None:
    request = encode_command("GET", "k") + encode_command("EXISTS", "k") + b"PING\r\n"
    with trio.fail_after(LIMIT):
        async with open_zdb_server(FailingBackend()) as (_, url):
            received, closed = await raw_exchange(url, request)
    assert received == b"-ERR upstream hub down\r\n-ERR disk on fire\r\n+PONG\r\n"
    assert not closed


def test_server_knobs_are_checked() -> None:
    backend = DictBackend({})
    for knobs in ({"latency_ms": -1}, {"rate_mbps": 0}, {"max_connections": 0}):
        with pytest.raises(BadConfig):
            ZdbServer(backend, **knobs)  # type: ignore[arg-type]


async def test_hub_root_backend_ignores_other_keys(hub_root: Path) -> None:
    backend = HubRootBackend(hub_root)
    chunk_id = next(iter(CHUNKS))
    assert await backend.get("any", bytes.fromhex(chunk_id)) == CHUNKS[chunk_id]
    assert await backend.get("any", b"../../etc/passwd") is None
    assert await backend.get("any", bytes(32)) is None
    assert await backend.exists("any", bytes.fromhex(chunk_id)) is True
    assert await backend.exists("any", b"short") is False


# --- redis-py (an independent client) against ZdbServer --------------------------------------------------------


async def test_redis_py_client_against_our_server(hub: tuple[ZdbServer, str]) -> None:
    _, url = hub
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    chunk_id, data = next(iter(CHUNKS.items()))

    def session() -> list[object]:
        # zdb speaks RESP2 only (no HELLO): so does redis-py when told protocol=2
        client = redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=5, socket_connect_timeout=5)
        try:
            return [
                client.ping(),
                client.execute_command("SELECT", "some-namespace"),  # type: ignore[no-untyped-call]
                client.get(bytes.fromhex(chunk_id)),
                client.get(bytes.fromhex(MISSING)),
                client.exists(bytes.fromhex(chunk_id)),
                client.exists(bytes.fromhex(MISSING)),
            ]
        finally:
            client.close()

    with trio.fail_after(LIMIT):
        results = await trio.to_thread.run_sync(session)
    assert results == [True, True, data, None, 1, 0]


# --- ZdbTransport against a real redis-server (an independent server) ------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    # redis-server cannot bind port 0 and say which port it got: try random ports below the kernel's ephemeral
    # range (which port-0 binds never get), the next one if that one was taken.
    rng = random.Random()
    for _ in range(5):
        port = rng.randrange(20000, 32000)
        argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        proc = subprocess.Popen([*argv, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if _redis_answers(port, proc):
                yield port
                return
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    pytest.fail("redis-server did not start on any of 5 ports")


def _redis_answers(port: int, proc: subprocess.Popen[bytes]) -> bool:
    """True once redis-server answers on ``port``; False if it exited first (the port was taken)."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        for _ in range(100):
            try:
                client.ping()
                return True
            except redis.ConnectionError:
                if proc.poll() is not None:
                    return False
                time.sleep(0.05)
        pytest.fail("redis-server did not answer in 5 s")
    finally:
        client.close()


async def test_our_transport_against_redis_server(redis_server: int) -> None:
    port = redis_server
    ids = list(CHUNKS)

    def load() -> None:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        try:
            for chunk_id in ids[:3]:
                client.set(bytes.fromhex(chunk_id), CHUNKS[chunk_id])
            client.select(1)  # redis namespaces are numbered: zdb://…/1 selects db 1
            client.set(bytes.fromhex(ids[3]), CHUNKS[ids[3]])
        finally:
            client.close()

    with trio.fail_after(LIMIT):
        await trio.to_thread.run_sync(load)
        async with ZdbTransport(f"zdb://127.0.0.1:{port}/default") as zdb:
            await zdb.ping()
            assert await zdb.fetch_chunk(ids[0]) == CHUNKS[ids[0]]
            assert await zdb.exists(ids[1]) is True
            assert await zdb.exists(ids[3]) is False
            with pytest.raises(ChunkNotFound):
                await zdb.fetch_chunk(ids[3])
            assert await zdb.get_many(ids) == [CHUNKS[i] for i in ids[:3]] + [None] * 3
        async with ZdbTransport(f"zdb://127.0.0.1:{port}/1") as zdb:
            assert await zdb.fetch_chunk(ids[3]) == CHUNKS[ids[3]]
            assert await zdb.exists(ids[0]) is False
        async with ZdbTransport(f"zdb://127.0.0.1:{port}/nosuchdb") as zdb:
            with pytest.raises(HubUnavailable, match="SELECT failed"):
                await zdb.ping()
