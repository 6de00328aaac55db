"""The fetch policy, as tables of cases: no sockets, no libtorrent, no clock."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from p2pchunks.policy.fetch import (
    FetchParams,
    HubPick,
    Reason,
    StallTracker,
    View,
    Wanted,
    fetch_order,
    owner_of,
    pick_hub_chunks,
)

PARAMS = FetchParams(discovery_grace_s=1.0, hot_deadline_s=3.0, peer_floor_window_s=10.0, hub_slots=4)
ME, A, B = "10.0.0.1", "10.0.0.2", "10.0.0.3"


def chunk_owned_by(owner: str, candidates: frozenset[str], start: int = 0) -> str:
    """The first chunk id (a decimal string) that ``owner`` owns among ``candidates``."""
    for n in itertools.count(start):
        if owner_of(str(n), candidates) == owner:
            return str(n)
    raise AssertionError("unreachable")


def wanted(chunk_id: str, candidates: frozenset[str], *, rank: int = 0, hot: bool = False, avail: int = 0) -> Wanted:
    return Wanted(chunk_id, rank, hot, avail, owner_of(chunk_id, candidates))


TRIO = frozenset({ME, A, B})
MINE = chunk_owned_by(ME, TRIO)
THEIRS = chunk_owned_by(A, TRIO)

# (label, wanted chunk, view, expected reason or None)
CASES: list[tuple[str, Wanted, View, Reason | None]] = [
    ("alone, nobody has it", wanted("x", frozenset({ME})), View(ME, frozenset({ME}), 2.0), Reason.ALONE),
    ("during discovery grace", wanted("x", frozenset({ME})), View(ME, frozenset({ME}), 0.5), None),
    ("ours by rendezvous", wanted(MINE, TRIO), View(ME, TRIO, 2.0), Reason.OWNED),
    ("theirs: wait for the owner", wanted(THEIRS, TRIO), View(ME, TRIO, 2.0), None),
    ("theirs, owner stalled", wanted(THEIRS, TRIO), View(ME, TRIO, 2.0, stalled=frozenset({A})), Reason.OWNER_STALLED),
    ("theirs, hot, before deadline", wanted(THEIRS, TRIO, hot=True), View(ME, TRIO, 2.0), None),
    ("theirs, hot, past deadline", wanted(THEIRS, TRIO, hot=True), View(ME, TRIO, 4.5), Reason.HOT_DEADLINE),
    ("theirs, hot, deadline counts after grace", wanted(THEIRS, TRIO, hot=True), View(ME, TRIO, 3.5), None),
    ("a peer has it", wanted(MINE, TRIO, avail=1), View(ME, TRIO, 5.0), None),
    ("a peer has it, hot, late: peers serve it", wanted(MINE, TRIO, avail=2, hot=True), View(ME, TRIO, 9.0), None),
    (
        "a peer has it, peers slow",
        wanted(MINE, TRIO, avail=1),
        View(ME, TRIO, 20.0, slow_for_s=11.0),
        Reason.PEERS_TOO_SLOW,
    ),
    ("a peer has it, slow not long", wanted(MINE, TRIO, avail=1), View(ME, TRIO, 20.0, slow_for_s=3.0), None),
    ("already at the hub", wanted(MINE, TRIO), View(ME, TRIO, 2.0, hub_inflight=frozenset({MINE})), None),
    ("ours, but the peer set just changed", wanted(MINE, TRIO), View(ME, TRIO, 2.0, stable_for_s=0.1), None),
    ("ours, peer set settled", wanted(MINE, TRIO), View(ME, TRIO, 2.0, stable_for_s=0.6), Reason.OWNED),
    # a tracker counts a seed: a chunk no connected peer has is still held (maybe beyond our NAT router)
    ("seeded: ours, but wait for peers", wanted(MINE, TRIO), View(ME, TRIO, 2.0, seeded=True), None),
    (
        "seeded and alone: wait for peers",
        wanted("x", frozenset({ME})),
        View(ME, frozenset({ME}), 2.0, seeded=True),
        None,
    ),
    (
        "seeded, hot, past deadline",
        wanted(MINE, TRIO, hot=True),
        View(ME, TRIO, 4.5, seeded=True),
        Reason.HOT_DEADLINE,
    ),
    (
        "seeded, peers slow",
        wanted(MINE, TRIO),
        View(ME, TRIO, 20.0, slow_for_s=11.0, seeded=True),
        Reason.PEERS_TOO_SLOW,
    ),
    # a seed takes from the hub what no connected peer has, alone, whoever owns it
    ("a seed: theirs, nobody has it", wanted(THEIRS, TRIO), View(ME, TRIO, 2.0, seed=True), Reason.SEEDING),
    (
        "a seed counted by its tracker",
        wanted(THEIRS, TRIO),
        View(ME, TRIO, 2.0, seed=True, seeded=True),
        Reason.SEEDING,
    ),
    ("a seed: a peer has it", wanted(THEIRS, TRIO, avail=1), View(ME, TRIO, 2.0, seed=True), None),
    ("a seed, during discovery grace", wanted(THEIRS, TRIO), View(ME, TRIO, 0.5, seed=True), None),
]


@pytest.mark.parametrize(("label", "chunk", "view", "expected"), CASES, ids=[c[0] for c in CASES])
def test_one_chunk(label: str, chunk: Wanted, view: View, expected: Reason | None) -> None:
    picks = pick_hub_chunks([chunk], view, PARAMS)
    assert picks == ([] if expected is None else [HubPick(chunk.chunk_id, expected)]), label


def test_owner_left_the_swarm_loses_its_share() -> None:
    chunk = wanted(THEIRS, TRIO)  # computed while A was there
    view = View(ME, frozenset({ME, B}), 2.0)  # A is gone
    assert pick_hub_chunks([chunk], view, PARAMS) == [HubPick(THEIRS, Reason.OWNER_STALLED)]


def test_hub_slots_bound_the_picks_and_keep_fetch_order() -> None:
    chunks = [wanted(str(n), frozenset({ME}), rank=10 - n) for n in range(10)]
    picks = pick_hub_chunks(chunks, View(ME, frozenset({ME}), 2.0, hub_inflight=frozenset({"9"})), PARAMS)
    assert [p.chunk_id for p in picks] == ["8", "7", "6"]  # 4 slots, one in flight; lowest rank first


def test_rendezvous_splits_work_evenly_and_each_chunk_has_one_owner() -> None:
    candidates = frozenset(f"10.0.0.{i}" for i in range(1, 9))
    owners = Counter(owner_of(f"chunk{n}", candidates) for n in range(8000))
    assert set(owners) == candidates
    assert min(owners.values()) > 800  # 1000 each on average
    views = [View(me, candidates, 2.0) for me in sorted(candidates)]
    for n in range(200):
        chunk = wanted(f"chunk{n}", candidates)
        takers = [v.me for v in views if pick_hub_chunks([chunk], v, PARAMS)]
        assert takers == [chunk.owner]  # exactly one node of the farm asks the hub


def test_rendezvous_moves_only_the_leavers_chunks() -> None:
    before = frozenset({"a", "b", "c", "d"})
    after = before - {"c"}
    for n in range(500):
        old, new = owner_of(str(n), before), owner_of(str(n), after)
        assert old == new or old == "c"


def test_fetch_order_puts_hot_first_without_duplicates() -> None:
    assert fetch_order(["c", "a"], ["a", "b", "c", "b", "d"]) == ["c", "a", "b", "d"]


def test_stall_tracker() -> None:
    tracker = StallTracker(stall_s=5.0)
    assert tracker.update({A: 1, B: 1}, now=0.0) == frozenset()
    assert tracker.update({A: 2, B: 1}, now=4.0) == frozenset()
    assert tracker.update({A: 2, B: 1}, now=6.0) == frozenset({B})
    assert tracker.update({A: 2, B: 3}, now=9.5) == frozenset({A})
    assert tracker.update({B: 3}, now=20.0) == frozenset({B})  # A left: forgotten
