"""The fetch job driven against a fake torrent and a scripted hub on trio's mock clock: no sockets, no libtorrent."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing

from p2pchunks.agent.arrivals import Arrival, Arrivals, Source
from p2pchunks.agent.fetchjob import FetchJob
from p2pchunks.errors import ChunkNotFound, HubUnavailable, JobFailed
from p2pchunks.formats.manifest import ChunkRef, FileEntry, Manifest, build_manifest
from p2pchunks.ids import chunk_id_of, chunk_relpath
from p2pchunks.policy.fetch import FetchParams, owner_of
from p2pchunks.policy.retry import HubRetries
from p2pchunks.swarm.torrent import NORMAL, TOP

SIZE = 1000
ME = "10.0.0.1"


def data_of(n: int) -> bytes:
    return n.to_bytes(4, "big") * (SIZE // 4)


_MANIFESTS: dict[tuple[int, int], Manifest] = {}


def manifest(chunks: int, hot: int = 0) -> Manifest:
    """A real manifest of ``chunks`` distinct chunks of SIZE bytes, the first ``hot`` of them hot."""
    key = (chunks, hot)
    if key not in _MANIFESTS:
        with tempfile.TemporaryDirectory() as tmp:
            refs = []
            for n in range(chunks):
                chunk_id = chunk_id_of(data_of(n))
                path = Path(tmp, "chunks", chunk_relpath(chunk_id))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data_of(n))
                refs.append(ChunkRef(chunk_id, SIZE))
            files = (FileEntry("disk", SIZE * chunks, 0o644, tuple(refs)),)
            _MANIFESTS[key] = build_manifest(
                "img", "1", files, directory=Path(tmp), chunk_size=SIZE, hot=[r.id for r in refs[:hot]]
            )
    return _MANIFESTS[key]


@dataclass(frozen=True)
class Peer:
    ip: str
    seed: bool = False
    pieces: int = 0


@dataclass
class FakeTorrent:
    manifest: Manifest
    peers_now: list[Peer] = field(default_factory=list)
    held_by_peers: set[str] = field(default_factory=set)
    pushed: list[list[int]] = field(default_factory=list)
    tracker_counts_a_seed: bool = False

    def piece_of(self, chunk_id: str) -> int:
        return self.manifest.chunk_ids.index(chunk_id)

    @property
    def pieces(self) -> int:
        return len(self.manifest.chunk_ids)

    def peers(self) -> Sequence[Peer]:
        return list(self.peers_now)

    def availability(self) -> list[int]:
        return [1 if c in self.held_by_peers else 0 for c in self.manifest.chunk_ids]

    def progress(self) -> tuple[list[bool], int, bool]:
        return [False] * self.pieces, 10**9, self.tracker_counts_a_seed

    def set_priorities(self, priorities: list[int]) -> None:
        self.pushed.append(list(priorities))


class ScriptedHub:
    """Serves every chunk after ``delay`` s; ``down_until``: HubUnavailable before that time; ``missing``: 404."""

    def __init__(self, delay: float = 0.1, down_until: float = 0.0, missing: Iterable[str] = ()) -> None:
        self.delay = delay
        self.down_until = down_until
        self.missing = set(missing)
        self.asked: list[tuple[float, str]] = []
        self.inflight = self.peak = 0

    async def get_chunk(self, chunk_id: str) -> bytes:
        self.asked.append((trio.current_time(), chunk_id))
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            await trio.sleep(self.delay)
            if chunk_id in self.missing:
                raise ChunkNotFound(chunk_id, "hub: 404")
            if trio.current_time() < self.down_until:
                raise HubUnavailable("hub: connection refused")
            return b"x" * SIZE
        finally:
            self.inflight -= 1


def job_for(m: Manifest, hub: ScriptedHub, torrent: FakeTorrent | None, arrivals: Arrivals, **kw: object) -> FetchJob:
    held: set[str] = set()

    async def missing(ids: Sequence[str]) -> list[str]:
        return [c for c in ids if c not in held]

    async def deliver(chunk_id: str, data: bytes, source: Source) -> None:
        held.add(chunk_id)
        arrivals.arrived(Arrival(chunk_id, source, len(data)))

    params = kw.pop("params", FetchParams(discovery_grace_s=0.0, hub_slots=4))
    return FetchJob(
        m, hub=hub, torrent=torrent, arrivals=arrivals, missing=missing, deliver=deliver, me=ME, params=params, **kw
    )  # type: ignore[arg-type]


async def test_alone_every_chunk_comes_from_the_hub_hot_first_within_the_slots(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = manifest(12, hot=3)
    hub, torrent, arrivals = ScriptedHub(), FakeTorrent(m), Arrivals()
    report = await job_for(m, hub, torrent, arrivals).run()
    assert report.from_hub == 12
    assert report.done == 12
    assert set(m.hot) <= {c for _, c in hub.asked[:4]}  # the first batch (4 slots): picked in rank order
    assert set(m.hot) <= set(report.arrival_order[:4])
    assert hub.peak <= 4
    assert report.hub_reasons == {"ALONE": 12}
    hot_phase, rest, end = torrent.pushed[0], torrent.pushed[-2], torrent.pushed[-1]
    assert hot_phase == [TOP] * 3 + [0] * 9  # until the hot chunks are in, peers are asked for nothing else
    assert rest == [TOP] * 3 + [NORMAL] * 9
    assert end == [0] * 12  # at its end the job wants nothing: an evicted piece is not fetched again


async def test_a_chunk_a_peer_holds_is_left_to_the_peer(autojump_clock: trio.testing.MockClock) -> None:
    m = manifest(4)
    peer = Peer("10.0.0.9", seed=True, pieces=4)
    torrent = FakeTorrent(m, peers_now=[peer], held_by_peers={m.chunk_ids[0]})
    hub, arrivals = ScriptedHub(), Arrivals()
    job = job_for(m, hub, torrent, arrivals)

    async def peer_delivers() -> None:
        await trio.sleep(2.0)
        arrivals.arrived(Arrival(m.chunk_ids[0], Source.PEERS, SIZE))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer_delivers)
        report = await job.run()
    assert m.chunk_ids[0] not in {c for _, c in hub.asked}
    assert (report.from_peers, report.from_hub) == (1, 3)


async def test_an_owner_that_disconnects_loses_its_share_at_once(autojump_clock: trio.testing.MockClock) -> None:
    m = manifest(60)
    leaver, stayer = Peer("10.0.0.2"), Peer("10.0.0.3")
    trio_of, pair = {ME, leaver.ip, stayer.ip}, {ME, stayer.ip}
    # the stayer fetches its own share (the fake shows it held by a peer); the leaver never delivers
    torrent = FakeTorrent(m, peers_now=[leaver, stayer], held_by_peers={
        c for c in m.chunk_ids if owner_of(c, trio_of) == stayer.ip
    })  # fmt: skip
    now_mine = [c for c in m.chunk_ids if owner_of(c, trio_of) == leaver.ip and owner_of(c, pair) == ME]
    params = FetchParams(discovery_grace_s=0.0, hub_slots=60, settle_s=0.5, owner_stall_s=30.0)
    hub, arrivals = ScriptedHub(delay=0.05), Arrivals()
    job = job_for(m, hub, torrent, arrivals, params=params)

    async def peer_leaves() -> None:
        await trio.sleep(3.0)
        torrent.peers_now = [stayer]
        torrent.held_by_peers |= {c for c in m.chunk_ids if owner_of(c, pair) == stayer.ip}

    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer_leaves)
        with trio.move_on_after(20.0):
            await job.run()
        nursery.cancel_scope.cancel()
    asked = {c: t for t, c in hub.asked}
    assert now_mine, "the rendezvous gives this node some of the leaver's chunks"
    assert all(c in asked for c in now_mine)
    assert min(asked[c] for c in now_mine) >= 3.0
    assert min(asked[c] for c in now_mine) <= 3.0 + params.settle_s + 0.3, "within a tick of settling, no timeout"


async def test_a_chunk_nobody_has_fails_the_job_naming_it_after_the_give_up_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = manifest(3)
    hub, arrivals = ScriptedHub(down_until=10**9), Arrivals()
    job = job_for(m, hub, None, arrivals, retries=HubRetries(give_up_s=20.0))
    start = trio.current_time()
    with pytest.raises(JobFailed) as failed:
        await job.run()
    took = trio.current_time() - start
    assert 20.0 <= took <= 22.0
    assert set(failed.value.missing) == set(m.chunk_ids)
    assert "hub failed" in str(failed.value)
    assert m.chunk_ids[0] in str(failed.value)
    asks = sorted(t for t, c in hub.asked if c == m.chunk_ids[0])
    assert max(b - a for a, b in itertools.pairwise(asks)) <= 1.0 + 0.2  # backoff never above ~1 s


async def test_a_chunk_the_hub_does_not_have_fails_the_job_at_once(autojump_clock: trio.testing.MockClock) -> None:
    m = manifest(3)
    hub, arrivals = ScriptedHub(missing={manifest(3).chunk_ids[1]}), Arrivals()
    start = trio.current_time()
    with pytest.raises(JobFailed, match="has no such chunk") as failed:
        await job_for(m, hub, None, arrivals).run()
    assert m.chunk_ids[1] in failed.value.missing
    assert f"{m.chunk_ids[1]}: the hub has no such chunk" in str(failed.value)
    assert trio.current_time() - start < 1.0
    assert sum(1 for _, c in hub.asked if c == m.chunk_ids[1]) == 1  # a definitive answer is not asked again


async def test_after_an_outage_the_hub_is_asked_again_within_a_second(autojump_clock: trio.testing.MockClock) -> None:
    m = manifest(6)
    hub, arrivals = ScriptedHub(down_until=15.0), Arrivals()
    report = await job_for(m, hub, None, arrivals).run()
    assert report.done == 6
    first_after = min(t for t, _ in hub.asked if t >= 15.0)
    assert first_after - 15.0 <= 1.0


async def test_a_window_fetches_only_what_the_consumer_has_room_for(autojump_clock: trio.testing.MockClock) -> None:
    m = manifest(8)
    hub, torrent, arrivals = ScriptedHub(), FakeTorrent(m), Arrivals()
    protected: list[str] = []
    released: list[str] = []
    job = job_for(m, hub, torrent, arrivals, window_bytes=2 * SIZE, protect=protected.extend, release=released.extend)

    async def consumer() -> None:
        with arrivals.subscribe() as seen:
            async for arrival in seen:
                assert len({c for _, c in hub.asked}) <= len(set(released)) + 2
                await trio.sleep(1.0)  # a slow reader
                job.consumed(arrival.chunk_id)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        report = await job.run()
        nursery.cancel_scope.cancel()
    assert report.done == 8
    rank = {c: i for i, c in enumerate(m.chunk_ids)}
    assert sorted(rank[c] for _, c in hub.asked) == list(range(8))  # each once
    assert all(rank[c] < 2 + n for n, (_, c) in enumerate(hub.asked))  # in order, as room frees up
    assert sorted(protected) == sorted(released) == sorted(m.chunk_ids)  # every protection released
    assert all(sum(p) <= 2 * NORMAL for p in torrent.pushed)  # libtorrent never wants more than the window


async def test_a_job_over_a_subset_fetches_orders_and_reports_only_those(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = manifest(12, hot=3)
    only = {m.chunk_ids[1], *m.chunk_ids[5:9]}  # one hot chunk and four others
    hub, torrent, arrivals = ScriptedHub(), FakeTorrent(m), Arrivals()
    report = await job_for(m, hub, torrent, arrivals, only=only).run()
    assert {c for _, c in hub.asked} == only
    assert len(hub.asked) == len(only)  # each once
    assert (report.chunks, report.done, report.image_bytes) == (5, 5, 5 * SIZE)
    asked_at = {c: t for t, c in hub.asked}
    assert asked_at[m.chunk_ids[1]] == min(asked_at.values())  # the hot one in the first batch (fetch order)
    pieces = {torrent.piece_of(c) for c in only}
    for pushed in torrent.pushed:  # libtorrent is never asked for a chunk outside the subset
        assert {piece for piece, priority in enumerate(pushed) if priority} <= pieces
    assert [p for p, priority in enumerate(torrent.pushed[-2]) if priority] == sorted(pieces)


async def test_a_subset_job_widened_to_the_whole_image_fetches_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = manifest(10)
    only = set(m.chunk_ids[:3])
    hub, torrent, arrivals = ScriptedHub(delay=1.0), FakeTorrent(m), Arrivals()
    job = job_for(m, hub, torrent, arrivals, only=only)

    async def widen_later() -> None:
        await trio.sleep(0.5)
        assert job.widen(None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(widen_later)
        report = await job.run()
    assert {c for _, c in hub.asked} == set(m.chunk_ids)
    assert (report.chunks, report.done, report.image_bytes) == (10, 10, 10 * SIZE)
    assert sum(1 for priority in torrent.pushed[-2] if priority) == 10
    assert not job.widen({m.chunk_ids[0]})  # an ended job takes nothing more: the caller starts another


async def test_a_streaming_job_widened_after_some_chunks_were_consumed_fetches_the_earlier_ones_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = manifest(8)
    hub, torrent, arrivals = ScriptedHub(), FakeTorrent(m), Arrivals()
    protected: list[str] = []
    released: list[str] = []
    job = job_for(
        m, hub, torrent, arrivals,
        window_bytes=2 * SIZE, only=m.chunk_ids[2:], protect=protected.extend, release=released.extend,
    )  # fmt: skip

    async def consumer() -> None:
        with arrivals.subscribe() as seen:
            async for arrival in seen:
                await trio.sleep(1.0)  # a slow reader
                job.consumed(arrival.chunk_id)

    async def widen_later() -> None:
        await trio.sleep(2.5)  # the subset's first two chunks are written out by then, not its last two
        assert job.widen(None)

    with trio.fail_after(60.0):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            nursery.start_soon(widen_later)
            report = await job.run()
            nursery.cancel_scope.cancel()
    assert {c for _, c in hub.asked[:2]} == set(m.chunk_ids[2:4])
    assert sorted(c for _, c in hub.asked) == sorted(m.chunk_ids)  # each once: those before the widening too
    assert (report.chunks, report.done) == (8, 8)
    assert sorted(protected) == sorted(released) == sorted(m.chunk_ids)
