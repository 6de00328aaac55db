"""Never wrong bytes, never a job that hangs: real agents, a real hub, real files damaged on disk (loopback only)."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio
import trio.lowlevel

from p2pchunks.agent import Agent, open_agent
from p2pchunks.hub.server import open_hub_server
from p2pchunks.ids import blake2b_verifier
from p2pchunks.swarm import alerts
from p2pchunks.swarm.session import SwarmSettings, open_swarm

from .swarmkit import address, agent_config, connect_all, make_image

DEADLINE = 60


def flip(agent: Agent, chunk_id: str) -> None:
    """Rot: flip bytes in a cached chunk's file, same size."""
    path = agent.cache.path_for(chunk_id)
    data = bytearray(path.read_bytes())
    for i in range(0, min(len(data), 64)):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def api(agent: Agent) -> httpx.AsyncClient:
    host = agent.config.api.listen.rsplit(":", 1)[0]
    return httpx.AsyncClient(base_url=f"http://{host}:{agent.api_port}", timeout=30)


async def fetched(agent: Agent, ref: str) -> None:
    job = await agent.fetch(ref)
    with trio.fail_after(DEADLINE):
        await job.done.wait()
    assert job.state == "done", job.error


async def test_a_running_node_serves_the_right_bytes_after_rot_and_repairs_the_chunk(tmp_path: Path) -> None:
    image = make_image(tmp_path, mib=1)
    victim = image.manifest.piece_ids[3]
    async with open_hub_server(tmp_path / "hub") as (_, url), open_agent(agent_config(tmp_path, url, name="a")) as a:
        await fetched(a, str(image.path))
        flip(a, victim)
        async with api(a) as http:
            answer = await http.get(f"/chunks/{victim}")
            assert answer.status_code == 200
            assert blake2b_verifier(victim, answer.content)
            status = (await http.get("/status")).json()
        assert status["integrity"]["damaged_found"] == 1
        assert blake2b_verifier(victim, a.cache.path_for(victim).read_bytes())  # the file was replaced


async def test_a_seed_restarted_on_rotten_chunks_repairs_them_and_stays_useful(tmp_path: Path) -> None:
    image = make_image(tmp_path, mib=1)
    rotten = list(image.manifest.piece_ids[2:5])
    seed_ip = address()
    async with open_hub_server(tmp_path / "hub") as (hub, url):
        seed_config = agent_config(tmp_path, url, name="seed", ip=seed_ip, agent={"mode": "seed"})
        async with open_agent(seed_config) as seed:
            await fetched(seed, str(image.path))
            for chunk_id in rotten:
                flip(seed, chunk_id)
        hub.stats.reset()
        async with open_agent(seed_config) as seed:
            with trio.fail_after(DEADLINE):
                while seed.repairs.repaired < len(rotten):  # noqa: ASYNC110 - repairs run on their own
                    await trio.sleep(0.05)
            assert seed.cache.damaged_found == len(rotten)
            assert hub.stats.total_bytes == sum(image.manifest.chunk_size_of(c) for c in rotten)
            for chunk_id in rotten:
                assert blake2b_verifier(chunk_id, seed.cache.path_for(chunk_id).read_bytes())
            hub.stats.reset()
            async with open_agent(agent_config(tmp_path, url, name="node")) as node:
                job = await node.fetch(str(image.path))
                connect_all([node, seed], image.manifest)
                with trio.fail_after(DEADLINE):
                    await job.done.wait()
                assert job.state == "done", job.error
                assert job.report is not None
                assert job.report.from_hub == 0, "the seed served every chunk"
                assert node.stats.peers_banned == 0


async def test_a_job_with_no_source_left_fails_naming_the_chunks(tmp_path: Path) -> None:
    image = make_image(tmp_path, mib=0.25, hot=False)
    config = agent_config(tmp_path, "http://127.0.0.1:1/", name="a", fetch={"give_up_s": 2.0, "discovery_grace_s": 0.0})
    async with open_agent(config) as a:
        job = await a.fetch(str(image.path))  # the manifest is a local file; the hub refuses every connection
        with trio.fail_after(DEADLINE):
            await job.done.wait()
        assert job.state == "failed"
        assert "cannot be fetched" in job.error
        assert f"{len(image.manifest.piece_ids)} chunks missing" in job.error
        ids = image.manifest.piece_ids
        assert any(f"{chunk_id}: no peer has it and the hub failed" in job.error for chunk_id in ids)
        async with api(a) as http:
            answer = (await http.get(f"/jobs/{job.id}")).json()
        assert answer["state"] == "failed"
        assert answer["error"] == job.error


