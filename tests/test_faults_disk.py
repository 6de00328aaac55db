"""Disk full and quota: an agent whose cache sits on a tiny filesystem (an 8 MiB tmpfs when we are root).

Eviction keeps the agent serving; when nothing can be evicted (everything in use) a chunk request is a clear 507
that names the chunk; a disk that fills up behind the cache's back is a 507 too, not a 500; and nothing
half-written is ever left behind (no temp files, the index and the files agree).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from p2pchunks.agent import Agent
from p2pchunks.cache.store import TEMP_PREFIX
from p2pchunks.errors import CacheFull, ChunkNotFound
from p2pchunks.hub.server import open_hub_server
from p2pchunks.ids import blake2b_verifier, chunk_id_of

from .swarmkit import agent_config, agents, make_image

FS_BYTES = 8 * 2**20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[tuple[Path, bool]]:
    """(directory, is a real 8 MiB filesystem). Without root: a plain directory (the tests then rely on budgets)."""
    directory = tmp_path / "fs"
    directory.mkdir()
    mounted = False
    if os.geteuid() == 0:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(directory)],
            capture_output=True,
            check=False,
        )
        mounted = done.returncode == 0
    try:
        yield directory, mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(directory)], check=True)


def api(agent: Agent) -> httpx.AsyncClient:
    host = agent.config.api.listen.rsplit(":", 1)[0]
    return httpx.AsyncClient(base_url=f"http://{host}:{agent.api_port}", timeout=30)


def assert_nothing_half_written(agent: Agent) -> None:
    chunk_dir = agent.cache.chunk_dir
    files = {p.name for p in chunk_dir.rglob("*") if p.is_file()}
    assert not [name for name in files if name.startswith(TEMP_PREFIX)]
    indexed = {entry.chunk_id for entry in agent.cache.entries()}
    assert files == indexed
    for chunk_id in indexed:
        assert blake2b_verifier(chunk_id, agent.cache.get(chunk_id)), chunk_id


async def test_eviction_keeps_the_agent_serving_on_a_small_disk(tmp_path: Path, small_fs: tuple[Path, bool]) -> None:
    directory, _ = small_fs
    image = make_image(tmp_path, mib=12, seed=21)  # three times the cache
    budget = 4 * 2**20
    config = agent_config(tmp_path, "", name="x", cache={"budget_bytes": budget})
    async with open_hub_server(tmp_path / "hub") as (_, url):
        config = config.replace(agent={"hub": url, "cache_dir": str(directory / "cache")})
        async with agents([config], swarm=False) as (agent,), api(agent) as http:
            for chunk_id in image.manifest.piece_ids:
                answer = await http.get(f"/chunks/{chunk_id}")
                assert answer.status_code == 200, answer.text
                assert blake2b_verifier(chunk_id, answer.content)
                assert agent.cache.usage().bytes <= budget
            assert (await http.get("/status")).status_code == 200
            assert agent.cache.usage().chunks < len(image.manifest.piece_ids)  # it evicted
            assert_nothing_half_written(agent)


async def test_nothing_evictable_is_a_507_naming_the_chunk(tmp_path: Path, small_fs: tuple[Path, bool]) -> None:
    directory, _ = small_fs
    held = make_image(tmp_path, mib=3, seed=22, name="held")
    other = make_image(tmp_path, mib=0.5, seed=23, name="other")
    budget = held.manifest.unique_bytes + 32 * 1024  # the held image fits; one more chunk does not
    async with open_hub_server(tmp_path / "hub") as (hub, url):
        config = agent_config(tmp_path, url, name="x", cache={"budget_bytes": budget})
        config = config.replace(agent={"cache_dir": str(directory / "cache")})
        async with agents([config], swarm=False) as (agent,), api(agent) as http:
            job = await agent.fetch(str(held.path))
            with trio.fail_after(60):
                await job.done.wait()
            assert job.state == "done", job.error
            full_size = [c for c in other.manifest.piece_ids if other.manifest.chunk_size_of(c) > 32 * 1024]
            wanted = full_size[0]
            answer = None
            # in use (a job or a reader holds them) and pinned official: nothing may go
            with agent.cache.protecting(held.manifest.chunk_ids):
                pinned = await http.post("/cache/pin", json={"manifest": held.manifest.name, "pin": "official"})
                assert pinned.status_code == 200, pinned.text
                for chunk_id in full_size[:4]:
                    before = hub.stats.requests
                    answer = await http.get(f"/chunks/{chunk_id}")
                    assert answer.status_code == 507, answer.text
                    body = answer.json()
                    assert body["chunk"] == chunk_id
                    assert body["status"] == 507
                    assert "does not fit" in body["error"]
                    assert hub.stats.requests == before + 1
                    assert_nothing_half_written(agent)
            assert answer is not None
            # the agent lives on: what it holds is served, and once the protection ends the chunk fits
            for chunk_id in held.manifest.piece_ids[:3]:
                assert (await http.get(f"/chunks/{chunk_id}")).status_code == 200
            assert (await http.post("/cache/pin", json={"manifest": held.manifest.name, "pin": "none"})).is_success
            served = await http.get(f"/chunks/{wanted}")
            assert served.status_code == 200
            assert blake2b_verifier(wanted, served.content)
            assert_nothing_half_written(agent)


async def test_a_disk_that_fills_behind_the_caches_back_is_a_507_not_a_500(
    tmp_path: Path, small_fs: tuple[Path, bool]
) -> None:
    directory, mounted = small_fs
    if not mounted:
        pytest.skip("needs a real small filesystem (root, tmpfs)")
    image = make_image(tmp_path, mib=6, seed=24)
    async with open_hub_server(tmp_path / "hub") as (_, url):
        # the budget is the whole filesystem: the cache thinks it has room that a ballast file has taken
        config = agent_config(tmp_path, url, name="x", cache={"budget_bytes": 0, "budget_percent": 100.0})
        config = config.replace(agent={"cache_dir": str(directory / "cache")})
        ballast = directory / "ballast"
        async with agents([config], swarm=False) as (agent,), api(agent) as http:
            ballast.write_bytes(b"\0" * (FS_BYTES - 2 * 2**20))  # ~2 MiB left for the cache
            statuses: list[int] = []
            for chunk_id in image.manifest.piece_ids:
                answer = await http.get(f"/chunks/{chunk_id}")
                statuses.append(answer.status_code)
                if answer.status_code == 200:
                    assert blake2b_verifier(chunk_id, answer.content)
                else:
                    assert answer.status_code == 507, answer.text
                    assert answer.json()["chunk"] == chunk_id
            assert 200 in statuses, statuses
            assert 507 in statuses, statuses
            assert (await http.get("/status")).status_code == 200
            assert_nothing_half_written(agent)
            ballast.unlink()  # space comes back: so does the service
            last = image.manifest.piece_ids[-1]
            if not agent.cache.has(last):
                answer = await http.get(f"/chunks/{last}")
                assert answer.status_code == 200, answer.text
            assert_nothing_half_written(agent)


def test_cache_put_on_a_full_disk_raises_cache_full_and_leaves_nothing(small_fs: tuple[Path, bool]) -> None:
    directory, mounted = small_fs
    if not mounted:
        pytest.skip("needs a real small filesystem (root, tmpfs)")
    from p2pchunks.cache.store import ChunkCache

    with ChunkCache(directory / "cache", budget_bytes=FS_BYTES) as cache:
        (directory / "ballast").write_bytes(b"\0" * (FS_BYTES - 512 * 1024))
        data = os.urandom(1024 * 1024)
        chunk_id = chunk_id_of(data)
        with pytest.raises(CacheFull, match=chunk_id):
            cache.put(chunk_id, data)
        with pytest.raises(ChunkNotFound):
            cache.get(chunk_id)
        assert not [p for p in cache.chunk_dir.rglob("*") if p.is_file()]
        assert cache.reconcile(full=True).temp_removed == 0
