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
    deadline_s,
    fetch_order,
    owner_of,
    pick_hub_chunks,
    rendezvous_order,
)

PARAMS = FetchParams(discovery_grace_s=1.0, hot_deadline_s=3.0, peer_floor_window_s=10.0, hub_slots=4)
ME, A, B = "10.0.0.1", "10.0.0.2", "10.0.0.3"


def chunk_owned_by(owner: str, candidates: frozenset[str], start: int = 0) -> str:
    """The first chunk id (a decimal string) that ``owner`` owns among ``candidates``."""
    for n in itertools.count(start):
        if owner_of(str(n), candidates) == owner:
            return str(n)
    raise AssertionError("unreachable")


def wanted(
    chunk_id: str, candidates: frozenset[str], *, rank: int = 0, hot: bool = False, avail: int = 0, me: str = ME
) -> Wanted:
    """The chunk as ``me`` sees it: its owner and ``me``'s place in its rendezvous order."""
    order = rendezvous_order(chunk_id, candidates)
    return Wanted(chunk_id, rank, hot, avail, order[0], order.index(me) if me in order else len(order))


TRIO = frozenset({ME, A, B})
MINE = chunk_owned_by(ME, TRIO)
THEIRS = chunk_owned_by(A, TRIO)

# (label, wanted chunk, view, expected reason or None)
CASES: list[tuple[str, Wanted, View, Reason | None]] = [
    ("alone, nobody has it", wanted("x", frozenset({ME})), View(ME, frozenset({ME}), 2.0), Reason.ALONE),
    ("during discovery grace", wanted("x", frozenset({ME})), View(ME, frozenset({ME}), 0.5), None),
    ("ours by rendezvous", wanted(MINE, TRIO), View(ME, TRIO, 2.0), Reason.OWNED),
    ("theirs: wait for the owner", wanted(THEIRS, TRIO), View(ME, TRIO, 2.0), None),
    ("theirs, owner stalled", wanted(THEIRS, TRIO), View(ME, TRIO, 20.0, stalled_for={A: 100.0}), Reason.OWNER_STALLED),
    (
        "theirs, owner 'idle' only since before the grace ended",
        wanted(THEIRS, TRIO),
        View(ME, TRIO, 2.0, stalled_for={A: 100.0}),
        None,
    ),
    ("theirs, owner idle, not yet my turn", wanted(THEIRS, TRIO), View(ME, TRIO, 9.0, stalled_for={A: 1.0}), None),
    ("theirs, hot, owner progressing", wanted(THEIRS, TRIO, hot=True), View(ME, TRIO, 2.0), None),
    (
        "theirs, hot, owner still receiving long after: not taken over",
        wanted(THEIRS, TRIO, hot=True),
        View(ME, TRIO, 60.0, stalled_for={A: 0.5}),
        None,
    ),
    (
        "theirs, hot, owner idle past my turn",
        wanted(THEIRS, TRIO, hot=True),
        View(ME, TRIO, 9.0, stalled_for={A: 6.5}),
        Reason.HOT_DEADLINE,
    ),
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
    ("seeded, hot, deadline counts after grace", wanted(MINE, TRIO, hot=True), View(ME, TRIO, 3.5, seeded=True), None),
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
    for n in range(200):
        takers = [
            me
            for me in sorted(candidates)
            if pick_hub_chunks([wanted(f"chunk{n}", candidates, me=me)], View(me, candidates, 2.0), PARAMS)
        ]
        assert takers == [owner_of(f"chunk{n}", candidates)]  # exactly one node of the farm asks the hub


FARM = frozenset(f"10.0.1.{i}" for i in range(1, 17))


@pytest.mark.parametrize("hot", [True, False])
@pytest.mark.parametrize("idle_deadlines", [0.5, 1.5, 2.5, 3.5])
def test_a_late_chunk_is_taken_over_down_its_rendezvous_order_one_node_per_deadline(
    hot: bool, idle_deadlines: float
) -> None:
    """16 nodes; the owner of each chunk has made no progress for ``idle_deadlines`` deadlines: besides the owner,
    exactly the nodes in places 1..floor(idle_deadlines) of the chunk's order take it (one more per deadline, never
    all at once)."""
    params = FetchParams(discovery_grace_s=1.0, hot_deadline_s=1.0, owner_stall_s=2.0, hub_slots=4)
    for n in range(50):
        chunk_id = f"chunk{n}"
        order = rendezvous_order(chunk_id, FARM)
        deadline = deadline_s(params, hot=hot, hub_time_s=None)
        idle = {order[0]: idle_deadlines * deadline}
        takers = [
            me for me in FARM - {order[0]}
            if pick_hub_chunks([wanted(chunk_id, FARM, hot=hot, me=me)], View(me, FARM, 30.0, stalled_for=idle), params)
        ]  # fmt: skip
        assert sorted(takers, key=order.index) == order[1 : 1 + int(idle_deadlines)]


def test_deadlines_follow_the_measured_hub_time() -> None:
    params = FetchParams(hot_deadline_s=1.0, owner_stall_s=2.0, hot_hub_factor=2.0, stall_hub_factor=4.0)
    assert deadline_s(params, hot=True, hub_time_s=None) == 1.0
    assert deadline_s(params, hot=False, hub_time_s=None) == 2.0
    assert deadline_s(params, hot=True, hub_time_s=0.2) == 1.0  # a fast hub: the floors
    assert deadline_s(params, hot=True, hub_time_s=3.0) == 6.0  # a hub the whole farm shares: slower deadlines
    assert deadline_s(params, hot=False, hub_time_s=3.0) == 12.0


def test_the_farm_window_keeps_a_queue_of_k_missing_chunks_in_fetch_order() -> None:
    """Chunks no peer holds, in fetch order: this node may start one of its own only while fewer than K (the farm
    window) chunks before it are missing; chunks some peer holds do not count and never wait."""
    farm = frozenset({ME, A})
    mine = [chunk_owned_by(ME, farm, start=100 * n) for n in range(6)]
    chunks = [wanted(c, farm, rank=n) for n, c in enumerate(mine)]
    view = View(ME, farm, 2.0, farm_window=3.0)
    assert [p.chunk_id for p in pick_hub_chunks(chunks, view, PARAMS)] == mine[:3]
    one_held = [wanted(c, farm, rank=n, avail=int(n == 1)) for n, c in enumerate(mine)]
    assert [p.chunk_id for p in pick_hub_chunks(one_held, view, PARAMS)] == [mine[0], mine[2], mine[3]]
    in_flight = View(ME, farm, 2.0, farm_window=3.0, hub_inflight=frozenset(mine[:2]))
    assert [p.chunk_id for p in pick_hub_chunks(chunks, in_flight, PARAMS)] == [mine[2]]


def test_rendezvous_moves_only_the_leavers_chunks() -> None:
    before = frozenset({"a", "b", "c", "d"})
    after = before - {"c"}
    for n in range(500):
        old, new = owner_of(str(n), before), owner_of(str(n), after)
        assert old == new or old == "c"


def test_fetch_order_puts_hot_first_without_duplicates() -> None:
    assert fetch_order(["c", "a"], ["a", "b", "c", "b", "d"]) == ["c", "a", "b", "d"]


def test_stall_tracker() -> None:
    tracker = StallTracker()
    assert tracker.update({A: 1, B: 1}, now=0.0) == {A: 0.0, B: 0.0}
    assert tracker.update({A: 2, B: 1}, now=4.0) == {A: 0.0, B: 4.0}
    assert tracker.update({A: 2, B: 1}, now=6.0) == {A: 2.0, B: 6.0}
    assert tracker.update({A: 2, B: 3}, now=9.5) == {A: 5.5, B: 0.0}
    assert tracker.update({B: 3}, now=20.0) == {B: 10.5}  # A left: forgotten
