"""``p2pchunks bench proxy``: block reads from a warm cache through the agent's two rfs-facing proxies, in one run.

An agent process (hub unused, swarm off) holds N blocks in its cache and serves them three ways at once: the rfs
store proxy in the HTTP store layout (``GET /<id[0:2]>/<id>``), the same proxy as an rfs server
(``GET /api/v1/block/<id>``), and the zdb proxy (``GET <raw id>`` over RESP). ``clients`` connections per way each
read their share one block at a time, as rfs does (one request in flight per connection); a first pass over every
way warms the page cache and the agent, then each way is timed in turn. The figures are MB/s of block bytes.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..agent.process import open_agent_process, write_config
from ..cache.store import ChunkCache
from ..ids import chunk_id_of
from .cache import read_all, read_each

HOST = "127.0.0.2"


def _resp_answer(buffer: bytearray, end: int) -> tuple[int, int]:
    if buffer[0:1] != b"$" or buffer[1:2] == b"-":
        raise RuntimeError(f"zdb proxy answered {bytes(buffer[:end])!r}")
    length = int(buffer[1:end])
    return length, end + 2 + length + 2


async def zdb_read_all(host: str, port: int, ids: list[str], clients: int, size: int) -> int:
    """``GET <raw id>`` for every id over ``clients`` connections, one at a time each; returns bytes received."""

    def request(chunk_id: str) -> bytes:
        key = bytes.fromhex(chunk_id)
        return b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)

    return await read_each(
        host, port, ids, clients, request=request, head_end=b"\r\n", answer=_resp_answer, room=size + 64
    )


async def _timed(read: Callable[[], Awaitable[int]]) -> tuple[int, float]:
    start = time.perf_counter()
    got = await read()
    return got, time.perf_counter() - start


async def bench_proxy(chunks: int, clients: int, chunk_kib: int = 512) -> int:
    size = chunk_kib * 1024
    with tempfile.TemporaryDirectory(prefix="p2pchunks-proxy-") as tmp:
        work = Path(tmp)
        cache_dir = work / "agent"
        ids = []
        with ChunkCache(cache_dir, budget_bytes=16 * 2**30, fsync=False) as cache:
            for _ in range(chunks):
                data = os.urandom(size)
                chunk_id = chunk_id_of(data)
                cache.put(chunk_id, data)
                ids.append(chunk_id)
        config = write_config(
            work / "agent.toml",
            {
                "agent": {"cache_dir": str(cache_dir), "hub": "http://127.0.0.1:9/"},
                "api": {"listen": f"{HOST}:0"},
                "swarm": {"enabled": False, "listen": f"{HOST}:0"},
                "warm": {"official": False},
                "cache": {"budget_bytes": 16 * 2**30},
                "rfs": {"zdb_listen": f"{HOST}:0", "http_listen": f"{HOST}:0"},
            },
        )
        async with open_agent_process(config) as agent:
            zdb_port, http_port = int(agent.ready["zdb_port"]), int(agent.ready["rfs_http_port"])
            ways: dict[str, Callable[[], Awaitable[int]]] = {
                "rfs_http": lambda: read_all(HOST, http_port, ids, clients, lambda i: f"/{i[:2]}/{i}", size),
                "rfs_server": lambda: read_all(HOST, http_port, ids, clients, lambda i: f"/api/v1/block/{i}", size),
                "zdb": lambda: zdb_read_all(HOST, zdb_port, ids, clients, size),
            }
            for read in ways.values():  # warm the page cache, the agent and the connections' code paths
                await read()
            timed = {name: await _timed(read) for name, read in ways.items()}
    mbps = {name: got / 1e6 / seconds for name, (got, seconds) in timed.items()}
    figures = {
        "chunks": chunks,
        "chunk_bytes": size,
        "clients": clients,
        **{f"{name}_MBps": round(value, 1) for name, value in mbps.items()},
        "rfs_http_to_zdb_ratio": round(mbps["rfs_http"] / mbps["zdb"], 2),
        "rfs_server_to_zdb_ratio": round(mbps["rfs_server"] / mbps["zdb"], 2),
    }
    print(json.dumps(figures, indent=2))
    return 0
