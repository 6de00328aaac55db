"""``p2pchunks bench ingest``: how fast a node takes chunks in, verified and durable, next to bare libtorrent.

Three transfers of the same image (``image_mib`` of 512 KiB chunks), measured in one run:

* **from a peer**: a warm agent process holds the image; a fresh agent process fetches it (they find each other by
  LSD on loopback; the hub is capped so low that every chunk comes from the peer);
* **from the hub**: a fresh agent process fetches it from an uncapped local reference hub (HTTP);
* **bare libtorrent**: two libtorrent sessions with the agent's own settings and nothing of ours, the bound.

Reported: MB/s of each (chunks verified against their ids, fsynced, indexed: the job's own time), the receiving
agent's peak anonymous memory while it ingests, and what durability costs (fsync per chunk).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import libtorrent as lt
import trio

from ..agent.process import AgentProcess, open_agent_process, write_config
from ..hub.server import open_hub_server
from ..swarm.session import SwarmSettings, session_settings
from ..swarm.torrent import add_params
from .warmcache import build_warm_cache

BUDGET = 64 * 2**30


def _agent_config(work: Path, name: str, ip: str, hub: str, *, lsd: bool) -> Path:
    return write_config(
        work / f"{name}.toml",
        {
            "agent": {"cache_dir": str(work / name), "hub": hub},
            "api": {"listen": f"{ip}:0"},
            "swarm": {"listen": f"{ip}:0", "utp": False, "lsd": lsd, "dht": False},
            "warm": {"official": False},
            "cache": {"budget_bytes": BUDGET, "scrub_rate_bps": 0},
            "fetch": {"discovery_grace_s": 1.0, "give_up_s": 600.0},
        },
    )


async def _fetch(agent: AgentProcess, ref: str) -> tuple[dict[str, Any], int]:
    """Fetch ``ref`` through the agent's API; (job report, peak RssAnon while it ran)."""
    peak = 0
    async with httpx.AsyncClient(base_url=agent.api, timeout=600) as http:
        job = (await http.post("/fetch", json={"manifest": ref})).json()["job"]
        while True:
            peak = max(peak, agent.rss_bytes("RssAnon"))
            report = (await http.get(f"/jobs/{job}")).json()
            if report["state"] != "running":
                break
            await trio.sleep(0.1)
    if report["state"] != "done":
        raise RuntimeError(f"fetch failed: {report['error']}")
    return report, peak


def _bare_libtorrent(source: Path, target: Path, manifest: Any) -> float:
    """Seconds for a bare libtorrent session to take the whole image from another (both with our settings)."""
    sessions = []
    for ip in ("127.0.0.31", "127.0.0.32"):
        params = lt.session_params()
        pack: Any = session_settings(SwarmSettings(listen=f"{ip}:0", utp=False, dht=False, lsd=False))
        params.settings = pack
        sessions.append(lt.session(params))
    seeder, leecher = sessions
    seed = seeder.add_torrent(add_params(manifest, str(source), set(manifest.piece_ids), [4] * len(manifest.piece_ids)))
    leech = leecher.add_torrent(add_params(manifest, str(target), set(), [4] * len(manifest.piece_ids)))
    time.sleep(0.5)
    started = time.perf_counter()
    leech.connect_peer(("127.0.0.31", seeder.listen_port()))
    deadline = started + 600
    while not leech.status().is_seeding and time.perf_counter() < deadline:
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    del seed
    for session in sessions:
        session.pause()
    time.sleep(0.3)
    return elapsed


async def bench_ingest(image_mib: int, workdir: Path | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="p2pchunks-ingest-", dir=workdir) as tmp:
        work = Path(tmp)
        warm = await trio.to_thread.run_sync(
            lambda: build_warm_cache(work / "warm", image_mib * 2**20, 1, budget_bytes=BUDGET)
        )
        manifest = warm.manifests[0]
        ref = str(next((work / "warm" / "manifests").glob("*.p2p")))
        hub_root = work / "hub"
        (hub_root / "manifests").mkdir(parents=True)
        (hub_root / "chunks").symlink_to(work / "warm" / "chunks")
        image_mb = manifest.unique_bytes / 1e6
        figures: dict[str, Any] = {"image_MiB": image_mib, "chunks": len(manifest.piece_ids)}
        async with open_hub_server(hub_root, rate_mbps=1.0) as (_, slow_hub):
            async with (
                open_agent_process(_agent_config(work, "warm", "127.0.0.21", slow_hub, lsd=True)) as _seed,
                open_agent_process(_agent_config(work, "peer-in", "127.0.0.22", slow_hub, lsd=True)) as fresh,
            ):
                report, peak = await _fetch(fresh, ref)
            figures["from_peer_MBps"] = round(image_mb / report["seconds"], 1)
            figures["from_peer_chunks_from_hub"] = report["from_hub"]
            figures["from_peer_peak_anon_MiB"] = round(peak / 2**20, 1)
        async with open_hub_server(hub_root) as (_, fast_hub):
            async with open_agent_process(_agent_config(work, "hub-in", "127.0.0.23", fast_hub, lsd=False)) as fresh:
                report, peak = await _fetch(fresh, ref)
            figures["from_hub_MBps"] = round(image_mb / report["seconds"], 1)
            figures["from_hub_peak_anon_MiB"] = round(peak / 2**20, 1)
        bare_s = await trio.to_thread.run_sync(lambda: _bare_libtorrent(work / "warm", work / "bare", manifest))
        figures["bare_libtorrent_MBps"] = round(image_mb / bare_s, 1)
        figures["durability"] = "each chunk: hashed from its file, fsynced with its directory, then indexed"
    print(json.dumps(figures, indent=2))
    return 0
