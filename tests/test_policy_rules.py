"""The smaller policy rules as tables: hub retries and giving up, bans, the job's look at the swarm, on-demand reads."""

from __future__ import annotations

import pytest

from p2pchunks.policy.bans import BanBook
from p2pchunks.policy.fetch import FetchParams, OnDemand, View, Wanted, owner_of, plan_on_demand
from p2pchunks.policy.retry import HubRetries, describe_missing
from p2pchunks.policy.swarmview import PeerReading, SwarmReading, ViewKeeper

# ---- retries ----------------------------------------------------------------------------------------------------

# (failures so far, seconds since the last, ready?)
BACKOFF = [
    (1, 0.2, False),
    (1, 0.25, True),
    (2, 0.45, False),
    (2, 0.5, True),
    (3, 0.99, False),
    (3, 1.0, True),
    (8, 1.0, True),
]


@pytest.mark.parametrize(("failures", "since", "ready"), BACKOFF)
def test_backoff_doubles_from_a_quarter_second_and_never_exceeds_one(failures: int, since: float, ready: bool) -> None:
    retries = HubRetries()
    for n in range(failures):
        retries.failed("c", 100.0 + n * 0.001, "refused")
    last = 100.0 + (failures - 1) * 0.001
    assert retries.ready("c", last + since) is ready


def test_a_chunk_is_hopeless_only_when_no_peer_holds_it_and_the_budget_is_spent() -> None:
    retries = HubRetries(give_up_s=30.0)
    retries.failed("a", 0.0, "timeout")
    retries.failed("a", 29.0, "timeout")
    retries.failed("b", 0.0, "timeout")
    retries.failed("gone", 5.0, "404", definitive=True)
    nobody = {"a": False, "b": False, "gone": False}.__getitem__
    assert retries.hopeless(["a", "b", "gone", "fresh"], 29.9, nobody).keys() == {"gone"}
    assert retries.hopeless(["a", "b", "gone"], 30.0, nobody).keys() == {"a", "b", "gone"}
    assert retries.hopeless(["a", "b", "gone"], 100.0, lambda chunk: chunk == "a").keys() == {"b", "gone"}
    assert not retries.ready("gone", 10**6)  # the hub's definitive answer is not asked again
    retries.succeeded("a")
    assert retries.hopeless(["a"], 100.0, nobody) == {}
    why = retries.hopeless(["b"], 100.0, nobody)["b"]
    assert "failed 1 times in 100 s" in why
    assert "timeout" in why


def test_describe_missing_names_the_first_few() -> None:
    hopeless = {f"c{n}": "why" for n in range(7)}
    text = describe_missing(hopeless, most=3)
    assert text.startswith("7 chunks cannot be fetched")
    assert "c0: why" in text
    assert "c2: why" in text
    assert "c3" not in text
    assert "(and 4 more)" in text


# ---- bans -------------------------------------------------------------------------------------------------------


def test_a_ban_doubles_per_strike_expires_and_is_forgiven() -> None:
    bans = BanBook(first_s=60.0, max_s=300.0, forgive_s=1000.0)
    assert bans.strike("1.2.3.4", 0.0) == 60.0
    assert bans.refused(59.0) == {"1.2.3.4"}
    assert bans.next_change() == 60.0
    assert bans.refused(60.0) == frozenset()
    assert bans.next_change() is None
    assert bans.strike("1.2.3.4", 100.0) == 220.0  # second strike: 120 s
    assert bans.strike("1.2.3.4", 101.0) == 341.0  # third: 240 s
    assert bans.strike("1.2.3.4", 102.0) == 402.0  # capped at max_s
    assert bans.refused(401.0) == {"1.2.3.4"}
    assert bans.refused(402.0) == frozenset()
    assert bans.strike("1.2.3.4", 5000.0) == 5060.0  # forgiven after forgive_s: first strike again
    bans.strike("5.6.7.8", 5000.0)
    assert bans.refused(5001.0) == {"1.2.3.4", "5.6.7.8"}


# ---- the job's look at the swarm --------------------------------------------------------------------------------

PARAMS = FetchParams(owner_stall_s=5.0, peer_floor_bps=1000.0)
IDS = [f"chunk{n}" for n in range(6)]
RANK = {chunk: n for n, chunk in enumerate(IDS)}


def look(
    keeper: ViewKeeper, reading: SwarmReading | None, now: float, pending: list[str] = IDS
) -> tuple[View, list[Wanted]]:
    view, wanted = keeper.look(
        reading,
        pending,
        piece_of=IDS.index,
        rank=RANK,
        hot={"chunk0"},
        now=now,
        elapsed_s=now,
        hub_inflight=frozenset(),
    )
    return view, list(wanted)


def reading(
    *peers: PeerReading, held: tuple[int, ...] = (0,) * 6, have: tuple[bool, ...] = (False,) * 6, rate: int = 10**6
) -> SwarmReading:
    return SwarmReading(peers, held, have, rate)


def test_candidates_are_me_and_connected_non_seeds_and_leavers_go_at_once() -> None:
    keeper = ViewKeeper("me", PARAMS)
    view, _ = look(keeper, reading(PeerReading("a", False, 0), PeerReading("seed", True, 6)), 0.0)
    assert view.candidates == {"me", "a"}
    view, _ = look(keeper, reading(PeerReading("seed", True, 6)), 0.1)
    assert view.candidates == {"me"}
    assert view.stable_for_s == 0.0


def test_stalls_slowness_owners_and_what_libtorrent_already_has() -> None:
    keeper = ViewKeeper("me", PARAMS)
    a = PeerReading("a", False, 1)
    view, wanted = look(keeper, reading(a, held=(1, 0, 0, 0, 0, 0), rate=10), 0.0)
    assert view.stalled_for == {"a": 0.0}
    assert view.slow_for_s == 0.0
    view, wanted = look(keeper, reading(a, held=(1, 0, 0, 0, 0, 0), rate=10, have=(False, True) + (False,) * 4), 5.0)
    assert view.stalled_for == {"a": 5.0}  # no new piece for 5 s
    assert view.slow_for_s == 5.0  # a peer holds a wanted chunk, the rate is below the floor
    assert "chunk1" not in {w.chunk_id for w in wanted}  # libtorrent has it: on its way into the cache
    by_id = {w.chunk_id: w for w in wanted}
    assert by_id["chunk0"].availability == 1
    assert by_id["chunk0"].hot
    assert by_id["chunk2"].owner == owner_of("chunk2", {"me", "a"})
    view, _ = look(keeper, reading(PeerReading("a", False, 2), rate=10), 6.0)
    assert view.stalled_for == {"a": 0.0}
    assert view.slow_for_s == 0.0


def test_without_a_torrent_the_hub_is_alone() -> None:
    view, wanted = look(ViewKeeper("me", PARAMS), None, 1.0)
    assert view.candidates == {"me"}
    assert [w.availability for w in wanted] == [0] * 6


# ---- on-demand reads --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("held", "plan"), [(True, OnDemand(2.0, 2.0)), (False, OnDemand(0.0, 0.0))])
def test_on_demand_waits_for_peers_only_when_one_holds_the_chunk(held: bool, plan: OnDemand) -> None:
    assert plan_on_demand(held, 2.0) == plan
