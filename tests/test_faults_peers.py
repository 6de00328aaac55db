"""Poisoned peers: a raw libtorrent session that claims every piece of a manifest but serves wrong bytes.

The liar is a bare ``lt.session`` on its own 127.0.0.x (our swarm settings, no agent code), handed the torrent
with ``have_pieces`` all True while the files under its ``save_path`` are corrupt, truncated, or hold the bytes of
other chunks. A real agent fetching the manifest is connected to it (and to the hub, and in some cases to an
honest peer). Whatever the liar sends: no wrong byte reaches the agent's cache or its API, the fetch completes
from the others, the hash failures are counted and the liar is banned.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import libtorrent as lt
import pytest
import trio

from p2pchunks.agent import Agent
from p2pchunks.agent.jobs import Job
from p2pchunks.formats.manifest import Manifest
from p2pchunks.hub.server import open_hub_server
from p2pchunks.ids import blake2b_verifier, chunk_relpath
from p2pchunks.swarm.session import SwarmSettings, session_settings

from .swarmkit import Image, address, agent_config, agents, bare_torrent, make_image

DEADLINE = 90
BLOCK = 16 * 1024
Poison = Callable[[str, bytes, dict[str, bytes]], bytes]
"""``poison(chunk_id, good bytes, every good chunk by id)``: what the liar keeps on disk for that chunk."""


def flipped(chunk_id: str, good: bytes, _all: dict[str, bytes]) -> bytes:
    """Same size, every byte wrong."""
    return bytes(b ^ 0xFF for b in good)


def one_bit(chunk_id: str, good: bytes, _all: dict[str, bytes]) -> bytes:
    """Same size, a single bit flipped in the middle: the smallest possible lie."""
    middle = len(good) // 2
    return good[:middle] + bytes([good[middle] ^ 0x01]) + good[middle + 1 :]


def truncated(chunk_id: str, good: bytes, _all: dict[str, bytes]) -> bytes:
    """The first half only."""
    return good[: len(good) // 2]


def other_chunk(chunk_id: str, good: bytes, everything: dict[str, bytes]) -> bytes:
    """Genuine bytes, of another chunk of the same size (a swapped or replayed piece)."""
    same_size = sorted(i for i, data in everything.items() if len(data) == len(good) and i != chunk_id)
    return everything[same_size[0]] if same_size else flipped(chunk_id, good, everything)


def half_lies(chunk_id: str, good: bytes, everything: dict[str, bytes]) -> bytes:
    """Every other chunk right (so the liar looks useful), the rest wrong."""
    return good if int(chunk_id[-1], 16) % 2 else flipped(chunk_id, good, everything)


POISONS: dict[str, Poison] = {
    "flipped": flipped,
    "one-bit": one_bit,
    "truncated": truncated,
    "other-chunk": other_chunk,
    "half-lies": half_lies,
}


def hub_bytes(hub_root: Path, manifest: Manifest) -> dict[str, bytes]:
    return {chunk_id: (hub_root / "chunks" / chunk_relpath(chunk_id)).read_bytes() for chunk_id in manifest.piece_ids}


@asynccontextmanager
async def open_liar(
    manifest: Manifest, good: dict[str, bytes], directory: Path, poison: Poison, *, upload_bps: int = 0
) -> AsyncIterator[tuple[str, int, Any]]:
    """A libtorrent session that says it has every piece of ``manifest`` but keeps poisoned files.

    Yields (ip, port, handle)."""
    for chunk_id, data in good.items():
        path = directory / "chunks" / chunk_relpath(chunk_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(poison(chunk_id, data, good))
    ip = address()
    settings = SwarmSettings(
        listen=f"{ip}:0",
        profile="seed",
        utp=False,
        dht=False,
        lsd=False,
        upload_rate_bps=upload_bps,
        limit_local_peers=bool(upload_bps),
    )
    async with bare_torrent(manifest, settings, directory, have_all=True) as (session, handle):
        yield ip, int(session.listen_port()), handle


def lying_config(tmp: Path, url: str, name: str) -> Any:
    # Short fallbacks: once the liar is banned nobody has the chunks, and the hub takes them at once.
    return agent_config(
        tmp,
        url,
        name=name,
        fetch={
            "discovery_grace_s": 2.0,
            "hot_deadline_s": 1.0,
            "owner_stall_s": 1.0,
            "peer_floor_window_s": 2.0,
            "peer_wait_s": 1.0,
        },
    )


async def assert_nothing_wrong_served(agent: Agent, manifest: Manifest) -> int:
    """Every cached chunk verifies; every chunk of the manifest, read through the API, verifies. Returns the count."""
    checked = 0
    for entry in await trio.to_thread.run_sync(agent.cache.entries):
        data = agent.cache.get(entry.chunk_id)
        assert blake2b_verifier(entry.chunk_id, data), (entry.chunk_id, damaged_blocks(agent, entry.chunk_id, data))
        checked += 1
    host = agent.config.api.listen.rsplit(":", 1)[0]
    async with httpx.AsyncClient(base_url=f"http://{host}:{agent.api_port}", timeout=30) as http:
        for chunk_id in manifest.piece_ids:
            answer = await http.get(f"/chunks/{chunk_id}")
            assert answer.status_code == 200, (chunk_id, answer.text)
            assert blake2b_verifier(chunk_id, answer.content), chunk_id
            checked += 1
    report = await trio.to_thread.run_sync(lambda: agent.cache.reconcile(full=True))
    assert (report.corrupt, report.dropped_rows) == (0, 0), report
    return checked


def damaged_blocks(agent: Agent, chunk_id: str, data: bytes) -> list[int]:
    """Which 16 KiB blocks of ``data`` differ from the hub's copy (for the failure message)."""
    good = (Path(agent.config.agent.cache_dir).parent / "hub" / "chunks" / chunk_relpath(chunk_id)).read_bytes()
    return [
        i // BLOCK for i in range(0, max(len(good), len(data)), BLOCK) if good[i : i + BLOCK] != data[i : i + BLOCK]
    ]


