"""Custody for real: agents (libtorrent sessions on distinct 127.0.0.x), a real hub, a signed official list.

Three agents warm an official image by custody (each keeps its share: two farm copies of every chunk), one leaves,
and a node left holding the farm's only copy of some chunks runs an eviction pass under a user image: those chunks
survive it, chunks a farm-mate also holds go first. Then a fourth node joins and takes over its share from the
farm: from peers, not a byte from the hub.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import trio
from rich.console import Console

from p2pchunks.agent import Agent, open_agent
from p2pchunks.agent.metrics import render_prometheus
from p2pchunks.agent.status import agent_status, gauges
from p2pchunks.cli.client import status_table
from p2pchunks.config.schema import Config
from p2pchunks.formats.manifest import Manifest
from p2pchunks.formats.signing import generate_keypair, load_signing_key, sign_file
from p2pchunks.hub.server import open_hub_server
from p2pchunks.policy.custody import CustodyPlan, custodians
from p2pchunks.policy.eviction import Pin

from .swarmkit import CHUNK, address, agent_config, connect_all, make_image

DEADLINE = 120


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for ``condition``, checking ten times a second."""
    with trio.fail_after(DEADLINE):
        for _ in range(DEADLINE * 10):
            if condition():
                return
            await trio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


def official_config(tmp: Path, url: str, name: str, ip: str, official: Path, public: str, budget: int) -> Config:
    return agent_config(
        tmp,
        url,
        name=name,
        ip=ip,
        cache={"budget_bytes": budget},
        warm={
            "official": True,
            "official_file": str(official),
            "trusted_keys": [public],
            "max_start_delay_s": 0.0,
            "hub_rate_bps": 0,
            "refresh_s": 3600.0,
        },
        custody={"copies": 2, "share": 0.5, "settle_s": 2.0, "refresh_s": 0.3, "hold_s": 3600.0},
    )


async def introduce(group: list[Agent], manifest: Manifest) -> None:
    """What LSD does on a farm (off in tests): introduce the agents to each other on ``manifest``'s torrent until
    each is connected to every other (a first dial can be lost, as LSD's announces can: it announces again)."""
    for _ in range(20):
        connect_all(group, manifest)
        await trio.sleep(0.5)
        if all(connected(agent, group, manifest) for agent in group):
            return
    raise AssertionError("the agents never connected to each other")


def connected(agent: Agent, group: list[Agent], manifest: Manifest) -> bool:
    assert agent.swarm is not None
    assert manifest.infohash is not None
    torrent = agent.swarm.torrents[manifest.infohash]
    return {peer.ip for peer in torrent.peers()} >= {me(other) for other in group if other is not agent}


def joined(agent: Agent, manifest: Manifest) -> bool:
    return agent.swarm is not None and manifest.infohash in agent.swarm.torrents


def settled(agent: Agent, members: int) -> bool:
    """The agent's custody is computed over ``members`` members and fetched."""
    warmer = agent.warmer
    return (
        warmer is not None
        and warmer.custody is not None
        and len(warmer.custody.members) == members
        and not warmer.warming
        and warmer.passes >= 1
    )


def plan_of(agent: Agent) -> CustodyPlan:
    assert agent.warmer is not None
    assert agent.warmer.custody is not None
    return agent.warmer.custody


def me(agent: Agent) -> str:
    assert agent.swarm is not None
    return agent.swarm.settings.host


