"""The swarm, end to end: real agents (libtorrent sessions on distinct 127.0.0.x), a real hub, real caches."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import httpx
import trio

from p2pchunks.agent import Agent
from p2pchunks.agent.metrics import render_prometheus
from p2pchunks.agent.status import agent_status, gauges
from p2pchunks.hub.server import open_hub_server
from p2pchunks.ids import blake2b_verifier
from p2pchunks.policy.fetch import FetchParams

from .swarmkit import address, agent_config, agents, connect_all, make_image

DEADLINE = 90


async def fetch_all(group: list[Agent], ref: str, *, introduce: list[Agent] | None = None) -> list[dict[str, object]]:
    """Start ``ref`` on every agent of ``group``, introduce ``introduce`` to each other, wait for all."""
    jobs = [await agent.fetch(ref) for agent in group]
    if introduce:
        connect_all(introduce, jobs[0].manifest)
    with trio.fail_after(DEADLINE):
        for job in jobs:
            await job.done.wait()
    assert [job.state for job in jobs] == ["done"] * len(jobs), [job.error for job in jobs]
    return [job.report.__dict__ for job in jobs if job.report is not None]


def assert_cache_complete(agent: Agent, chunk_ids: tuple[str, ...]) -> None:
    for chunk_id in chunk_ids:
        assert blake2b_verifier(chunk_id, agent.cache.get(chunk_id)), chunk_id


async def test_four_agents_share_one_image_and_the_hub_sends_it_about_once(tmp_path: Path) -> None:
    image = make_image(tmp_path, mib=6)
    manifest = image.manifest
    async with open_hub_server(tmp_path / "hub", latency_ms=20, rate_mbps=80) as (hub, url):
        configs = [agent_config(tmp_path, url, name=f"a{i}") for i in range(4)]
        async with agents(configs) as group:
            hub.stats.reset()
            reports = await fetch_all(group, str(image.path), introduce=group)
            for agent in group:
                assert_cache_complete(agent, manifest.chunk_ids)
            assert sum(int(r["bytes_from_peers"]) for r in reports) > 0  # type: ignore[call-overload]
    assert hub.stats.total_bytes <= 1.3 * manifest.unique_bytes, hub.stats.total_bytes / manifest.unique_bytes


async def test_a_chunk_only_one_peer_has_never_comes_from_the_hub(tmp_path: Path) -> None:
    image = make_image(tmp_path, mib=1)
    manifest = image.manifest
    async with (
        open_hub_server(tmp_path / "hub") as (hub, url),
        agents([agent_config(tmp_path, url, name="holder"), agent_config(tmp_path, url, name="asker")]) as (
            holder,
            asker,
        ),
    ):
        await holder.manifest(str(image.path))
        await fetch_all([holder], manifest.manifest_id)
        hub.stats.reset()
        await fetch_all([asker], str(image.path), introduce=[holder, asker])
        assert_cache_complete(asker, manifest.chunk_ids)
        # what each saw of the other, per address, in /status and /metrics
        assert holder.swarm is not None
        assert asker.swarm is not None
        got = agent_status(asker)["peer_bytes"][holder.swarm.settings.host]
        served = agent_status(holder)["peer_bytes"][asker.swarm.settings.host]
        metrics = render_prometheus(holder.stats, partial(gauges, holder)).decode()
    assert hub.stats.total_bytes == 0
    assert asker.stats.chunks_from_peers == len(manifest.chunk_ids)
    assert got["down"] >= manifest.unique_bytes
    assert served["up"] >= manifest.unique_bytes
    assert holder.stats.bytes_to_peers >= manifest.unique_bytes
    exposed = [line.split()[1] for line in metrics.splitlines() if line.startswith("p2pchunks_bytes_to_peers_total ")]
    assert [float(value) for value in exposed] == [holder.stats.bytes_to_peers]


async def test_hub_outage_peers_finish_and_missing_chunks_are_503_until_the_hub_returns(tmp_path: Path) -> None:
    image = make_image(tmp_path, mib=1)
    other = make_image(tmp_path, mib=0.25, name="other", seed=2)
    async with (
        open_hub_server(tmp_path / "hub") as (hub, url),
        agents([agent_config(tmp_path, url, name="full"), agent_config(tmp_path, url, name="late")]) as (full, late),
    ):
        await fetch_all([full], str(image.path))
        hub.available = False
        await fetch_all([late], str(image.path), introduce=[full, late])  # all from the peer
        assert_cache_complete(late, image.manifest.chunk_ids)
        missing = other.manifest.chunk_ids[0]
        api = f"http://{late.config.api.listen.rsplit(':', 1)[0]}:{late.api_port}"
        async with httpx.AsyncClient(base_url=api) as http:
            refused = await http.get(f"/chunks/{missing}")
            assert refused.status_code == 503
            assert refused.json()["chunk"] == missing
            job = await late.fetch(str(other.path))
            await trio.sleep(1.0)
            assert job.state == "running"
            hub.available = True
            with trio.fail_after(DEADLINE):
                await job.done.wait()
            assert job.state == "done"
            served = await http.get(f"/chunks/{missing}")
            assert served.status_code == 200
            assert blake2b_verifier(missing, served.content)


async def test_hot_chunks_arrive_first(tmp_path: Path) -> None:
    image = make_image(tmp_path, mib=3)
    manifest = image.manifest
    hot = set(manifest.hot)
    assert hot
    async with (
        open_hub_server(tmp_path / "hub", latency_ms=10) as (_, url),
        agents([agent_config(tmp_path, url, name="seed"), agent_config(tmp_path, url, name="node")]) as (seed, node),
    ):
        seed_report = (await fetch_all([seed], str(image.path)))[0]
        node_report = (await fetch_all([node], str(image.path), introduce=[seed, node]))[0]
    slots = FetchParams().hub_slots
    for label, report in (("from the hub", seed_report), ("from a peer", node_report)):
        order = report["arrival_order"]
        assert isinstance(order, list)
        positions = sorted(order.index(chunk_id) for chunk_id in hot)
        # all hot chunks come in the first waves of requests (the farm window starts at a few chunks, and a flushed
        # batch is announced in piece order), ahead of the bulk of the image
        assert positions[-1] < 2 * slots, (label, positions, len(order))
        assert 2 * slots < len(order) / 2


async def test_strict_nat_nodes_complete_through_a_seed(tmp_path: Path) -> None:
    image = make_image(tmp_path, mib=2)
    manifest = image.manifest
    async with open_hub_server(tmp_path / "hub") as (hub, url):
        seed_cfg = agent_config(tmp_path, url, name="seed", agent={"mode": "seed"})
        nat_cfgs = [agent_config(tmp_path, url, name=f"nat{i}", swarm={"inbound": False}) for i in range(2)]
        async with agents([seed_cfg, *nat_cfgs]) as (seed, *nats):
            await fetch_all([seed], str(image.path))
            hub.stats.reset()
            # NAT nodes dial out; dials *to* them are refused
            await fetch_all(nats, str(image.path), introduce=[seed, *nats])
            for nat in nats:
                assert_cache_complete(nat, manifest.chunk_ids)
    assert hub.stats.total_bytes == 0


async def test_a_seed_fetching_an_image_takes_it_from_the_hub_alone_and_nat_nodes_wait_for_it(tmp_path: Path) -> None:
    image = make_image(tmp_path, mib=2)
    manifest = image.manifest
    seed_ip = address()
    async with open_hub_server(tmp_path / "hub") as (hub, url):
        seed_cfg = agent_config(
            tmp_path, url, name="seed", ip=seed_ip, agent={"mode": "seed"},
            tracker={"enabled": True, "listen": f"{seed_ip}:0"},
        )  # fmt: skip
        async with agents([seed_cfg]) as (seed,):
            tracker = f"http://{seed_ip}:{seed.tracker_port}/announce"
            # behind strict NAT (inbound off), and in no hurry: they count on the seed the tracker announces
            nat_cfgs = [
                agent_config(
                    tmp_path,
                    url,
                    name=f"nat{i}",
                    swarm={"inbound": False, "trackers": [tracker]},
                    fetch={"discovery_grace_s": 5.0},
                )
                for i in range(2)
            ]
            async with agents(nat_cfgs) as nats:
                seed_job = await seed.fetch(str(image.path))  # the seed takes the image on first
                reports = await fetch_all(nats, str(image.path), introduce=[seed, *nats])
                with trio.fail_after(DEADLINE):
                    await seed_job.done.wait()
                for nat in nats:
                    assert_cache_complete(nat, manifest.chunk_ids)
    assert seed_job.report is not None
    assert set(seed_job.report.hub_reasons) == {"SEEDING"}
    assert [r["bytes_from_hub"] for r in reports] == [0, 0]
    assert hub.stats.total_bytes == manifest.unique_bytes


async def test_a_fresh_node_finds_a_holder_through_the_seed_tracker(tmp_path: Path) -> None:
    image = make_image(tmp_path, mib=1)
    manifest = image.manifest
    seed_ip = address()
    async with open_hub_server(tmp_path / "hub") as (hub, url):
        tracker = f"http://{seed_ip}:0/announce"
        seed_cfg = agent_config(
            tmp_path,
            url,
            name="seed",
            ip=seed_ip,
            agent={"mode": "seed"},
            tracker={"enabled": True, "listen": f"{seed_ip}:0", "interval_s": 1},
        )
        async with agents([seed_cfg]) as (seed,):
            tracker = f"http://{seed_ip}:{seed.tracker_port}/announce"
            node_cfgs = [
                agent_config(
                    tmp_path, url, name=f"n{i}", swarm={"trackers": [tracker]}, fetch={"discovery_grace_s": 5.0}
                )
                for i in range(2)
            ]
            async with agents(node_cfgs) as (holder, fresh):
                await fetch_all([holder], str(image.path))  # holder announces to the seed's tracker
                with trio.fail_after(30):
                    assert seed.tracker is not None
                    while not seed.tracker.peers_of(bytes.fromhex(manifest.infohash or "")[:20]):  # noqa: ASYNC110
                        await trio.sleep(0.1)  # libtorrent announces on its own schedule: poll, bounded above
                hub.stats.reset()
                await fetch_all([fresh], str(image.path))  # no manual connect anywhere
                assert fresh.stats.chunks_from_peers == len(manifest.chunk_ids)
    assert hub.stats.total_bytes == 0