async def fetch_beside(victim: Agent, image: Image, *peers: tuple[str, int]) -> Job:
    """Start ``victim`` fetching ``image``, connect its torrent to ``peers``, and return the job once it is done."""
    job = await victim.fetch(str(image.path))
    assert image.manifest.infohash is not None
    assert victim.swarm is not None
    torrent = victim.swarm.torrents[image.manifest.infohash]
    for ip, port in peers:
        torrent.connect(ip, port)
    with trio.fail_after(DEADLINE):
        await job.done.wait()
    assert job.state == "done", job.error
    return job


def banned(agent: Agent, ip: str) -> bool:
    return agent.stats.peers_banned > 0 or (agent.swarm is not None and ip in agent.swarm.blocked)


async def test_a_liar_is_refused_for_a_while_not_banned_again_every_second_and_leaves_no_stray_files(
    tmp_path: Path,
) -> None:
    """The only peer lies and the hub is gone: the job ends with a clear error, the liar is refused by address (a
    reconnect from a new port is not a fresh peer), and the half-written chunk files are removed."""
    image = make_image(tmp_path, mib=1, seed=6)
    manifest = image.manifest
    good = hub_bytes(tmp_path / "hub", manifest)
    config = agent_config(
        tmp_path,
        "http://127.0.0.1:1/",
        name="victim",
        fetch={"discovery_grace_s": 0.5, "give_up_s": 6.0, "hot_deadline_s": 0.5, "owner_stall_s": 1.0},
    )
    async with (
        open_liar(manifest, good, tmp_path / "liar", flipped) as (liar_ip, liar_port, _),
        agents([config]) as (victim,),
    ):
        job = await victim.fetch(str(image.path))
        assert victim.swarm is not None
        victim.swarm.torrents[manifest.infohash or ""].connect(liar_ip, liar_port)
        with trio.fail_after(DEADLINE):
            await job.done.wait()
        assert job.state == "failed"
        assert "cannot be fetched" in job.error
        assert liar_ip in victim.swarm.blocked
        assert 1 <= victim.stats.peers_banned <= 2, "banned once, then refused: no ban every second"
        await trio.sleep(3.0)  # the sweep after a failed job runs twice, 2 s apart
        indexed = {entry.chunk_id for entry in victim.cache.entries()}
        on_disk = {path.name for path in victim.cache.chunk_dir.rglob("*") if path.is_file()}
        assert on_disk == indexed, "no stray chunk file is left behind"


