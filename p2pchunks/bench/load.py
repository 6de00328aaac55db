"""The load benchmark (``p2pchunks bench load``): many keep-alive API clients against a real agent process.

Owns :func:`bench_load`: an agent process (``agent.process``) with a warm cache of
hot chunks, ``clients`` concurrent keep-alive connections reading them through ``GET /chunks/<id>`` for
``seconds`` while the agent also runs a fetch job from a rate-capped hub; it reports latency percentiles,
throughput, errors and the agent's resident memory before and after.

The clients speak just enough HTTP/1.1 by hand (one request, read the head, read Content-Length bytes) that the
benchmark process, not the agent, is rarely the bottleneck. Must not know the agent's internals: it sees only
the process, its API and its cache directory (filled before the start, as a warm node's would be).
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from ..agent.process import open_agent_process, write_config
from ..cache.store import ChunkCache
from ..hub.publish import publish
from ..hub.server import open_hub_server
from ..ids import blake2b_verifier, chunk_relpath

HEAD_LIMIT = 16 * 1024


# ---- the benchmark -----------------------------------------------------------------------------------------


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    bytes: int = 0
    errors: int = 0
    reconnects: int = 0
    corrupt: int = 0
    samples: list[str] = field(default_factory=list)


async def _read_response(stream: trio.SocketStream, buffer: bytearray) -> tuple[int, bytes]:
    """One response on a keep-alive connection: (status, body). ``buffer`` keeps bytes read past it."""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) > HEAD_LIMIT:
            raise ValueError("response head too large")
        data = await stream.receive_some(256 * 1024)
        if not data:
            raise EOFError("connection closed")
        buffer += data
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    del buffer[: end + 4]
    status = int(head[0].split(" ", 2)[1])
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while len(buffer) < length:
        data = await stream.receive_some(max(256 * 1024, length - len(buffer)))
        if not data:
            raise EOFError("connection closed mid-body")
        buffer += data
    body = bytes(buffer[:length])
    del buffer[:length]
    return status, body


async def _client(host: str, port: int, ids: list[str], until: float, seed: int, tally: _Tally) -> None:
    rng = random.Random(seed)
    verified: set[str] = set()
    while trio.current_time() < until:
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            tally.errors += 1
            await trio.sleep(0.05)
            continue
        async with stream:
            buffer = bytearray()
            try:
                while trio.current_time() < until:
                    chunk_id = rng.choice(ids)
                    start = trio.current_time()
                    await stream.send_all(f"GET /chunks/{chunk_id} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                    status, body = await _read_response(stream, buffer)
                    tally.latencies.append(trio.current_time() - start)
                    if status != 200:
                        tally.errors += 1
                        if len(tally.samples) < 5:
                            tally.samples.append(f"{status}: {body[:200]!r}")
                        continue
                    tally.bytes += len(body)
                    if chunk_id not in verified:  # each client checks each chunk once: cheap, and catches lies
                        verified.add(chunk_id)
                        if not blake2b_verifier(chunk_id, body):
                            tally.corrupt += 1
            except (OSError, EOFError, ValueError, trio.BrokenResourceError) as error:
                tally.errors += 1
                tally.reconnects += 1
                if len(tally.samples) < 5:
                    tally.samples.append(repr(error))


def _percentile(sorted_values: list[float], share: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(share * (len(sorted_values) - 1))))
    return sorted_values[index]


def _random_tree(directory: Path, total: int, seed: int) -> Path:
    rng = random.Random(seed)
    directory.mkdir(parents=True)
    (directory / "data.bin").write_bytes(rng.randbytes(total))
    return directory


async def bench_load(
    clients: int = 200,
    seconds: float = 10.0,
    *,
    hot_chunks: int = 256,
    chunk_bytes: int = 64 * 1024,
    fetch_mib: float = 64.0,
    hub_rate_mbps: float = 40.0,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Run the load benchmark and return its figures (the CLI prints them as JSON)."""
    with tempfile.TemporaryDirectory(prefix="p2pchunks-load-", dir=workdir) as tmp:
        root = Path(tmp)
        hub_root = root / "hub"
        hot = await trio.to_thread.run_sync(
            lambda: publish(
                _random_tree(root / "hot", hot_chunks * chunk_bytes, 1), hub_root, name="hot", chunk_size=chunk_bytes
            )
        )
        background = await trio.to_thread.run_sync(
            lambda: publish(
                _random_tree(root / "bg", int(fetch_mib * 2**20), 2), hub_root, name="bg", chunk_size=chunk_bytes
            )
        )
        cache_dir = root / "cache"
        ids = list(hot.manifest.piece_ids)

        def warm() -> None:
            with ChunkCache(cache_dir, budget_bytes=2**34, fsync=False) as cache:
                for chunk_id in ids:
                    cache.put(chunk_id, (hub_root / "chunks" / chunk_relpath(chunk_id)).read_bytes())

        await trio.to_thread.run_sync(warm)
        async with open_hub_server(hub_root, rate_mbps=hub_rate_mbps) as (hub, hub_url):
            config = write_config(
                root / "agent.toml",
                {
                    "agent": {"cache_dir": str(cache_dir), "hub": hub_url},
                    "api": {"listen": "127.0.0.1:0"},
                    "swarm": {"listen": "127.0.0.1:0", "utp": False, "lsd": False, "dht": False},
                    "cache": {"budget_bytes": 2**34},
                    "warm": {"official": False},
                },
            )
            async with open_agent_process(config, stderr=root / "agent.log") as agent:
                rss_before = agent.rss_bytes()
                async with httpx.AsyncClient(base_url=agent.api, timeout=30) as http:
                    started = await http.post("/fetch", json={"manifest": str(background.manifest_path)})
                    job = started.json().get("job") if started.status_code == 202 else None
                    tally = _Tally()
                    begin = trio.current_time()
                    until = begin + seconds
                    async with trio.open_nursery() as nursery:
                        for n in range(clients):
                            nursery.start_soon(_client, agent.host, agent.api_port, ids, until, n, tally)
                    elapsed = trio.current_time() - begin
                    rss_after = agent.rss_bytes()
                    progress = (await http.get(f"/jobs/{job}")).json() if job is not None else {}
    latencies = sorted(tally.latencies)
    requests = len(latencies)
    return {
        "clients": clients,
        "seconds": round(elapsed, 3),
        "hot_chunks": len(ids),
        "chunk_bytes": chunk_bytes,
        "requests": requests,
        "errors": tally.errors,
        "reconnects": tally.reconnects,
        "corrupt": tally.corrupt,
        "error_samples": tally.samples,
        "req_per_s": round(requests / elapsed, 1) if elapsed else 0.0,
        "mb_per_s": round(tally.bytes / elapsed / 1e6, 1) if elapsed else 0.0,
        "latency_ms": {
            "p50": round(_percentile(latencies, 0.50) * 1000, 3),
            "p99": round(_percentile(latencies, 0.99) * 1000, 3),
            "max": round(latencies[-1] * 1000, 3) if latencies else 0.0,
        },
        "agent_rss_mb": {"before": round(rss_before / 2**20, 1), "after": round(rss_after / 2**20, 1)},
        "fetch_job": {
            key: progress.get(key) for key in ("state", "chunks", "done", "from_hub", "bytes_from_hub", "error")
        },
        "hub_bytes": hub.stats.total_bytes,
        "pid_was": agent.pid,
        "cpu_count": os.cpu_count(),
    }
