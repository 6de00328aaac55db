"""import-flist without ``--hub``: blocks from the stores the flist itself names, in rfs's meaning (an ``http://``
route is an rfs HTTP store, ``server://`` an rfs server, ``zdb://`` a 0-db, the v1 backend a zdb), each route only
for the ids it covers; and a ``.fl`` rewritten to the agent's rfs store proxy read back the same way."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import trio

from p2pchunks.errors import BadConfig, BadFlist, ChunkNotFound
from p2pchunks.http.server import serve_http
from p2pchunks.zos.codec import Blob
from p2pchunks.zos.flist import read_flist
from p2pchunks.zos.flistrewrite import rewrite_flist_store
from p2pchunks.zos.flistwrite import write_fl, write_flist_v1
from p2pchunks.zos.importflist import import_flist
from p2pchunks.zos.zdbserver import HubRootBackend, open_zdb_server

from .rfsstores import BlockApi, StaticStore
from .swarmkit import address, agent_config, agents
from .test_importflist import CHUNK, make_tree

LIMIT = 30


def set_routes(flist: Path, routes: list[tuple[int, int, str]]) -> None:
    with closing(sqlite3.connect(flist)) as db:
        db.execute("DELETE FROM route")
        db.executemany("INSERT INTO route (start, end, url) VALUES (?, ?, ?)", routes)
        db.commit()


def image(tmp_path: Path) -> tuple[Path, list[Blob]]:
    flist = tmp_path / "img.fl"
    blobs = write_fl(make_tree(tmp_path), flist, tmp_path / "hub", route_url="zdb://unused:1/x", chunk_size=CHUNK)
    return flist, blobs


async def test_routes_in_rfs_meaning_each_for_its_range(nursery: trio.Nursery, tmp_path: Path) -> None:
    flist, blobs = image(tmp_path)
    api, store = BlockApi(), StaticStore(prefix="/store")
    for blob in blobs:
        if int(blob.id[:2], 16) < 128:
            api.blocks[blob.id] = blob.data
        else:
            store.put_nested(blob.id, blob.data)
    api_port = await nursery.start(serve_http, api.handle, "127.0.0.1", 0)
    store_port = await nursery.start(serve_http, store.handle, "127.0.0.1", 0)
    set_routes(
        flist,
        [(0, 127, f"server://http/127.0.0.1:{api_port}?token=T"), (128, 255, f"http://127.0.0.1:{store_port}/store")],
    )
    with trio.fail_after(LIMIT):
        manifest = await import_flist(flist, out_dir=tmp_path / "seed")
    assert set(manifest.chunk_ids) == {blob.id for blob in blobs}
    assert len(api.seen) == len(api.blocks)  # every block asked of its own route only, once
    assert len(store.seen) == len(store.files)
    hub = manifest.extra[b"flist"][b"hub"]  # type: ignore[index]
    assert hub == f"server://http/127.0.0.1:{api_port}?token=***, rfs+http://127.0.0.1:{store_port}/store".encode()


async def test_a_block_no_route_covers_is_not_found(tmp_path: Path) -> None:
    flist, blobs = image(tmp_path)
    uncovered = {int(blob.id[:2], 16) for blob in blobs}
    set_routes(flist, [(b, b, "zdb://127.0.0.1:9/x") for b in range(256) if b not in uncovered])
    with trio.fail_after(LIMIT), pytest.raises(ChunkNotFound, match="no route"):
        await import_flist(flist, out_dir=tmp_path / "seed")
    set_routes(flist, [])
    with pytest.raises(BadFlist, match="no route"):
        await import_flist(flist, out_dir=tmp_path / "seed")
    set_routes(flist, [(0, 255, "dir:///srv/store")])
    with pytest.raises(BadConfig, match="dir:///srv/store"):
        await import_flist(flist, out_dir=tmp_path / "seed")


async def test_zdb_route_and_v1_backend(tmp_path: Path) -> None:
    src, hub_root = make_tree(tmp_path), tmp_path / "hub"
    async with open_zdb_server(HubRootBackend(hub_root)) as (_, url):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        write_fl(src, tmp_path / "a.fl", hub_root, route_url=url, chunk_size=CHUNK)
        backend = {"host": "127.0.0.1", "port": port, "namespace": "default"}
        write_flist_v1(src, tmp_path / "a.flist", hub_root, backend=backend, chunk_size=CHUNK)
        with trio.fail_after(LIMIT):
            v2 = await import_flist(tmp_path / "a.fl", out_dir=tmp_path / "seed2")
            v1 = await import_flist(tmp_path / "a.flist", out_dir=tmp_path / "seed1")
    assert v2.extra[b"flist"][b"hub"] == url.encode()  # type: ignore[index]
    assert v1.extra[b"flist"][b"hub"] == f"zdb://127.0.0.1:{port}/default".encode()  # type: ignore[index]
    assert len(v1.chunk_ids) == len({b.id for f in read_flist(tmp_path / "a.flist").files for b in f.blocks})


@pytest.mark.parametrize("layout", ["http", "server"])
async def test_fl_rewritten_to_the_agents_rfs_store(nursery: trio.Nursery, tmp_path: Path, layout: str) -> None:
    flist, blobs = image(tmp_path)
    upstream = BlockApi()
    upstream.blocks.update({blob.id: blob.data for blob in blobs})
    port = await nursery.start(serve_http, upstream.handle, "127.0.0.1", 0)
    ip = address()
    config = agent_config(tmp_path, f"server://http/127.0.0.1:{port}", name="a", ip=ip, rfs={"http_listen": f"{ip}:0"})
    async with agents([config], swarm=False) as (agent,):
        base = f"{ip}:{agent.rfs_http_port}"
        route = f"http://{base}" if layout == "http" else f"server://http/{base}"
        assert rewrite_flist_store(flist, tmp_path / "p2p.fl", route) == 2
        assert read_flist(tmp_path / "p2p.fl").routes == ((0, 255, route),)
        with trio.fail_after(LIMIT):
            manifest = await import_flist(tmp_path / "p2p.fl", out_dir=tmp_path / "seed")
        assert set(manifest.chunk_ids) == set(upstream.blocks)
        assert agent.stats.chunks_from_hub == len(upstream.blocks)  # every block went through the agent
    write_flist_v1(make_tree(tmp_path / "v1"), tmp_path / "v1.flist", tmp_path / "hub1", backend={"host": "h"})
    with pytest.raises(BadConfig, match="rfs 1 reads blocks from a zdb only"):
        rewrite_flist_store(tmp_path / "v1.flist", tmp_path / "v1-p2p.flist", route)