@pytest.mark.parametrize("poison", list(POISONS), ids=list(POISONS))
async def test_a_lying_peer_never_poisons_the_cache_and_is_banned(tmp_path: Path, poison: str) -> None:
    image = make_image(tmp_path, mib=1.5, seed=3)
    manifest = image.manifest
    good = hub_bytes(tmp_path / "hub", manifest)
    async with (
        open_hub_server(tmp_path / "hub") as (hub, url),
        open_liar(manifest, good, tmp_path / "liar", POISONS[poison]) as (liar_ip, liar_port, _),
        agents([lying_config(tmp_path, url, "victim")]) as (victim,),
    ):
        await fetch_beside(victim, image, (liar_ip, liar_port))
        checked = await assert_nothing_wrong_served(victim, manifest)
        assert checked >= 2 * len(manifest.piece_ids)
        if poison != "truncated":  # a liar whose files are short cannot read them: it sends nothing at all
            assert victim.stats.corrupt_from_peers > 0
            assert banned(victim, liar_ip)
    assert hub.stats.total_bytes >= 1  # the hub made up for the liar


async def test_with_an_honest_peer_too_the_liar_loses_and_the_honest_peer_serves(tmp_path: Path) -> None:
    image = make_image(tmp_path, mib=2, seed=4)
    manifest = image.manifest
    good = hub_bytes(tmp_path / "hub", manifest)
    async with (
        open_hub_server(tmp_path / "hub") as (hub, url),
        open_liar(manifest, good, tmp_path / "liar", flipped) as (liar_ip, liar_port, _),
        agents([lying_config(tmp_path, url, "honest"), lying_config(tmp_path, url, "victim")]) as (honest, victim),
    ):
        first = await honest.fetch(str(image.path))
        with trio.fail_after(DEADLINE):
            await first.done.wait()
        assert first.state == "done"
        hub.stats.reset()
        assert honest.swarm is not None
        await fetch_beside(victim, image, (liar_ip, liar_port), (honest.swarm.settings.host, honest.swarm.listen_port))
        await assert_nothing_wrong_served(victim, manifest)
        assert victim.stats.chunks_from_peers > 0
        assert victim.stats.corrupt_from_peers > 0
        assert banned(victim, liar_ip)


async def test_many_chunks_from_a_random_liar(tmp_path: Path) -> None:
    """A bigger image, each chunk poisoned by a different trick chosen at random (seeded)."""
    rng = random.Random(11)
    image = make_image(tmp_path, mib=4, seed=5)
    manifest = image.manifest
    good = hub_bytes(tmp_path / "hub", manifest)
    tricks = [flipped, one_bit, other_chunk]
    choice = {chunk_id: rng.choice(tricks) for chunk_id in manifest.piece_ids}

    def mixed(chunk_id: str, data: bytes, everything: dict[str, bytes]) -> bytes:
        return choice[chunk_id](chunk_id, data, everything)

    async with (
        open_hub_server(tmp_path / "hub") as (_, url),
        open_liar(manifest, good, tmp_path / "liar", mixed) as (liar_ip, liar_port, _),
        agents([lying_config(tmp_path, url, "victim")]) as (victim,),
    ):
        await fetch_beside(victim, image, (liar_ip, liar_port))
        assert len(manifest.piece_ids) >= 60
        await assert_nothing_wrong_served(victim, manifest)
        assert victim.stats.corrupt_from_peers > 0
        assert banned(victim, liar_ip)


