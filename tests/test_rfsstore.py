"""rfs's HTTP stores, both ways: our transports against servers that answer as rfs's sources define them
(``tests/rfsstores.py``), and the agent's own rfs store routes read with the same transports."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import trio

from p2pchunks.errors import BadConfig, ChunkCorrupt, ChunkNotFound, HubUnavailable, ManifestNotFound
from p2pchunks.http.server import serve_http
from p2pchunks.hub.client import HttpTransport, HubClient, hub_url_for_route, redact, transport_for
from p2pchunks.hub.rfsstore import (
    RfsHttpTransport,
    RfsServerTransport,
    rfs_http_block_urls,
    rfs_server_base,
)
from p2pchunks.ids import chunk_id_of
from p2pchunks.zos.zdb import ZdbTransport

from .rfsstores import BlockApi, StaticStore
from .swarmkit import address, agent_config, agents

ID = "ab" + "12" * 31

HTTP_URLS = [
    ("http://h", f"http://h/ab/{ID}", f"http://h/{ID}"),
    ("http://h/", f"http://h/ab/{ID}", f"http://h/{ID}"),
    ("http://h:81/store", f"http://h:81/store/ab/{ID}", f"http://h:81/store/{ID}"),
    ("http://h/store/", f"http://h/store//ab/{ID}", f"http://h/store//{ID}"),  # rfs appends after the empty segment
    ("https://h/s?x=1#frag", f"https://h/s/ab/{ID}?x=1", f"https://h/s/{ID}?x=1"),
]


@pytest.mark.parametrize(("base", "nested", "flat"), HTTP_URLS)
def test_rfs_http_store_urls(base: str, nested: str, flat: str) -> None:
    assert rfs_http_block_urls(base, ID) == (nested, flat)


SERVER_URLS = [
    ("server://http/127.0.0.1:4000", "http://127.0.0.1:4000"),
    ("server://https/hub.example/root?token=T", "https://hub.example/root"),
    ("server://HTTP/h:1", "http://h:1"),
]


@pytest.mark.parametrize(("url", "base"), SERVER_URLS)
def test_rfs_server_urls(url: str, base: str) -> None:
    assert rfs_server_base(url) == base


@pytest.mark.parametrize(
    "url", ["server://ftp/h:1", "server://http/", "server://http:80/h", "server://:pw@http/h", "http://h:1"]
)
def test_bad_rfs_server_urls(url: str) -> None:
    with pytest.raises(BadConfig, match="server://http/HOST"):
        rfs_server_base(url)


@pytest.mark.parametrize("base", ["ftp://h/", "http://", "rfs+http://h/"])
def test_bad_rfs_http_bases(base: str) -> None:
    with pytest.raises(BadConfig):
        rfs_http_block_urls(base, ID)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://h:8080/", HttpTransport),
        ("rfs+http://h/store", RfsHttpTransport),
        ("RFS+HTTPS://h/", RfsHttpTransport),
        ("server://http/127.0.0.1:4000", RfsServerTransport),
        ("zdb://h:9900/ns", ZdbTransport),
    ],
)
async def test_transport_for_maps_every_scheme(url: str, kind: type) -> None:
    transport = transport_for(url, timeout=1, max_connections=1)
    try:
        assert isinstance(transport, kind)
    finally:
        await transport.aclose()
    with pytest.raises(BadConfig, match=r"rfs\+http://"):
        transport_for("s3://bucket/", timeout=1, max_connections=1)


def test_fl_routes_have_the_rfs_meaning() -> None:
    assert hub_url_for_route("http://h/store") == "rfs+http://h/store"
    assert hub_url_for_route("https://h") == "rfs+https://h"
    assert hub_url_for_route("server://http/h:4000") == "server://http/h:4000"
    assert hub_url_for_route("zdb://h:9900/default") == "zdb://h:9900/default"
    with pytest.raises(BadConfig, match="dir://"):
        hub_url_for_route("dir:///tmp/store")
    assert redact("server://http/h:1?token=secret") == "server://http/h:1?token=***"


# ---- against local stores that answer as rfs's sources say ----------------------------------------------------


def blob(n: int = 4000) -> tuple[str, bytes]:
    data = os.urandom(n)
    return chunk_id_of(data), data


async def test_rfs_http_store_nested_then_flat(nursery: trio.Nursery) -> None:
    store = StaticStore(prefix="/store")
    (nested_id, nested), (flat_id, flat), (absent, _), (broken_id, broken) = blob(), blob(), blob(), blob()
    store.put_nested(nested_id, nested)
    store.put_flat(flat_id, flat)
    store.put_flat(broken_id, broken)
    store.failing.add(f"{broken_id[:2]}/{broken_id}")
    port = await nursery.start(serve_http, store.handle, "127.0.0.1", 0)
    async with HubClient(f"rfs+http://127.0.0.1:{port}/store", retries=0) as hub:
        assert await hub.get_chunk(nested_id) == nested
        assert store.seen == [("GET", f"/store/{nested_id[:2]}/{nested_id}")]
        store.seen.clear()
        assert await hub.get_chunk(flat_id) == flat
        assert store.seen == [("GET", f"/store/{flat_id[:2]}/{flat_id}"), ("GET", f"/store/{flat_id}")]
        store.seen.clear()
        with pytest.raises(ChunkNotFound):
            await hub.get_chunk(absent)
        assert [path for _, path in store.seen] == [f"/store/{absent[:2]}/{absent}", f"/store/{absent}"]
        store.seen.clear()
        with pytest.raises(HubUnavailable):  # not a 404: rfs does not fall back either
            await hub.get_chunk(broken_id)
        assert len(store.seen) == 1
        with pytest.raises(ManifestNotFound):
            await hub.get_manifest("anything")


async def test_rfs_http_store_wrong_bytes_never_come_out(nursery: trio.Nursery) -> None:
    store = StaticStore()
    chunk_id, data = blob()
    store.put_nested(chunk_id, data[::-1])
    port = await nursery.start(serve_http, store.handle, "127.0.0.1", 0)
    async with HubClient(f"rfs+http://127.0.0.1:{port}", retries=1, backoff=0) as hub:
        with pytest.raises(ChunkCorrupt):
            await hub.get_chunk(chunk_id)


async def test_rfs_server_block_api(nursery: trio.Nursery) -> None:
    api = BlockApi(prefix="/sub")
    (held, data), (absent, _) = blob(), blob()
    api.blocks[held] = data
    port = await nursery.start(serve_http, api.handle, "127.0.0.1", 0)
    transport = RfsServerTransport(f"server://http/127.0.0.1:{port}/sub?token=T", timeout=5, max_connections=2)
    async with HubClient("server://unused", transport=transport, retries=0) as hub:
        assert await hub.get_chunk(held) == data
        with pytest.raises(ChunkNotFound):
            await hub.get_chunk(absent)
        assert await transport.exists(held) is True
        assert await transport.exists(absent) is False
        assert api.seen == [
            ("GET", f"/sub/api/v1/block/{held}"),
            ("GET", f"/sub/api/v1/block/{absent}"),
            ("HEAD", f"/sub/api/v1/block/{held}"),
            ("HEAD", f"/sub/api/v1/block/{absent}"),
        ]
        api.broken = True
        with pytest.raises(HubUnavailable):
            await hub.get_chunk(held)


@pytest.mark.parametrize("scheme", ["server", "rfs+http"])
async def test_agent_reads_from_an_rfs_store_hub(nursery: trio.Nursery, tmp_path: Path, scheme: str) -> None:
    api, store = BlockApi(), StaticStore()
    chunk_id, data = blob()
    api.blocks[chunk_id] = data
    store.put_nested(chunk_id, data)
    port = await nursery.start(serve_http, (api if scheme == "server" else store).handle, "127.0.0.1", 0)
    hub = f"server://http/127.0.0.1:{port}" if scheme == "server" else f"rfs+http://127.0.0.1:{port}/"
    async with agents([agent_config(tmp_path, hub, name="a")], swarm=False) as (agent,):
        host = agent.config.api.listen.rsplit(":", 1)[0]
        async with httpx.AsyncClient(base_url=f"http://{host}:{agent.api_port}", timeout=10) as http:
            assert (await http.get(f"/chunks/{chunk_id}")).content == data
            status = (await http.get("/status")).json()
            metrics = (await http.get("/metrics")).text
    assert f'p2pchunks_hub_up{{hub="{hub}"}} 1.0' in metrics
    assert f'p2pchunks_hub_bytes_total{{hub="{hub}"}} {float(len(data))}' in metrics
    assert status["hubs"][0]["url"] == hub
    assert status["hubs"][0]["bytes"] == len(data)
    wanted = f"/api/v1/block/{chunk_id}" if scheme == "server" else f"/{chunk_id[:2]}/{chunk_id}"
    assert (api.seen or store.seen)[0] == ("GET", wanted)


# ---- the agent as an rfs store, read with the same transports --------------------------------------------------


async def test_agent_rfs_store_routes(nursery: trio.Nursery, tmp_path: Path) -> None:
    upstream = BlockApi()
    (held, data), (absent, _), (bad, bad_data) = blob(), blob(), blob()
    upstream.blocks[held] = data
    upstream.blocks[bad] = bad_data[::-1]  # the upstream hub lies about this one
    port = await nursery.start(serve_http, upstream.handle, "127.0.0.1", 0)
    ip = address()
    config = agent_config(tmp_path, f"server://http/127.0.0.1:{port}", name="a", ip=ip, rfs={"http_listen": f"{ip}:0"})
    async with agents([config], swarm=False) as (agent,):
        base = f"{ip}:{agent.rfs_http_port}"
        as_http = RfsHttpTransport(f"rfs+http://{base}", timeout=10, max_connections=2)
        as_server = RfsServerTransport(f"server://http/{base}", timeout=10, max_connections=2)
        try:
            assert await as_server.exists(held) is False  # HEAD never fetches
            assert await as_http.fetch_chunk(held) == data  # cache → peers → hub (the upstream)
            assert await as_server.exists(held) is True
            assert await as_server.fetch_chunk(held) == data  # now from the cache
            assert upstream.seen.count(("GET", f"/api/v1/block/{held}")) == 1
            with pytest.raises(ChunkNotFound):
                await as_server.fetch_chunk(absent)
            with pytest.raises(ChunkNotFound):
                await as_http.fetch_chunk(absent)
            with pytest.raises(HubUnavailable, match="502"):  # wrong bytes upstream: 502, nothing served or cached
                await as_server.fetch_chunk(bad)
            assert not agent.cache.has(bad)
        finally:
            await as_http.aclose()
            await as_server.aclose()
        async with httpx.AsyncClient(base_url=f"http://{base}", timeout=10) as http:
            head = await http.head(f"/{held[:2]}/{held}")
            assert (head.status_code, head.headers["content-length"]) == (200, str(len(data)))
            flat = await http.get(f"/{held}")
            assert (flat.status_code, flat.content) == (200, data)
            assert (await http.get("/api/v1/block/xyz")).status_code == 400
            other = "00" if held[:2] != "00" else "11"
            assert (await http.get(f"/{other}/{held}")).status_code == 404  # the prefix must be the id's
            assert (await http.post(f"/api/v1/block/{held}")).status_code == 405
            assert (await http.get("/status")).status_code == 404  # only block routes here
            missing = await http.get(f"/api/v1/block/{absent}")
            assert missing.status_code == 404
            assert missing.json()["chunk"] == absent
