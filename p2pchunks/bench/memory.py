"""``p2pchunks bench memory``: what an agent holds in RAM as its cache grows, and how fast it starts.

For each cache size (default 256 MiB and 2 GiB, so the slope per cached chunk shows), in one run: build a warm
cache of ``manifests`` images on disk, start an agent process on it, and read its anonymous resident memory
(``RssAnon``: the process's own pages, not the file pages it maps) at start, after fetching every manifest again
(all from the cache: every torrent joined and checked), after serving every chunk once through the local API,
and after an eviction pass; also the start-up time (process start → API answering) and the agent's CPU seconds,
the idle CPU of a quiet minute's worth of seconds, and the slope between the sizes.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from ..agent.process import open_agent_process, write_config
from ..files import free_bytes
from .warmcache import build_warm_cache

SETTLE_S = 2.0
IDLE_S = 10.0


async def _measure(work: Path, cache_mib: int, manifests: int) -> dict[str, Any]:
    directory = work / f"cache-{cache_mib}"
    budget = int(1.15 * cache_mib * 2**20)  # a forced gc then evicts down to the low watermark (0.8 of it)
    warm = await trio.to_thread.run_sync(
        lambda: build_warm_cache(directory, cache_mib * 2**20, manifests, budget_bytes=budget)
    )
    config = write_config(
        work / f"agent-{cache_mib}.toml",
        {
            "agent": {"cache_dir": str(directory), "hub": "http://127.0.0.1:9/"},
            "api": {"listen": "127.0.0.2:0"},
            "swarm": {"listen": "127.0.0.2:0", "utp": False, "lsd": False, "dht": False},
            "warm": {"official": False},
            "cache": {"budget_bytes": budget, "scrub_rate_bps": 0},
        },
    )
    started = time.perf_counter()
    async with open_agent_process(config, stderr=work / f"agent-{cache_mib}.log") as agent:
        startup_s = time.perf_counter() - started
        figures: dict[str, Any] = {
            "cache_MiB": round(warm.bytes / 2**20),
            "chunks": warm.chunks,
            "manifests": manifests,
            "startup_s": round(startup_s, 2),
        }
        await trio.sleep(SETTLE_S)
        figures["anon_at_start_MiB"] = agent.rss_bytes("RssAnon") / 2**20
        cpu0 = agent.cpu_seconds()
        await trio.sleep(IDLE_S)
        figures["idle_cpu_percent"] = round(100 * (agent.cpu_seconds() - cpu0) / IDLE_S, 2)
        async with httpx.AsyncClient(base_url=agent.api, timeout=600) as http:
            for manifest in warm.manifests:
                answer = await http.post("/fetch", json={"manifest": manifest.manifest_id, "wait": True})
                if answer.status_code != 200:
                    raise RuntimeError(f"fetch {manifest.name}: {answer.status_code} {answer.text}")
            figures["anon_after_rejoin_MiB"] = agent.rss_bytes("RssAnon") / 2**20
            for manifest in warm.manifests:
                for chunk_id in manifest.piece_ids:
                    answer = await http.get(f"/chunks/{chunk_id}")
                    if answer.status_code != 200:
                        raise RuntimeError(f"chunk {chunk_id}: {answer.status_code}")
            figures["anon_after_serving_MiB"] = agent.rss_bytes("RssAnon") / 2**20
            gc = await http.post("/cache/gc", json={"dry_run": False, "force": True})
            figures["evicted"] = len(gc.json()["victims"])
            await trio.sleep(SETTLE_S)
            figures["anon_after_eviction_MiB"] = agent.rss_bytes("RssAnon") / 2**20
        figures["agent_cpu_s"] = round(agent.cpu_seconds(), 2)
    for key, value in list(figures.items()):
        if key.endswith("_MiB") and isinstance(value, float):
            figures[key] = round(value, 1)
    return figures


async def bench_memory(cache_mib: list[int], manifests: int, workdir: Path | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="p2pchunks-memory-", dir=workdir) as tmp:
        work = Path(tmp)
        need = 2 * sum(cache_mib) * 2**20
        if free_bytes(work) < need:
            raise SystemExit(f"bench memory needs about {need / 2**30:.1f} GiB free under {work}")
        runs = []
        for size in sorted(cache_mib):
            runs.append(await _measure(work, size, manifests))
            print(json.dumps(runs[-1]), flush=True)
    result: dict[str, Any] = {"runs": runs}
    if len(runs) >= 2:
        small, large = runs[0], runs[-1]
        chunks = large["chunks"] - small["chunks"]
        for phase in ("at_start", "after_rejoin", "after_serving", "after_eviction"):
            delta = (large[f"anon_{phase}_MiB"] - small[f"anon_{phase}_MiB"]) * 1024
            result[f"slope_{phase}_KiB_per_chunk"] = round(delta / chunks, 3)
    print(json.dumps(result, indent=2))
    return 0
