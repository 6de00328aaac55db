"""The farm view against fake torrents on trio's mock clock: who is a farm-mate, members held after they leave,
replica counts from farm-mates' bitfields, official chunks without a torrent, the histogram."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from p2pchunks.agent.farm import FarmView
from p2pchunks.formats.manifest import Manifest
from p2pchunks.policy.custody import assigned_copies
from p2pchunks.policy.eviction import FarmHints
from p2pchunks.swarm.addresses import on_local_network

from .test_fetchjob import manifest

ME = "10.0.0.1"


@dataclass
class FakeTorrent:
    manifest: Manifest
    bitfields: dict[str, list[bool]] = field(default_factory=dict)
    """Each connected peer's pieces."""

    def peer_pieces(self) -> list[tuple[str, list[bool]]]:
        return list(self.bitfields.items())


@pytest.mark.parametrize(
    ("ip", "local"),
    [
        ("10.1.2.3", True), ("172.16.0.9", True), ("172.32.0.1", False), ("192.168.1.7", True),
        ("127.0.0.12", True), ("169.254.3.4", True), ("8.8.8.8", False), ("100.64.0.1", False),
        ("fd12::1", True), ("fe80::1", True), ("::1", True), ("2001:db8::1", False),
        ("::ffff:192.168.1.2", True), ("::ffff:8.8.8.8", False), ("not-an-ip", False),
    ],
)  # fmt: skip
def test_a_farm_mate_is_a_peer_on_the_local_network(ip: str, local: bool) -> None:
    assert on_local_network(ip) is local


def view(torrents: list[FakeTorrent], official: list[Manifest], held: set[str], hints: FarmHints) -> FarmView:
    async def cached(ids: Sequence[str]) -> set[str]:
        return held & set(ids)

    return FarmView(
        torrents=lambda: torrents,
        official=lambda: official,
        held=cached,
        me=lambda: ME,
        hints=hints,
        hold_s=60.0,
        copies=2,
        refresh_s=1.0,
    )


async def test_members_replicas_and_the_histogram(autojump_clock: trio.testing.MockClock) -> None:
    m, other = manifest(6), manifest(4, hot=1)
    n = len(m.piece_ids)
    mate, stranger = "10.0.0.2", "8.8.4.4"
    official = FakeTorrent(m, {mate: [True, True, False, False, False, False], "10.0.0.3": [True] + [False] * 5})
    hints = FarmHints()
    farm = view([official], [m], held={m.piece_ids[1]}, hints=hints)
    await farm.refresh()
    assert farm.members() == {ME, mate, "10.0.0.3"}
    assert hints.replicas == {m.piece_ids[0]: 2, m.piece_ids[1]: 1}  # the farm-mates' bitfields
    assert farm.histogram == {"0": n - 2, "1": 0, "2": 2, "3+": 0}  # piece 1: a farm-mate and this node
    # a stranger (not on the LAN) with everything: not a member, not counted (the farm-mates' bitfields are)
    official.bitfields[stranger] = [True] * n
    await farm.refresh()
    assert stranger not in farm.members()
    assert hints.replicas == {m.piece_ids[0]: 2, m.piece_ids[1]: 1}
    # a farm-mate that disconnects stays a member for hold_s, and its copies no longer count
    del official.bitfields["10.0.0.3"]
    await trio.sleep(30.0)
    await farm.refresh()
    assert farm.members() == {ME, mate, "10.0.0.3"}
    assert hints.replicas[m.piece_ids[0]] == 1
    await trio.sleep(31.0)
    await farm.refresh()
    assert farm.members() == {ME, mate}
    # an official image with no torrent: its replicas are the custody assignment's
    farm = view([official], [m, other], held=set(), hints=hints)
    await farm.refresh()
    for chunk_id in other.chunk_ids:
        assert hints.replicas[chunk_id] == assigned_copies(chunk_id, {ME, mate}, ME, 2)


async def test_a_change_of_members_wakes_who_waits_and_settling_waits_for_quiet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    m = manifest(3)
    torrent = FakeTorrent(m)
    farm = view([torrent], [m], held=set(), hints=FarmHints())
    await farm.refresh()
    alone = farm.members()
    woke: list[float] = []

    async def waiter() -> None:
        await farm.changed(alone)
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        nursery.start_soon(farm.run)
        await trio.sleep(2.5)
        start = trio.current_time()
        torrent.bitfields["10.0.0.7"] = [False] * len(m.piece_ids)
        members = await farm.settled(5.0)
        assert members == {ME, "10.0.0.7"}
        assert woke
        assert woke[0] - start <= farm.refresh_s  # seen at the next refresh
        assert trio.current_time() - woke[0] >= 5.0  # and then quiet for settle_s
        nursery.cancel_scope.cancel()
