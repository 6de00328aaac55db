"""``p2pchunks bench fill``: time to fill a node's rfs cache with an image from a far zdb hub.

Three ways, measured in one run against the same hub (a ``p2pchunks hub serve --zdb`` process with added latency):
1. sequential, one block at a time in file order: what rfs does today when a VM's ``/image.raw`` is copied;
2. p2pchunks' parallel fill of a node with a cold cache and no peer (hub only, in parallel, in file order);
3. p2pchunks' fill of a node whose farm peer already holds the image (blobs from the peer, none from the hub).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from ..agent import open_agent
from ..agent.process import open_ready_process
from ..config.schema import Config
from ..zos.flistwrite import write_fl
from ..zos.importflist import import_flist
from ..zos.rfscache import RfsCacheFiller
from ..zos.zdb import ZdbTransport


@asynccontextmanager
async def _hub_process(root: Path, latency_ms: float) -> AsyncIterator[int]:
    """``p2pchunks hub serve --zdb`` as a child (its own event loop, as a far hub would be) on ports it picks
    itself (0); yields the zdb port its ready line reports."""
    args = ["hub", "serve", "--root", str(root), "--listen", "127.0.0.1:0", "--zdb", "127.0.0.1:0"]
    async with open_ready_process([*args, "--latency-ms", str(latency_ms)]) as (_, ready):
        yield int(ready["zdb_port"])


def _config(work: Path, name: str, ip: str, hub: str) -> Config:
    return Config().replace(
        agent={"cache_dir": str(work / name), "hub": hub},
        api={"listen": f"{ip}:0"},
        swarm={"listen": f"{ip}:0", "utp": False, "lsd": False, "dht": False},
        cache={"budget_bytes": 64 * 2**30},
        warm={"official": False},
        rfs={"cache_dir": str(work / f"rfs-{name}")},
        fetch={"hub_slots": 16, "hub_concurrency": 16},
    )


async def _sequential(zdb_url: str, blocks: list[tuple[str, bytes]], cache: Path) -> float:
    filler = RfsCacheFiller(cache, min_free_bytes=0)
    transport = ZdbTransport(zdb_url, timeout=30.0, max_connections=1)
    start = time.perf_counter()
    try:
        for block_id, key in blocks:
            blob = await transport.fetch_chunk(block_id)
            await trio.to_thread.run_sync(filler.fill, block_id, blob, key)
    finally:
        await transport.aclose()
    return time.perf_counter() - start


async def bench_fill(image_mib: int, latency_ms: float) -> int:
    with tempfile.TemporaryDirectory(prefix="p2pchunks-fill-") as tmp:
        work = Path(tmp)
        src = work / "src"
        src.mkdir()
        with (src / "image.raw").open("wb") as fh:
            for _ in range(image_mib):
                fh.write(os.urandom(2**20))
        store = work / "store"
        store.mkdir()
        async with _hub_process(store, latency_ms) as port:
            zdb_url = f"zdb://127.0.0.1:{port}/default"
            await trio.to_thread.run_sync(lambda: write_fl(src, work / "image.fl", store, route_url=zdb_url))
            # the release job (or the first node of a farm) turns the flist into a shareable manifest
            t0 = time.perf_counter()
            manifest = await import_flist(work / "image.fl", hub=zdb_url, out_dir=work / "release", name="vm")
            import_s = time.perf_counter() - t0
            manifest_path = str(work / "release" / "manifests" / "vm.p2p")
            blocks = [(c.id, c.key) for f in manifest.files for c in f.chunks]
            sequential_s = await _sequential(zdb_url, blocks, work / "rfs-sequential")
            async with open_agent(_config(work, "cold", "127.0.0.2", zdb_url)) as cold:
                t0 = time.perf_counter()
                cold_report = await cold.fill(manifest_path)
                parallel_s = time.perf_counter() - t0
                async with open_agent(_config(work, "peer", "127.0.0.3", zdb_url)) as warm:
                    job = await warm.fetch(manifest_path)
                    infohash = job.manifest.infohash or ""
                    if cold.swarm is not None and warm.swarm is not None and infohash in warm.swarm.torrents:
                        warm.swarm.torrents[infohash].connect("127.0.0.2", cold.swarm.listen_port)
                    t0 = time.perf_counter()
                    peer_report = await warm.fill(manifest_path)
                    peer_s = time.perf_counter() - t0
                    from_hub = warm.stats.bytes_from_hub
    figures: dict[str, Any] = {
        "image_MiB": image_mib,
        "blocks": len(blocks),
        "hub_latency_ms": latency_ms,
        "import_s": round(import_s, 2),
        "sequential_s": round(sequential_s, 2),
        "parallel_fill_s": round(parallel_s, 2),
        "warm_peer_fill_s": round(peer_s, 2),
        "speedup_parallel": round(sequential_s / parallel_s, 1),
        "speedup_warm_peer": round(sequential_s / peer_s, 1),
        "warm_peer_bytes_from_hub": from_hub,
        "failed_blocks": len(cold_report["failed"]) + len(peer_report["failed"]),
    }
    print(json.dumps(figures, indent=2))
    return 0
