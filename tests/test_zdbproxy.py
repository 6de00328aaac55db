"""The zdb proxy, spoken to by redis-py (an independent RESP2 client, as rfs's redis crate is) and by our own
ZdbTransport; then end to end: a rewritten flist's route leads a hub client through the proxy to every blob."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import pytest
import redis
import trio

from p2pchunks.errors import ChunkNotFound, ChunkUnavailable, HubUnavailable
from p2pchunks.hub.client import HubClient
from p2pchunks.ids import chunk_id_of
from p2pchunks.zos.codec import decode
from p2pchunks.zos.flist import read_flist
from p2pchunks.zos.flistrewrite import rewrite_flist
from p2pchunks.zos.flistwrite import write_fl, write_flist_v1
from p2pchunks.zos.zdbproxy import AgentBackend, serve_zdb_proxy

LIMIT = 10


class FakeAgent:
    """What the proxy needs of the agent: blobs by id (fetching as needed), and a look at the cache."""

    def __init__(self, blobs: dict[str, bytes], cached: set[str], unavailable: Collection[str] = ()) -> None:
        self.blobs = blobs
        self.cached = cached
        self.unavailable = unavailable
        self.asked: list[str] = []

    async def get_blob(self, chunk_id: str) -> bytes:
        self.asked.append(chunk_id)
        if chunk_id in self.unavailable:
            raise ChunkUnavailable(chunk_id, "hub down")
        if chunk_id not in self.blobs:
            raise ChunkNotFound(chunk_id)
        self.cached.add(chunk_id)
        return self.blobs[chunk_id]

    async def has(self, chunk_id: str) -> bool:
        return chunk_id in self.cached


V2_BLOB = os.urandom(3000)
V1_BLOB = os.urandom(1000)
V2_ID, V1_ID = chunk_id_of(V2_BLOB), chunk_id_of(V1_BLOB, 16)
MISSING, DOWN = chunk_id_of(b"missing"), chunk_id_of(b"down")


@pytest.fixture
async def proxy(nursery: trio.Nursery) -> tuple[FakeAgent, int]:
    agent = FakeAgent({V2_ID: V2_BLOB, V1_ID: V1_BLOB}, cached={V1_ID}, unavailable={DOWN})
    port = await nursery.start(serve_zdb_proxy, agent.get_blob, agent.has, "127.0.0.1", 0)
    return agent, port


async def test_redis_py_speaks_to_the_proxy_as_to_a_zdb(proxy: tuple[FakeAgent, int]) -> None:
    agent, port = proxy

    def session() -> list[object]:
        client = redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=5, socket_connect_timeout=5)
        try:
            return [
                client.ping(),
                client.execute_command("SELECT", "default"),  # type: ignore[no-untyped-call]
                client.exists(bytes.fromhex(V2_ID)),  # not cached yet: 0, and nothing fetched
                client.get(bytes.fromhex(V2_ID)),  # a v2 (32-byte) key
                client.exists(bytes.fromhex(V2_ID)),  # cached now
                client.execute_command("SELECT", "hub", "password"),  # type: ignore[no-untyped-call]
                client.get(bytes.fromhex(V1_ID)),  # a v1 (16-byte) key, in another namespace: same store
                client.exists(bytes.fromhex(V1_ID)),
                client.get(bytes.fromhex(MISSING)),  # ChunkNotFound → nil
                client.get(bytes.fromhex(DOWN)),  # ChunkUnavailable → nil
                client.exists(bytes.fromhex(MISSING)),
                client.get(b"not-a-chunk-key"),  # never reaches the agent
                client.exists(b"short"),
            ]
        finally:
            client.close()

    with trio.fail_after(LIMIT):
        results = await trio.to_thread.run_sync(session)
    assert results == [True, True, 0, V2_BLOB, 1, True, V1_BLOB, 1, None, None, 0, None, 0]
    assert agent.asked == [V2_ID, V1_ID, MISSING, DOWN]


async def test_a_resp3_client_is_refused_as_0_db_refuses_it(proxy: tuple[FakeAgent, int]) -> None:
    """redis-py 8 opens with ``HELLO 3``; 0-db answers any command it lacks with ``-Command not supported``, and so
    does the proxy: the handshake fails the same way on both, and RESP2 (``protocol=2``) works."""
    _, port = proxy

    def resp3() -> str:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=5)
        try:
            client.ping()
        except redis.ResponseError as error:
            return str(error)
        finally:
            client.close()
        return "no error"

    with trio.fail_after(LIMIT):
        assert await trio.to_thread.run_sync(resp3) == "Command not supported"
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*1\r\n$4\r\nPING\r\n")
            received = b""
            while received.count(b"\r\n") < 2:
                received += await stream.receive_some(1024)
    assert received == b"-Command not supported\r\n+PONG\r\n"  # and the session goes on


async def test_backend_maps_keys_and_errors() -> None:
    agent = FakeAgent({V2_ID: V2_BLOB}, cached=set(), unavailable={DOWN})
    backend = AgentBackend(agent.get_blob, agent.has)
    assert await backend.get("any", bytes.fromhex(V2_ID)) == V2_BLOB
    assert await backend.get("any", bytes.fromhex(DOWN)) is None
    assert await backend.get("any", bytes.fromhex(MISSING)) is None
    assert await backend.get("any", b"\x00" * 20) is None
    assert await backend.exists("any", bytes.fromhex(V2_ID)) is True
    assert await backend.exists("any", b"\x00" * 20) is False
    assert (backend.served, backend.missed) == (1, 3)


async def test_other_failures_reach_the_client_as_errors(nursery: trio.Nursery) -> None:
    async def broken(chunk_id: str) -> bytes:
        raise HubUnavailable("disk on fire")

    async def has(chunk_id: str) -> bool:
        return False

    port = await nursery.start(serve_zdb_proxy, broken, has, "127.0.0.1", 0)
    async with HubClient(f"zdb://127.0.0.1:{port}/default", retries=0) as client:
        with trio.fail_after(LIMIT), pytest.raises(HubUnavailable, match="disk on fire"):
            await client.get_chunk(V2_ID)


@pytest.mark.parametrize("kind", ["v2", "v1"])
async def test_rewritten_flist_leads_to_every_blob_through_the_proxy(
    nursery: trio.Nursery, tmp_path: Path, kind: str
) -> None:
    src = tmp_path / "src"
    (src / "boot").mkdir(parents=True)
    (src / "boot" / "vmlinuz").write_bytes(os.urandom(10_000))
    (src / "etc").mkdir()
    (src / "etc" / "motd").write_bytes(b"hi\n")
    hub_root = tmp_path / "hub"
    flist = tmp_path / ("image.fl" if kind == "v2" else "image.flist")
    if kind == "v2":
        blobs = write_fl(src, flist, hub_root, route_url="zdb://hub.threefold.me:9900/default", chunk_size=4096)
    else:
        backend = {"host": "hub.threefold.me", "port": 9900}
        blobs = write_flist_v1(src, flist, hub_root, backend=backend, chunk_size=4096)
    agent = FakeAgent({blob.id: blob.data for blob in blobs}, cached=set())
    port = await nursery.start(serve_zdb_proxy, agent.get_blob, agent.has, "127.0.0.1", 0)
    proxied = tmp_path / ("proxied.fl" if kind == "v2" else "proxied.flist")
    rewrite_flist(flist, proxied, f"127.0.0.1:{port}/default")
    image = read_flist(proxied)
    # where a stock rfs would now connect (v2: the route, v1: the backend metadata)
    url = image.routes[0][2] if kind == "v2" else "zdb://{host}:{port}/{namespace}".format(**image.backend or {})
    assert url == f"zdb://127.0.0.1:{port}/default"
    async with HubClient(url) as client:
        with trio.fail_after(LIMIT):
            for item in image.files:
                plain = b"".join([decode(await client.get_chunk(b.id), b.key) for b in item.blocks])
                if item.kind == "file":
                    assert plain == (src / item.path).read_bytes()
    assert set(agent.asked) == {blob.id for blob in blobs}
