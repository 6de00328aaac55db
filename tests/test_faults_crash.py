"""Crash safety: ``kill -9`` a real agent process at random points of a large fetch, many times, restarting it.

After every kill the cache directory is opened with ``ChunkCache``: every indexed chunk verifies and a full
reconcile finds no row without its file and no damaged file. Across all the restarts the hub sends the image
about once: what was complete before a kill is never fetched again (the hub's byte counter allows, per kill, the
requests a job may have had in flight).
"""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import trio

from p2pchunks.agent.process import open_agent_process, write_config
from p2pchunks.cache.store import TEMP_PREFIX, ChunkCache
from p2pchunks.hub.server import open_hub_server
from p2pchunks.ids import blake2b_verifier
from p2pchunks.policy.fetch import FetchParams

from .swarmkit import CHUNK, address, make_image

KILLS = 22
IMAGE_MIB = 64
HUB_RATE_MBPS = 24  # 64 MiB take ~22 s: the 22 kills (~10 s of fetching) land all over it


def check_cache(directory: Path) -> set[str]:
    """Open the cache as the restarted agent will; every indexed chunk verifies, index and files agree."""
    with ChunkCache(directory, budget_bytes=2**31) as cache:
        entries = cache.entries()
        for entry in entries:
            data = cache.path_for(entry.chunk_id).read_bytes()
            assert len(data) == entry.size, entry.chunk_id
            assert blake2b_verifier(entry.chunk_id, data), entry.chunk_id
        report = cache.reconcile(full=True)
        assert (report.corrupt, report.dropped_rows, report.removed_files) == (0, 0, 0), report
        # what is left is exactly what is indexed: no temp files, no stray or unindexed chunk files
        files = {p.name for p in (directory / "chunks").rglob("*") if p.is_file()}
        assert not any(name.startswith(TEMP_PREFIX) for name in files)
        indexed = {entry.chunk_id for entry in cache.entries()}
        assert files == indexed
        return indexed


async def test_kill_9_at_random_points_never_damages_the_cache_and_resumes(tmp_path: Path) -> None:
    rng = random.Random(2024)
    image = make_image(tmp_path, mib=IMAGE_MIB, seed=9)
    manifest = image.manifest
    cache_dir = tmp_path / "cache"
    ip = address()
    async with open_hub_server(tmp_path / "hub", rate_mbps=HUB_RATE_MBPS) as (hub, url):
        config = write_config(
            tmp_path / "agent.toml",
            {
                "agent": {"cache_dir": str(cache_dir), "hub": url},
                "api": {"listen": f"{ip}:0"},
                "swarm": {"listen": f"{ip}:0", "utp": False, "lsd": False, "dht": False},
                "cache": {"budget_bytes": 2**31},
                "fetch": {"discovery_grace_s": 0.0, "hub_retries": 1, "hub_timeout_s": 10.0},
                "warm": {"official": False},
            },
        )
        held: set[str] = set()
        progress: list[int] = []
        for _ in range(KILLS):
            with trio.fail_after(60):
                async with open_agent_process(config, stderr=tmp_path / "agent.log") as agent:
                    async with httpx.AsyncClient(base_url=agent.api, timeout=10) as http:
                        started = await http.post("/fetch", json={"manifest": str(image.path)})
                        assert started.status_code == 202, started.text
                    await trio.sleep(rng.uniform(0.05, 0.9))
                    agent.kill()
                    await agent.process.wait()
            now = await trio.to_thread.run_sync(check_cache, cache_dir)
            assert held <= now, "a kill lost chunks that were complete"
            held = now
            progress.append(len(held))
        assert 0 < len(held) < len(manifest.piece_ids), "the kills should land in the middle of the fetch"
        async with (
            open_agent_process(config, stderr=tmp_path / "agent.log") as agent,
            httpx.AsyncClient(base_url=agent.api, timeout=120) as http,
        ):
            with trio.fail_after(120):
                done = await http.post("/fetch", json={"manifest": str(image.path), "wait": True})
        assert done.status_code == 200, done.text
        report = done.json()
        assert report["state"] == "done"
        assert report["from_cache"] == len(held), "chunks complete before the last kill were fetched again"
        final = await trio.to_thread.run_sync(check_cache, cache_dir)
        assert final == set(manifest.piece_ids)
    slack = KILLS * FetchParams().hub_slots * CHUNK  # per kill: the hub requests a job may have had in flight
    assert hub.stats.total_bytes <= manifest.unique_bytes + slack, (hub.stats.total_bytes, manifest.unique_bytes)
    assert sorted(progress) == progress


async def test_load_benchmark_smoke() -> None:
    """``bench_load`` end to end at toy size: a real agent process, keep-alive clients, a fetch job alongside."""
    from p2pchunks.bench.load import bench_load

    with trio.fail_after(60):
        result = await bench_load(clients=5, seconds=1.0, hot_chunks=16, fetch_mib=2)
    assert result["requests"] > 0
    assert result["errors"] == 0
    assert result["corrupt"] == 0
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p99"] <= result["latency_ms"]["max"]
    assert result["agent_rss_mb"]["before"] > 0
    assert result["fetch_job"]["state"] in ("running", "done")