async def test_the_farms_only_copy_survives_eviction_and_a_joiner_takes_its_share_from_peers(tmp_path: Path) -> None:
    manifest = make_image(tmp_path, mib=1.5, name="official-vm", seed=7).manifest
    secret, public = generate_keypair(tmp_path / "release")
    official = tmp_path / "official.toml"
    official.write_text('version = 1\n[[image]]\nname = "vm"\nmanifest = "official-vm"\n')
    sign_file(official, load_signing_key(secret))
    key = public.read_text().strip()
    ips = {name: address() for name in "abcd"}
    # a's budget: room for its custody within custody.share, and a user image that fits beside the chunks only a
    # holds once c is gone, but not beside all of its custody: its eviction passes must choose.
    keeps = {ch: set(custodians(ch, [ips["a"], ips["b"], ips["c"]], 2)) for ch in manifest.chunk_ids}
    custody_a = sum(manifest.chunk_size_of(ch) for ch, who in keeps.items() if ips["a"] in who)
    last_a = sum(manifest.chunk_size_of(ch) for ch, who in keeps.items() if who == {ips["a"], ips["c"]})
    budget = int(2.2 * custody_a)
    user_image = make_image(tmp_path, mib=(budget - last_a - 6 * CHUNK) / 2**20, name="user-vm", seed=8, hot=False)
    assert last_a + user_image.manifest.unique_bytes <= budget
    assert custody_a + user_image.manifest.unique_bytes > 0.9 * budget

    def config(name: str) -> Config:
        return official_config(tmp_path, url, name, ips[name], official, key, budget if name == "a" else 2**30)

    async with open_hub_server(tmp_path / "hub") as (hub, url), AsyncExitStack() as stack:
        a, b = [await stack.enter_async_context(open_agent(config(name))) for name in "ab"]
        async with open_agent(config("c")) as c:
            farm = [a, b, c]
            await until(lambda: all(joined(x, manifest) for x in farm), "every agent joined the official torrent")
            await introduce(farm, manifest)
            await until(lambda: all(settled(x, 3) for x in farm), "custody computed among three and fetched")
            members = [me(x) for x in farm]
            for agent in farm:
                plan = plan_of(agent)
                expected = {ch for ch in manifest.chunk_ids if me(agent) in custodians(ch, members, 2)}
                assert plan.chunks == expected
                assert agent.cache.held(expected) == expected  # its custody is cached ...
                assert await trio.to_thread.run_sync(agent.cache.pinned_directly, Pin.OFFICIAL) == expected  # pinned
            for chunk_id in manifest.chunk_ids:  # two farm copies of every chunk
                assert sum(chunk_id in x.cache.held([chunk_id]) for x in farm) >= 2
            assert a.farm is not None
            seen = a.farm
            await until(lambda: seen.histogram["0"] == seen.histogram["1"] == 0, "a sees two copies of every chunk")
            assert sum(seen.histogram.values()) == len(manifest.chunk_ids)
            status = agent_status(a)["custody"]
            assert status["images"] == ["vm"]
            assert status["left_out"] == []
            assert (status["chunks"], status["bytes"]) == (len(plan_of(a).chunks), plan_of(a).bytes)
            assert status["farm"]["members"] == sorted(members)
            console = Console(record=True, width=200)
            console.print(status_table(agent_status(a)))
            shown = console.export_text()
            assert f"1 images, {len(plan_of(a).chunks)} chunks" in shown
            assert "official chunks with 0 / 1 / 2 / 3+ farm copies" in shown
            metrics = render_prometheus(a.stats, partial(gauges, a)).decode()
            assert f"p2pchunks_custody_chunks {float(len(plan_of(a).chunks))}" in metrics
            assert "p2pchunks_farm_members 3.0" in metrics
            assert "p2pchunks_farm_chunks_with_0_copies 0.0" in metrics
        # c left. a keeps as its custody the chunks it shares with c: a is now the farm's only copy of them.
        only_copy = [ch for ch in manifest.chunk_ids if set(custodians(ch, members, 2)) == {me(a), me(c)}]
        shared = [ch for ch in manifest.chunk_ids if set(custodians(ch, members, 2)) == {me(a), me(b)}]
        assert only_copy
        assert shared
        hints = seen.hints
        await until(lambda: all(hints.replicas.get(ch, 0) == 0 for ch in only_copy), "a sees c gone")
        await until(lambda: all(hints.replicas.get(ch, 0) >= 1 for ch in shared), "a sees b's copies")
        job = await a.fetch(str(user_image.path))  # a user image: more than the cache holds beside a's custody
        with trio.fail_after(DEADLINE):
            await job.done.wait()
        assert job.state == "done", job.error
        assert a.cache.held(only_copy) == set(only_copy)  # the farm's only copies survived the eviction passes
        assert a.cache.held(shared) != set(shared)  # what b also holds went first
        assert a.cache.last_copies_evicted == 0
        assert gauges(a)["custody_last_copies_evicted"] == 0
        assert a.cache.usage().bytes <= budget
        # d joins: its share comes from the farm, not the hub
        hub.stats.reset()
        d = await stack.enter_async_context(open_agent(config("d")))
        await until(lambda: joined(d, manifest), "d joined the official torrent")
        await introduce([a, b, d], manifest)
        await until(lambda: settled(d, 3), "d's custody computed among a, b and d, and fetched")
        mine = plan_of(d).chunks
        assert mine
        assert d.cache.held(mine) == set(mine)
        manifest_file = (tmp_path / "hub" / "manifests" / "official-vm.p2p").stat().st_size
        assert hub.stats.total_bytes == manifest_file  # the manifest, and not one chunk
        assert (d.stats.chunks_from_hub, d.stats.bytes_from_hub) == (0, 0)
        reports: list[Any] = [j.report for j in d.jobs.all() if j.report is not None]
        assert sum(r.bytes_from_peers for r in reports) >= sum(map(manifest.chunk_size_of, mine))
        # a and b see d too: they keep less, and drop the direct pins of what is no longer theirs
        await until(lambda: all(settled(x, 4) for x in (a, b)), "a and b computed custody with d")
        for agent in (a, b):
            pinned = await trio.to_thread.run_sync(agent.cache.pinned_directly, Pin.OFFICIAL)
            assert pinned == plan_of(agent).chunks
