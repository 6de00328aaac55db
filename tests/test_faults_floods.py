"""Floods and sybils against a public seed, on loopback with distinct 127.x source addresses: its tracker (over the
real HTTP server) and its swarm port (real libtorrent sessions).

- The tracker: unknown infohashes from one address; fresh peer ids and ports into an honest torrent from one
  address and from the 254 addresses of one /24, claiming the honest farm. The table stays bounded, every honest
  peer stays recorded, and strangers hold at most a tenth of what honest nodes are handed. End to end, a fresh
  node still finds its honest neighbour through a flooded seed tracker and takes the image from it, not the hub.
- The swarm port: one address re-opening connections (handshaking or idle) until the seed's connection limit;
  the flood guard blocks it and honest leechers get the whole torrent.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import trio

from p2pchunks.agent import Agent
from p2pchunks.agent.status import swarm_gauges
from p2pchunks.bench.tracker import Announcer, announce_query, honest_addresses, stranger_share
from p2pchunks.formats.manifest import Manifest
from p2pchunks.http.server import serve_http
from p2pchunks.hub.server import open_hub_server
from p2pchunks.swarm.peertable import PER_ADDRESS, PER_PREFIX
from p2pchunks.swarm.session import SwarmSettings, open_swarm
from p2pchunks.swarm.tracker import Tracker

from .swarmkit import address, agent_config, agents, bare_torrent, make_image

KNOWN = bytes(range(20))
FLOOD = 1500
"""Announces per tracker flood here (the bench sends 100,000): past every cap, within seconds."""


async def _flood(port: int, sources: list[str], queries: list[str]) -> int:
    """Send ``queries`` spread over ``sources`` (one keep-alive connection each); how many got a peer list."""
    with_peers = 0

    async def one(source: str, mine: list[str]) -> None:
        nonlocal with_peers
        async with Announcer(source, "127.0.0.1", port) as client:
            for query in mine:
                status, reply = await client.announce(query)
                assert status == 200, reply
                with_peers += b"peers" in reply

    async with trio.open_nursery() as nursery:
        for k, source in enumerate(sources):
            nursery.start_soon(one, source, queries[k :: len(sources)])
    return with_peers


@pytest.mark.parametrize("flood", ["unknown infohashes", "one address", "one /24"])
async def test_a_flooded_tracker_stays_bounded_and_keeps_honest_peers_in_view(flood: str) -> None:
    tracker = Tracker({KNOWN}.__contains__, rng=random.Random(4))
    honest = honest_addresses()  # 20 peers: two public addresses in each of ten /24s
    rng = random.Random(8)
    if flood == "unknown infohashes":
        sources = ["127.66.0.1"]
        queries = [announce_query(os.urandom(20), os.urandom(20), 6881) for _ in range(FLOOD)]
    else:
        sources = ["127.66.0.1"] if flood == "one address" else [f"127.66.0.{k}" for k in range(1, 255)]
        queries = [announce_query(KNOWN, os.urandom(20), rng.randrange(1, 65536), farm="farm-7") for _ in range(FLOOD)]
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, tracker.handle, "127.0.0.1", 0)
            for ip in honest:
                async with Announcer(ip, "127.0.0.1", port) as client:
                    await client.announce(announce_query(KNOWN, ip.encode(), 6881, farm="farm-7"))
            with_peers = await _flood(port, sources, queries)
            share, handed = await stranger_share("127.0.0.1", port, KNOWN, honest, lambda ip: ip.startswith("127.66."))
            nursery.cancel_scope.cancel()
    entries = tracker.peers_of(KNOWN)
    assert {ip for ip, _ in entries} >= set(honest)  # nobody honest was pushed out
    assert tracker.torrents == 1
    if flood == "unknown infohashes":
        assert (with_peers, len(entries)) == (0, len(honest))  # every stranger refused; nothing recorded
        assert share == 0
    else:
        assert with_peers == FLOOD
        assert len(entries) == len(honest) + (PER_ADDRESS if flood == "one address" else PER_PREFIX)
        assert handed >= len(honest) * (len(honest) - 1)  # every honest node was handed every other one
        assert 0 < share <= 0.10, share


async def test_a_fresh_node_finds_its_honest_neighbour_through_a_flooded_seed_tracker(tmp_path: Path) -> None:
    """The issue's second case end to end: 600 announces from one address, fresh ids and ports, claiming the farm."""
    image = make_image(tmp_path, mib=1)
    manifest = image.manifest
    seed_ip = address()
    async with open_hub_server(tmp_path / "hub") as (hub, url):
        seed_cfg = agent_config(
            tmp_path,
            url,
            name="seed",
            ip=seed_ip,
            agent={"mode": "seed"},
            tracker={"enabled": True, "listen": f"{seed_ip}:0"},
        )
        async with agents([seed_cfg]) as (seed,):
            await seed.manifest(str(image.path))  # the seed knows the image: its tracker serves that torrent
            tracker = f"http://{seed_ip}:{seed.tracker_port}/announce"
            node_cfgs = [
                agent_config(
                    tmp_path,
                    url,
                    name=f"n{i}",
                    agent={"farm": "farm-a"},
                    swarm={"trackers": [tracker]},
                    fetch={"discovery_grace_s": 5.0},
                )
                for i in range(2)
            ]
            async with agents(node_cfgs) as (holder, fresh):
                await _fetch(holder, str(image.path))  # the holder announces to the seed's tracker
                info_hash = bytes.fromhex(manifest.infohash or "")[:20]
                assert seed.tracker is not None
                with trio.fail_after(30):
                    while not seed.tracker.peers_of(info_hash):  # noqa: ASYNC110
                        await trio.sleep(0.1)  # libtorrent announces on its own schedule: poll, bounded above
                    async with Announcer("127.66.0.1", seed_ip, seed.tracker_port) as stranger:
                        for i in range(600):
                            query = announce_query(info_hash, b"sybil-%d" % i, 2000 + i, numwant=0, farm="farm-a")
                            assert (await stranger.announce(query))[0] == 200
                strangers = [ip for ip, _ in seed.tracker.peers_of(info_hash) if ip == "127.66.0.1"]
                assert len(strangers) == PER_ADDRESS
                hub.stats.reset()
                await _fetch(fresh, str(image.path))  # found through the tracker only: no manual connect anywhere
                assert fresh.stats.chunks_from_peers == len(manifest.chunk_ids)
    assert hub.stats.total_bytes == 0