@pytest.mark.parametrize("poison", ["flipped", "half-lies"])
async def test_a_slow_liar_racing_the_hub_for_the_same_pieces(tmp_path: Path, poison: str) -> None:
    """The liar trickles bytes, so peers are "too slow" and the hub is asked for pieces the liar is halfway through
    sending: the hub's copy lands in the cache while libtorrent still holds the liar's blocks of that piece."""
    image = make_image(tmp_path, mib=1, seed=6)
    manifest = image.manifest
    good = hub_bytes(tmp_path / "hub", manifest)
    config = lying_config(tmp_path, "", "victim")
    async with (
        open_hub_server(tmp_path / "hub", latency_ms=30) as (_, url),
        open_liar(manifest, good, tmp_path / "liar", POISONS[poison], upload_bps=48 * 1024) as (liar_ip, port, _),
        agents([config.replace(agent={"hub": url}, fetch={"peer_floor_window_s": 0.5, "hub_slots": 2})]) as (victim,),
    ):
        job = await fetch_beside(victim, image, (liar_ip, port))
        await assert_nothing_wrong_served(victim, manifest)
        assert job.report is not None
        assert job.report.hub_reasons["PEERS_TOO_SLOW"] > 0, job.report.hub_reasons


def test_cache_verify_drops_a_chunk_whose_file_was_scribbled_on(tmp_path: Path) -> None:
    """What the agent needs on a hash failure: libtorrent may have written a liar's block over a cached chunk."""
    from p2pchunks.cache.store import ChunkCache
    from p2pchunks.errors import ChunkNotFound
    from p2pchunks.ids import chunk_id_of

    removed: list[str] = []
    with ChunkCache(tmp_path / "cache", budget_bytes=2**30, fsync=False) as cache:
        cache.add_evict_listener(removed.extend)
        data = [random.Random(i).randbytes(3 * BLOCK) for i in range(3)]
        ids = [chunk_id_of(d) for d in data]
        for chunk_id, blob in zip(ids, data, strict=True):
            cache.put(chunk_id, blob)
        with cache.path_for(ids[0]).open("r+b") as file:  # same size, one block replaced in place
            file.seek(BLOCK)
            file.write(b"\xaa" * BLOCK)
        cache.path_for(ids[1]).write_bytes(data[1][:BLOCK])  # truncated
        assert cache.locate(ids[0])[1] == 3 * BLOCK  # a size check alone does not see it
        assert [cache.verify(chunk_id) for chunk_id in ids] == [False, False, True]
        assert removed == ids[:2]
        for chunk_id in ids[:2]:
            assert not cache.has(chunk_id)
            assert not cache.path_for(chunk_id).exists()
        with pytest.raises(ChunkNotFound):
            cache.verify(ids[0])
        assert cache.get(ids[2]) == data[2]


def test_a_pair_that_lost_both_links_to_a_simultaneous_open_retries_by_the_job_s_next_look_after_the_grace() -> None:
    """Farm-mates hear each other's LSD announce at the same instant and connect both ways. With equal listen ports
    (6881 on every node) libtorrent keeps one of the two connections by a coin flip on each side, so half the time
    both die, and libtorrent's default wait before dialling that peer again is a minute: the pair would split the
    hub's work as if alone. libtorrent counts this wait in whole seconds, so 1 s is the least that still waits at
    all: the pair meets again by the job's first look at its peers after the discovery grace. (Loopback cannot stage
    the collision reliably; the netns farm-deploy test shows it.)"""
    from p2pchunks.agent.fetchjob import PEERS_EVERY_S
    from p2pchunks.policy.fetch import FetchParams

    next_look = FetchParams().discovery_grace_s + PEERS_EVERY_S
    for profile in ("node", "seed"):
        pack = session_settings(SwarmSettings(profile=profile))  # type: ignore[arg-type]
        assert pack["min_reconnect_time"] <= next_look
        assert lt.default_settings()["min_reconnect_time"] > next_look  # what we override
