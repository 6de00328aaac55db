"""Zero-OS end to end: an flist written as rfs writes it, its blobs on a zdb hub, imported into a manifest, then
two agents filling their nodes' rfs caches (the second from the first, not the hub) and a zdb proxy answering
redis-py exactly as a zdb would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis
import trio

from p2pchunks.hub.server import open_hub_server
from p2pchunks.zos.flistwrite import write_fl, write_flist_v1
from p2pchunks.zos.importflist import import_flist
from p2pchunks.zos.zdbserver import HubRootBackend, open_zdb_server

from .swarmkit import address, agent_config, agents, connect_all

CHUNK = 64 * 1024


def make_tree(root: Path) -> Path:
    src = root / "src"
    (src / "boot").mkdir(parents=True)
    (src / "boot" / "vmlinuz").write_bytes(os.urandom(3 * CHUNK + 17))
    (src / "image.raw").write_bytes(os.urandom(20 * CHUNK) + bytes(4 * CHUNK))
    (src / "etc").mkdir()
    (src / "etc" / "hostname").write_text("vm\n")
    os.symlink("boot/vmlinuz", src / "kernel")
    return src


def rebuild(rfs_cache: Path, manifest_files: list[tuple[str, list[str]]], out: Path) -> None:
    """Read files back the way rfs does: block after block from ``<cache>/ab/cd/<block id>``."""
    for path, blocks in manifest_files:
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"".join((rfs_cache / b[:2] / b[2:4] / b).read_bytes() for b in blocks))


@pytest.mark.parametrize("version", [2, 1])
async def test_import_fill_from_hub_then_from_a_peer_and_proxy(tmp_path: Path, version: int) -> None:
    src = make_tree(tmp_path)
    store = tmp_path / "store"
    flist = tmp_path / ("image.fl" if version == 2 else "image.flist")
    async with open_zdb_server(HubRootBackend(store)) as (zdb, zdb_url):
        if version == 2:
            await trio.to_thread.run_sync(lambda: write_fl(src, flist, store, route_url=zdb_url, chunk_size=CHUNK))
        else:
            await trio.to_thread.run_sync(lambda: write_flist_v1(src, flist, store, backend=None, chunk_size=CHUNK))
        hub_root = tmp_path / "hubroot"
        manifest = await import_flist(flist, hub=zdb_url, out_dir=hub_root, name="vm")
        manifest_path = hub_root / "manifests" / "vm.p2p"
        assert manifest_path.exists()
        files = [(f.path, [c.id for c in f.chunks]) for f in manifest.files if f.symlink is None]
        async with open_hub_server(hub_root) as (_, _http_url):
            proxy_ip = address()
            configs = [
                agent_config(tmp_path, zdb_url, name="first", rfs={"cache_dir": str(tmp_path / "rfs1")}),
                agent_config(
                    tmp_path,
                    zdb_url,
                    name="second",
                    ip=proxy_ip,
                    rfs={"cache_dir": str(tmp_path / "rfs2"), "zdb_listen": f"{proxy_ip}:0"},
                ),
            ]
            async with agents(configs) as (first, second):
                with trio.fail_after(60):
                    report = await first.fill(str(manifest_path))
                assert report["failed"] == {}
                assert not report["stopped_for_space"]
                rebuild(tmp_path / "rfs1", files, tmp_path / "out1")
                for path, _ in files:
                    assert (tmp_path / "out1" / path).read_bytes() == (src / path).read_bytes(), path

                job = await second.fetch(str(manifest_path))
                connect_all([first, second], manifest)
                zdb.stats.reset()
                with trio.fail_after(60):
                    await job.done.wait()
                    report = await second.fill(str(manifest_path))
                assert job.state == "done"
                assert zdb.stats.total_bytes == 0  # every blob came from the first node
                rebuild(tmp_path / "rfs2", files, tmp_path / "out2")
                for path, _ in files:
                    assert (tmp_path / "out2" / path).read_bytes() == (src / path).read_bytes(), path

                # the zdb proxy, checked with redis-py as the client (RESP2: zdb speaks no RESP3)
                block = files[0][1][0]
                port = second.zdb_port

                def talk() -> tuple[object, ...]:
                    client = redis.Redis(host=proxy_ip, port=port, protocol=2, socket_timeout=10)
                    try:
                        return (
                            client.ping(),
                            client.execute_command("SELECT", "default"),
                            client.get(bytes.fromhex(block)),
                            client.exists(bytes.fromhex(block)),
                            client.exists(bytes(len(block) // 2)),
                            client.get(bytes(len(block) // 2)),
                        )
                    finally:
                        client.close()

                pong, selected, blob, exists, absent, missing = await trio.to_thread.run_sync(talk)
                assert pong is True
                assert selected in (b"OK", "OK", True)
                assert blob == (store / "chunks" / block[:2] / block[2:4] / block).read_bytes()
                assert (exists, absent) == (1, 0)
                assert missing is None
