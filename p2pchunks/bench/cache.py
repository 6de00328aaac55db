"""``p2pchunks bench cache``: how fast the local API serves cache hits, next to ``cat`` of the same files.

Measured in one run so the ratio survives a noisy machine: an agent process (hub unused, swarm on) serves N
chunks of 1 MiB from its cache to ``clients`` keep-alive connections of a minimal HTTP client (recv_into a
reused buffer, so the client costs little); ``cat`` reads the same files to /dev/null. Also: publish throughput
(chunking + hashing + writing a hub root) and the agent's idle resident memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

from ..agent.process import open_agent_process, write_config
from ..cache.store import ChunkCache
from ..hub.publish import publish
from ..ids import chunk_id_of, chunk_relpath

CHUNK = 1 << 20


def chunk_path(chunk_id: str) -> str:
    return f"/chunks/{chunk_id}"


Answer = Callable[[bytearray, int], tuple[int, int]]
"""An answer's head (the buffer, where its end marker starts) → (its body's bytes, the bytes the whole answer takes);
raises for anything but a hit."""


async def read_each(
    host: str,
    port: int,
    ids: list[str],
    clients: int,
    *,
    request: Callable[[str], bytes],
    head_end: bytes,
    answer: Answer,
    room: int,
) -> int:
    """Send ``request(id)`` for every id over ``clients`` connections, one in flight on each, and read each answer
    into the connection's reused buffer of ``room`` bytes: up to ``head_end``, then as far as ``answer`` says;
    returns body bytes received."""
    total = 0

    async def worker(part: list[str]) -> None:
        nonlocal total
        stream = await trio.open_tcp_stream(host, port)
        buffer = bytearray(room)
        view = memoryview(buffer)
        sock = stream.socket
        async with stream:
            for chunk_id in part:
                await stream.send_all(request(chunk_id))
                filled = 0
                while (end := buffer.find(head_end, 0, filled)) < 0:
                    n = await sock.recv_into(view[filled:])
                    if n == 0:
                        raise ConnectionError(f"{host}:{port} closed the connection")
                    filled += n
                length, need = answer(buffer, end)
                while filled < need:
                    n = await sock.recv_into(view[filled:need])
                    if n == 0:
                        raise ConnectionError(f"{host}:{port} closed the connection")
                    filled += n
                total += length

    async with trio.open_nursery() as nursery:
        for i in range(clients):
            nursery.start_soon(worker, ids[i::clients])
    return total


def _http_answer(buffer: bytearray, end: int) -> tuple[int, int]:
    head = bytes(buffer[:end]).lower()
    if not head.startswith(b"http/1.1 200"):
        raise RuntimeError(f"agent answered {head[:40]!r}")
    length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
    return length, end + 4 + length


async def read_all(
    host: str, port: int, ids: list[str], clients: int, path: Callable[[str], str] = chunk_path, size: int = CHUNK
) -> int:
    """GET ``path(id)`` for every id over ``clients`` keep-alive connections (bodies up to ``size`` bytes);
    returns body bytes received."""

    def request(chunk_id: str) -> bytes:
        return f"GET {path(chunk_id)} HTTP/1.1\r\nhost: bench\r\n\r\n".encode()

    return await read_each(
        host, port, ids, clients, request=request, head_end=b"\r\n\r\n", answer=_http_answer, room=size + 65536
    )


async def bench_cache(chunks: int, clients: int) -> int:
    with tempfile.TemporaryDirectory(prefix="p2pchunks-bench-") as tmp:
        work = Path(tmp)
        cache_dir = work / "agent"
        ids = []
        with ChunkCache(cache_dir, budget_bytes=16 * 2**30, fsync=False) as cache:
            for _ in range(chunks):
                data = os.urandom(CHUNK)
                chunk_id = chunk_id_of(data)
                cache.put(chunk_id, data)
                ids.append(chunk_id)
        config = write_config(
            work / "agent.toml",
            {
                "agent": {"cache_dir": str(cache_dir), "hub": "http://127.0.0.1:9/"},
                "api": {"listen": "127.0.0.2:0"},
                "swarm": {"listen": "127.0.0.2:0", "utp": False, "lsd": False, "dht": False},
                "warm": {"official": False},
                "cache": {"budget_bytes": 16 * 2**30},
            },
        )
        async with open_agent_process(config) as agent:
            await trio.sleep(2.0)
            idle_rss = agent.rss_bytes()
            await read_all(agent.host, agent.api_port, ids, clients)  # warm the page cache and the agent
            t0 = time.perf_counter()
            got = await read_all(agent.host, agent.api_port, ids, clients)
            api_s = time.perf_counter() - t0
            busy_rss = agent.rss_bytes()
        paths = [str(cache_dir / "chunks" / chunk_relpath(i)) for i in ids]
        await trio.run_process(["cat", *paths], stdout=subprocess.DEVNULL)
        t0 = time.perf_counter()
        await trio.run_process(["cat", *paths], stdout=subprocess.DEVNULL)
        cat_s = time.perf_counter() - t0

        source = work / "image.raw"
        with source.open("wb") as fh:
            for _ in range(256):
                fh.write(os.urandom(CHUNK))
        t0 = time.perf_counter()
        result = publish(source, work / "hub", name="bench", version="1")
        publish_s = time.perf_counter() - t0

    mb = got / 1e6
    figures = {
        "chunks": chunks,
        "chunk_bytes": CHUNK,
        "clients": clients,
        "api_MBps": round(mb / api_s, 1),
        "cat_MBps": round(mb / cat_s, 1),
        "api_to_cat_ratio": round((mb / api_s) / (mb / cat_s), 3),
        "publish_MBps": round(result.bytes_read / 1e6 / publish_s, 1),
        "agent_idle_rss_MiB": round(idle_rss / 2**20, 1),
        "agent_rss_after_reads_MiB": round(busy_rss / 2**20, 1),
    }
    print(json.dumps(figures, indent=2))
    return 0
