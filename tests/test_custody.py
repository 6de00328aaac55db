"""Custody of the official images as pure functions: the split, the copies, joins and leaves, the share, members."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable

import pytest

from p2pchunks.policy.custody import (
    CustodyImage,
    Membership,
    assigned_copies,
    custodians,
    histogram,
    plan_custody,
)
from p2pchunks.policy.fetch import owner_of

FARM = [f"10.0.0.{i}" for i in range(1, 9)]
CHUNKS = [hashlib.blake2b(str(i).encode(), digest_size=32).hexdigest() for i in range(2000)]
SIZE = 1000


def image(name: str, chunks: list[str], size: int = SIZE) -> CustodyImage:
    return CustodyImage(name, dict.fromkeys(chunks, size))


def share_of(member: str, members: list[str], copies: int, chunks: list[str] = CHUNKS) -> frozenset[str]:
    plan = plan_custody([image("all", chunks)], members, member, copies=copies, share_bytes=10**12)
    return plan.chunks


@pytest.mark.parametrize(("members", "copies"), [(FARM, 2), (FARM, 1), (FARM[:3], 2), (FARM[:2], 3), (FARM[:1], 2)])
def test_every_chunk_has_exactly_copies_custodians_and_the_split_is_even(members: list[str], copies: int) -> None:
    shares = {m: share_of(m, members, copies) for m in members}
    held = Counter(c for share in shares.values() for c in share)
    expected = min(copies, len(members))
    assert set(held) == set(CHUNKS)
    assert set(held.values()) == {expected}
    fair = len(CHUNKS) * expected / len(members)
    for member, share in shares.items():
        assert abs(len(share) - fair) <= 0.15 * fair, (member, len(share), fair)


def test_the_first_custodian_is_the_fetch_policys_owner() -> None:
    for chunk in CHUNKS[:200]:
        assert custodians(chunk, FARM, 2)[0] == owner_of(chunk, FARM)


@pytest.mark.parametrize("copies", [1, 2, 3])
def test_a_member_that_joins_takes_only_what_rendezvous_gives_it(copies: int) -> None:
    before = {m: share_of(m, FARM, copies) for m in FARM}
    joiner = "10.0.0.99"
    after = {m: share_of(m, [*FARM, joiner], copies) for m in [*FARM, joiner]}
    for chunk in CHUNKS:
        old = set(custodians(chunk, FARM, copies))
        new = set(custodians(chunk, [*FARM, joiner], copies))
        if joiner in new:  # the joiner displaced exactly the last custodian, who stays in line next
            assert old - new == {custodians(chunk, FARM, copies)[-1]}
        else:
            assert old == new  # nothing else moves
    gained = {m: after[m] - before[m] for m in FARM}
    assert all(not chunks for chunks in gained.values())  # nobody but the joiner takes anything
    assert len(after[joiner]) == pytest.approx(len(CHUNKS) * copies / (len(FARM) + 1), rel=0.2)


def test_a_member_that_leaves_hands_each_chunk_to_the_next_in_its_order() -> None:
    leaver = FARM[3]
    rest = [m for m in FARM if m != leaver]
    before = {m: share_of(m, FARM, 2) for m in FARM}
    after = {m: share_of(m, rest, 2) for m in rest}
    for member in rest:
        assert before[member] <= after[member]  # nobody loses custody when another leaves
    moved = set().union(*(after[m] - before[m] for m in rest))
    assert moved == before[leaver]  # exactly the leaver's chunks move
    for chunk in before[leaver]:
        third = custodians(chunk, FARM, 3)[2]
        assert chunk in after[third]  # to the one next in line (it fetches from the custodian that stays)


Sizes = dict[str, int]


@pytest.mark.parametrize(
    ("share", "kept", "left_out"),
    [
        pytest.param(lambda alone: 10**9, ["a", "b", "c"], [], id="all-fit"),
        pytest.param(lambda alone: 0, [], ["a", "b", "c"], id="nothing-fits"),
        pytest.param(lambda alone: alone["a"], ["a"], ["b", "c"], id="exactly-the-first"),
        pytest.param(lambda alone: alone["a"] + alone["b"], ["a", "b"], ["c"], id="the-first-two"),
        pytest.param(lambda alone: alone["a"] + alone["b"] - 1, ["a"], ["b", "c"], id="one-byte-short"),
        pytest.param(lambda alone: alone["a"] + alone["c"], ["a"], ["b", "c"], id="no-skipping-ahead"),
    ],
)
def test_the_share_keeps_images_in_list_order_and_names_what_it_left_out(
    share: Callable[[Sizes], int], kept: list[str], left_out: list[str]
) -> None:
    me = FARM[0]
    images = [image("a", CHUNKS[:300]), image("b", CHUNKS[300:600], 2 * SIZE), image("c", CHUNKS[600:700])]
    alone = {i.name: plan_custody([i], FARM, me, copies=2, share_bytes=10**12).bytes for i in images}
    budget = share(alone)
    plan = plan_custody(images, FARM, me, copies=2, share_bytes=budget)
    assert [i.name for i in plan.images] == kept
    assert [i.name for i in plan.left_out] == left_out
    assert plan.bytes <= budget
    assert plan.bytes == sum(alone[name] for name in kept)
    assert plan.chunks == frozenset().union(*(i.chunks for i in plan.images))
    assert all(i.bytes == alone[i.name] for i in plan.left_out)  # what each would have cost


def test_a_chunk_shared_by_two_images_counts_once() -> None:
    me = FARM[0]
    mine = share_of(me, FARM, 2)
    shared = sorted(mine)[:50]
    a, b = image("a", shared), image("b", shared)
    plan = plan_custody([a, b], FARM, me, copies=2, share_bytes=50 * SIZE)
    assert [i.name for i in plan.images] == ["a", "b"]
    assert plan.bytes == 50 * SIZE


def test_me_is_always_a_member_and_copies_must_be_positive() -> None:
    alone = plan_custody([image("a", CHUNKS[:10])], [], "10.0.0.1", copies=2, share_bytes=10**9)
    assert alone.members == {"10.0.0.1"}
    assert alone.chunks == frozenset(CHUNKS[:10])
    with pytest.raises(ValueError, match="copies"):
        plan_custody([], FARM, FARM[0], copies=0, share_bytes=1)


@pytest.mark.parametrize(("members", "expected_total"), [(FARM, 2), (FARM[:1], 0), (FARM[:2], 1)])
def test_assigned_copies_count_the_other_custodians(members: list[str], expected_total: int) -> None:
    me = members[0]
    for chunk in CHUNKS[:100]:
        others = assigned_copies(chunk, members, me, 2)
        keeps = me in custodians(chunk, members, 2)
        assert others == min(2, len(members)) - keeps
        assert others <= expected_total


def test_members_are_held_after_they_were_last_seen() -> None:
    book = Membership(hold_s=60.0)
    assert book.saw({"a", "b"}, now=0.0) == {"a", "b"}
    assert book.saw({"a"}, now=30.0) == {"a", "b"}  # b disconnected: held (a restart is not a leave)
    assert book.saw({"a"}, now=60.0) == {"a", "b"}
    assert book.saw({"a"}, now=60.5) == {"a"}  # held no longer
    assert book.saw({"a", "b"}, now=61.0) == {"a", "b"}  # back: a member again at once
    assert book.saw(set(), now=200.0) == frozenset()


@pytest.mark.parametrize(
    ("copies", "expected"),
    [
        ([], {"0": 0, "1": 0, "2": 0, "3+": 0}),
        ([0, 1, 1, 2, 3, 4, 9], {"0": 1, "1": 2, "2": 1, "3+": 3}),
        ([-1], {"0": 1, "1": 0, "2": 0, "3+": 0}),
    ],
)
def test_histogram(copies: list[int], expected: dict[str, int]) -> None:
    assert histogram(copies) == expected
