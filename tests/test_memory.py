"""An agent's memory does not grow with the chunks its cache holds (a real agent process, a real cache on disk).

The agent once read every cached piece back into memory when it added its torrents (libtorrent announces each piece
handed over as already had with a ``piece_finished`` alert): 2.2 bytes of RAM per cached byte from the moment it
started. The bound here is generous — an agent on 150 MiB of cache may hold at most 40 MiB more than one on an
almost empty cache — so that it is about growth, not about this machine's timing or allocator.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from p2pchunks.agent.process import open_agent_process, write_config
from p2pchunks.bench.warmcache import build_warm_cache

from .swarmkit import address

SETTLE_S = 3.0


async def anon_after_start(work: Path, cache_mib: int) -> tuple[int, int]:
    """(RssAnon of an agent started on a warm cache of ``cache_mib``, the chunks it holds) once it has settled."""
    directory = work / f"cache-{cache_mib}"
    warm = await trio.to_thread.run_sync(lambda: build_warm_cache(directory, cache_mib * 2**20, 2, budget_bytes=2**31))
    ip = address()
    config = write_config(
        work / f"agent-{cache_mib}.toml",
        {
            "agent": {"cache_dir": str(directory), "hub": "http://127.0.0.1:9/"},
            "api": {"listen": f"{ip}:0"},
            "swarm": {"listen": f"{ip}:0", "utp": False, "lsd": False, "dht": False},
            "warm": {"official": False},
            "cache": {"budget_bytes": 2**31, "scrub_rate_bps": 0},
        },
    )
    async with open_agent_process(config, stderr=work / f"agent-{cache_mib}.log") as agent:
        async with httpx.AsyncClient(base_url=agent.api, timeout=30) as http:
            status = (await http.get("/status")).json()
        assert status["gauges"]["torrents"] == 2  # both manifests joined the swarm, every piece handed over
        await trio.sleep(SETTLE_S)
        anon = agent.rss_bytes("RssAnon")
    assert anon > 0, "the agent was gone before its memory was read"
    return anon, warm.chunks


async def test_an_agent_on_a_full_cache_holds_no_more_memory_than_on_an_empty_one(tmp_path: Path) -> None:
    small, few = await anon_after_start(tmp_path, 1)
    large, many = await anon_after_start(tmp_path, 150)
    assert many >= 300
    assert large - small <= 40 * 2**20, f"{(large - small) / 2**20:.0f} MiB more for {many - few} more chunks"