async def test_evicted_chunks_leave_the_torrent_and_a_later_fetch_gets_them_again(tmp_path: Path) -> None:
    image = make_image(tmp_path, mib=2)
    small = {"budget_bytes": int(2.5 * 2**20)}  # the image fits under the high mark; a forced gc evicts some
    async with (
        open_hub_server(tmp_path / "hub") as (hub, url),
        open_agent(agent_config(tmp_path, url, name="a", cache=small)) as a,
    ):
        await fetched(a, str(image.path))
        assert a.swarm is not None
        assert image.manifest.infohash is not None
        torrent = a.swarm.torrents[image.manifest.infohash]
        async with api(a) as http:
            gc = (await http.post("/cache/gc", json={"dry_run": False, "force": True})).json()
        evicted = set(gc["victims"])
        assert evicted
        with trio.fail_after(10):
            while any(torrent.has(chunk_id) for chunk_id in evicted):  # noqa: ASYNC110 - libtorrent's view
                await trio.sleep(0.05)
        hub.stats.reset()
        await fetched(a, str(image.path))
        assert hub.stats.total_bytes == sum(image.manifest.chunk_size_of(c) for c in evicted)
        assert all(torrent.has(chunk_id) for chunk_id in image.manifest.piece_ids)


async def test_pieces_completed_while_alerts_were_dropped_are_adopted(tmp_path: Path) -> None:
    """libtorrent may drop alerts when its queue overflows: the keeper then compares every torrent with the cache."""
    from p2pchunks.agent.metrics import AgentStats
    from p2pchunks.agent.pieces import PieceKeeper
    from p2pchunks.cache.store import ChunkCache

    image = make_image(tmp_path, mib=0.5)
    manifest = image.manifest
    send, receive = trio.open_memory_channel[alerts.SwarmEvent](1000)

    def drop_piece_news(event: alerts.SwarmEvent) -> None:
        if not isinstance(event, alerts.PieceFinished):
            send.send_nowait(event)

    arrived: list[str] = []

    async def refetch(chunk_id: str) -> None:
        raise AssertionError(f"no chunk is damaged here: {chunk_id}")

    settings = SwarmSettings(listen=f"{address()}:0", utp=False, dht=False, lsd=False)
    with ChunkCache(tmp_path / "cache", budget_bytes=2**30) as cache:
        async with open_swarm(settings, tmp_path / "cache", drop_piece_news) as swarm, trio.open_nursery() as nursery:
            keeper = PieceKeeper(
                swarm, cache, receive, arrived=lambda chunk_id, *_, **__: arrived.append(chunk_id),
                refetch=refetch, stats=AgentStats(), disk=trio.CapacityLimiter(2),
            )
            await nursery.start(keeper.run)
            torrent = await keeper.join(manifest)
            assert torrent is not None
            for chunk_id in manifest.piece_ids:
                torrent.inject(chunk_id, (tmp_path / "hub" / "chunks" / chunk_id[:2] / chunk_id[2:4] / chunk_id)
                               .read_bytes())
            with trio.fail_after(DEADLINE):
                while not all(torrent.has(c) for c in manifest.piece_ids):  # noqa: ASYNC110 - libtorrent's view
                    await trio.sleep(0.02)
            await trio.sleep(0.3)
            assert arrived == []  # the keeper heard nothing
            send.send_nowait(alerts.AlertsDropped(3))
            with trio.fail_after(DEADLINE):
                while len(arrived) < len(manifest.piece_ids):  # noqa: ASYNC110 - the keeper's flush and adopt
                    await trio.sleep(0.02)
            assert cache.held(manifest.piece_ids) == set(manifest.piece_ids)
            nursery.cancel_scope.cancel()