async def _fetch(agent: Agent, ref: str) -> None:
    job = await agent.fetch(ref)
    with trio.fail_after(60):
        await job.done.wait()
    assert job.state == "done", job.error


# ---- the swarm port --------------------------------------------------------------------------------------------


async def _attack(seed: tuple[str, int], info_hash: bytes, source: str, sockets: int, handshake: bool) -> None:
    """``sockets`` connections from ``source``, each re-opened as soon as the seed drops it, until cancelled.

    ``handshake``: each sends a valid BitTorrent handshake for the torrent and says it is interested, then idles;
    otherwise it sends nothing (holding a slot until libtorrent's handshake timeout)."""
    hello = b"\x13BitTorrent protocol" + bytes(8) + info_hash

    async def one(k: int) -> None:
        while True:
            sock = trio.socket.socket()
            try:
                await sock.bind((source, 0))
                await sock.connect(seed)
                if handshake:
                    await sock.send(hello + b"-XX0001-" + k.to_bytes(12, "big") + b"\x00\x00\x00\x01\x02")
                while await sock.recv(65536):
                    pass
            except OSError:
                pass
            finally:
                sock.close()
            await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        for k in range(sockets):
            nursery.start_soon(one, k)


async def _leech(manifest: Manifest, directory: Path, seed: tuple[str, int], seconds: float) -> int:
    """An honest bare libtorrent session dialling the seed until it has the torrent: pieces it got."""
    settings = SwarmSettings(listen=f"{address()}:0", utp=False, dht=False, lsd=False)
    async with bare_torrent(manifest, settings, directory) as (_, handle):
        with trio.move_on_after(seconds):
            while handle.status().num_pieces < len(manifest.piece_ids):
                handle.connect_peer(seed)
                await trio.sleep(0.5)
        return int(handle.status().num_pieces)


@pytest.mark.parametrize("handshake", [True, False], ids=["handshaking", "idle"])
async def test_one_address_flooding_the_swarm_port_leaves_room_for_honest_peers(
    tmp_path: Path, handshake: bool
) -> None:
    image = make_image(tmp_path, mib=1, hot=False)
    manifest = image.manifest
    settings = SwarmSettings(
        listen=f"{address()}:0", profile="seed", utp=False, dht=False, lsd=False, connections_limit=40
    )
    async with open_swarm(settings, tmp_path / "hub", lambda event: None) as swarm:
        swarm.add(manifest, set(manifest.piece_ids), download=False)  # the hub's files are the seed's cache
        seed = (settings.host, swarm.listen_port)
        info_hash = bytes.fromhex(manifest.infohash or "")[:20]
        got: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_attack, seed, info_hash, "127.66.0.1", 200, handshake)
            await trio.sleep(2)  # the flood has filled the seed's slots by now

            async def honest(k: int) -> None:
                got.append(await _leech(manifest, tmp_path / f"leech{k}", seed, 60))

            async with trio.open_nursery() as leechers:
                for k in range(2):
                    leechers.start_soon(honest, k)
            nursery.cancel_scope.cancel()
        assert got == [len(manifest.piece_ids)] * 2
        assert list(swarm.guard.blocked) == [("127.66.0.1", "127.66.0.1")]  # the attacker, nobody else
        assert swarm.guard_blocks == 1
        shown = swarm_gauges(swarm)  # what /status and /metrics show of it
        assert (shown["flood_blocked_now"], shown["flood_blocks"]) == (1, 1)
