"""Counters the agent shows in ``/status`` and ``/metrics``: what the hub clients count is counted once, there."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from p2pchunks.agent.metrics import AgentStats
from p2pchunks.hub.client import HubClientStats
from p2pchunks.hub.server import open_hub_server
from p2pchunks.ids import chunk_relpath

from .swarmkit import agent_config, agents, make_image
from .test_cli import api_url


async def test_corrupt_answers_of_the_hub_are_counted(tmp_path: Path) -> None:
    image = make_image(tmp_path, mib=0.25)
    chunk = image.manifest.chunk_ids[0]
    stored = tmp_path / "hub" / "chunks" / chunk_relpath(chunk)
    stored.write_bytes(bytes(len(stored.read_bytes())))  # same size, wrong bytes
    config = agent_config(tmp_path, "", name="a", fetch={"hub_retries": 2})
    async with (
        open_hub_server(tmp_path / "hub") as (_, url),
        agents([config.replace(agent={"hub": url})]) as (a,),
        httpx.AsyncClient(base_url=api_url(a), timeout=30) as http,
    ):
        answer = await http.get(f"/chunks/{chunk}")
        assert answer.status_code == 502
        assert answer.json()["chunk"] == chunk
        stats = (await http.get("/status")).json()["stats"]
        metrics = (await http.get("/metrics")).text
    assert stats["corrupt_from_hub"] == 3  # the first try and both retries
    assert "p2pchunks_corrupt_from_hub_total 3.0" in metrics
    assert stats["chunks_from_hub"] == 0


@dataclass
class Hub:
    """A hub client or pool as the stats see it: its ``stats``, read anew each time."""

    stats: HubClientStats


def test_every_hub_client_counts() -> None:
    main, warm = Hub(HubClientStats(corrupt=2)), Hub(HubClientStats(corrupt=1))
    stats = AgentStats(hubs=[main, warm])
    assert stats.corrupt_from_hub == 3
    warm.stats = HubClientStats(corrupt=2)  # a pool's totals are a new object each time
    assert stats.as_json()["corrupt_from_hub"] == 4
    assert "hubs" not in stats.as_json()
