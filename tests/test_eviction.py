"""Eviction policy: order, watermarks, protection, force, incoming bytes, shortfall, budgets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pchunks.errors import BadConfig
from p2pchunks.policy.eviction import (
    Candidate,
    FarmHints,
    Pin,
    Watermarks,
    effective_budget,
    eviction_order,
    explain,
    plan_eviction,
)

N, U, OFF = Pin.NONE, Pin.USER, Pin.OFFICIAL


def cand(
    chunk_id: str, size: int = 100, at: float = 0.0, pin: Pin = N, replicas: int = 0, last: bool = False
) -> Candidate:
    return Candidate(chunk_id, size, at, pin, replicas, last)


MARKS = Watermarks(1000, high=0.9, low=0.8)  # high 900 B, low 800 B

# ten chunks of 100 B: "a".."j", accessed at 1..10, all unpinned
TEN = [cand(chr(ord("a") + i), 100, float(i + 1)) for i in range(10)]


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        pytest.param([cand("b", at=2), cand("a", at=1)], ["a", "b"], id="lru"),
        pytest.param([cand("b", at=1), cand("a", at=1)], ["a", "b"], id="tie-by-id"),
        pytest.param([cand("o", at=1, pin=OFF), cand("u", at=2, pin=U), cand("n", at=3)], ["n", "u", "o"], id="pins"),
        pytest.param(
            [cand("o1", at=5, pin=OFF), cand("o0", at=1, pin=OFF), cand("n1", at=9), cand("u0", at=0, pin=U)],
            ["n1", "u0", "o0", "o1"],
            id="pin-then-lru",
        ),
        pytest.param([], [], id="empty"),
        pytest.param(
            [cand("once", at=1, replicas=1), cand("thrice", at=9, replicas=3), cand("never", at=0)],
            ["thrice", "once", "never"],
            id="most-farm-copies-first-then-lru",
        ),
        pytest.param(
            [cand("o", at=1, pin=OFF, replicas=5), cand("n", at=9)], ["n", "o"], id="pin-level-before-replicas"
        ),
        pytest.param(
            [cand("last", at=0, pin=OFF, last=True), cand("o", at=9, pin=OFF), cand("u", at=9, pin=U, replicas=2)],
            ["u", "o", "last"],
            id="the-farms-last-copy-at-the-very-end",
        ),
    ],
)
def test_eviction_order(candidates: list[Candidate], expected: list[str]) -> None:
    assert [c.chunk_id for c in eviction_order(candidates)] == expected


@pytest.mark.parametrize(
    ("candidates", "used", "kwargs", "victims", "used_after", "shortfall"),
    [
        pytest.param(TEN[:9], 900, {}, [], 900, 0, id="at-high-nothing"),
        pytest.param(TEN[:5], 500, {}, [], 500, 0, id="well-below-nothing"),
        pytest.param(TEN, 1000, {}, ["a", "b"], 800, 0, id="above-high-down-to-low"),
        pytest.param(
            [cand("a", 100, 1), cand("big", 300, 2), cand("c", 600, 3)], 1000, {}, ["a", "big"], 600, 0, id="overshoot"
        ),
        pytest.param(TEN, 1000, {"protected": {"a"}}, ["b", "c"], 800, 0, id="protected-skipped"),
        pytest.param(
            TEN, 1000, {"protected": {c.chunk_id for c in TEN[:9]}}, ["j"], 900, 100, id="protected-shortfall"
        ),
        pytest.param(TEN[:9], 900, {"force": True}, ["a"], 800, 0, id="force-below-high"),
        pytest.param(TEN[:8], 800, {"force": True}, [], 800, 0, id="force-at-low-nothing"),
        pytest.param(TEN[:9], 900, {"incoming": 100}, ["a", "b"], 700, 0, id="incoming-triggers"),
        pytest.param(TEN[:8], 800, {"incoming": 100}, [], 800, 0, id="incoming-fits-at-high"),
        pytest.param(TEN[:2], 200, {"incoming": 1200}, ["a", "b"], 0, 400, id="incoming-too-big"),
        pytest.param(
            [cand("o", 500, 1, OFF), cand("n", 500, 9)], 1000, {}, ["n"], 500, 0, id="unpinned-before-older-official"
        ),
        pytest.param([cand("o", 1000, 1, OFF)], 1000, {}, ["o"], 0, 0, id="official-evicted-last-resort"),
        # the farm's last copies (custody chunks no farm-mate holds): kept while the budget (1000 B) holds
        pytest.param(
            [cand("n", 100, 9), cand("last", 500, 1, OFF, last=True), cand("o", 400, 5, OFF, replicas=1)],
            1000,
            {},
            ["n", "o"],
            500,
            0,
            id="last-copy-survives-a-pass",
        ),
        pytest.param(
            [cand("n", 100, 9), cand("l1", 400, 1, OFF, last=True), cand("l2", 500, 2, OFF, last=True)],
            1000,
            {},
            ["n"],
            900,
            100,
            id="last-copies-kept-above-low-watermark",
        ),
        pytest.param(
            [cand("l1", 400, 1, OFF, last=True), cand("l2", 500, 2, OFF, last=True), cand("p", 100, 3)],
            1000,
            {"protected": {"p"}, "incoming": 300},
            ["l1"],
            600,
            100,
            id="last-copy-only-to-keep-the-budget",
        ),
    ],
)
def test_plan_eviction(
    candidates: list[Candidate],
    used: int,
    kwargs: dict[str, object],
    victims: list[str],
    used_after: int,
    shortfall: int,
) -> None:
    plan = plan_eviction(candidates, used, MARKS, **kwargs)  # type: ignore[arg-type]
    assert [v.chunk_id for v in plan.victims] == victims
    assert (plan.used_before, plan.used_after, plan.shortfall, plan.target) == (used, used_after, shortfall, 800)
    assert plan.freed == used - used_after
    assert plan.last_copies == sum(1 for v in plan.victims if v.last_copy)


def test_nothing_is_evicted_for_being_old() -> None:
    ancient = [cand(f"{i}", 100, at=-1e9) for i in range(9)]
    assert plan_eviction(ancient, 900, MARKS).victims == ()


@given(
    sizes=st.lists(
        st.tuples(
            st.integers(0, 400),
            st.integers(0, 5),
            st.sampled_from(list(Pin)),
            st.booleans(),
            st.integers(0, 3),
            st.booleans(),
        )
    ),
    incoming=st.integers(0, 600),
    force=st.booleans(),
)
def test_plan_invariants(sizes: list[tuple[int, int, Pin, bool, int, bool]], incoming: int, force: bool) -> None:
    candidates = [
        cand(f"c{i}", size, at, pin, replicas, last) for i, (size, at, pin, _, replicas, last) in enumerate(sizes)
    ]
    protected = {f"c{i}" for i, (_, _, _, keep, _, _) in enumerate(sizes) if keep}
    used = sum(c.size for c in candidates)
    plan = plan_eviction(candidates, used, MARKS, protected=protected, incoming=incoming, force=force)
    victims = [v.chunk_id for v in plan.victims]
    assert not protected & set(victims)
    assert plan.used_after == used - sum(v.size for v in plan.victims)
    if not force and used + incoming <= MARKS.high_bytes:
        assert victims == []
    # victims are exactly a prefix of the evictable order
    evictable = [c.chunk_id for c in eviction_order(candidates) if c.chunk_id not in protected]
    assert victims == evictable[: len(victims)]
    if victims:
        # the last victim was needed: without it the total was still above the target
        assert plan.used_after + plan.victims[-1].size + incoming > MARKS.low_bytes
        assert plan.shortfall == max(0, plan.used_after + incoming - MARKS.low_bytes)
        if plan.victims[-1].last_copy:  # a last copy goes only while the budget itself is exceeded
            assert plan.used_after + plan.victims[-1].size + incoming > MARKS.budget_bytes
    kept = [c for c in eviction_order(candidates) if c.chunk_id in set(evictable[len(victims) :])]
    if plan.shortfall and kept:  # what stays though the target is missed: only the farm's last copies
        assert all(c.last_copy for c in kept)
        assert plan.used_after + incoming <= MARKS.budget_bytes


@pytest.mark.parametrize(
    ("budget", "high", "low", "high_bytes", "low_bytes"),
    [
        (1000, 0.9, 0.8, 900, 800),
        (100, 0.29, 0.29, 29, 29),  # 0.29 * 100 is 28.999… in floats
        (10**13, 0.9, 0.8, 9 * 10**12, 8 * 10**12),
        (0, 1.0, 0.5, 0, 0),
        (7, 1.0, 1.0, 7, 7),
    ],
)
def test_watermark_bytes(budget: int, high: float, low: float, high_bytes: int, low_bytes: int) -> None:
    marks = Watermarks(budget, high, low)
    assert (marks.high_bytes, marks.low_bytes) == (high_bytes, low_bytes)


@pytest.mark.parametrize(
    ("budget", "high", "low"),
    [(1000, 0.8, 0.9), (1000, 0.9, 0.0), (1000, 1.1, 0.8), (-1, 0.9, 0.8), (1000, float("nan"), 0.8)],
)
def test_watermarks_reject_nonsense(budget: int, high: float, low: float) -> None:
    with pytest.raises(ValueError, match=r"budget|watermarks"):
        Watermarks(budget, high, low)


GIB = 2**30


@pytest.mark.parametrize(
    ("budget_bytes", "budget_percent", "fs_total", "expected"),
    [
        (None, None, 100 * GIB, 100 * GIB),
        (10 * GIB, None, 100 * GIB, 10 * GIB),
        (None, 50.0, 100 * GIB, 50 * GIB),
        (10 * GIB, 50.0, 100 * GIB, 10 * GIB),
        (80 * GIB, 50.0, 100 * GIB, 50 * GIB),
        (500 * GIB, None, 100 * GIB, 500 * GIB),  # only what is given counts
        (None, 100, 12345, 12345),
        (None, 29.0, 100, 29),
        (0, None, 100, 0),
    ],
)
def test_effective_budget(budget_bytes: int | None, budget_percent: float | None, fs_total: int, expected: int) -> None:
    assert effective_budget(budget_bytes, budget_percent, fs_total) == expected


@pytest.mark.parametrize(
    ("budget_bytes", "budget_percent", "fs_total"),
    [
        (-1, None, 100),
        (None, 0.0, 100),
        (None, 100.5, 100),
        (None, -5.0, 100),
        (None, float("inf"), 100),
        (None, float("nan"), 100),
        (None, 50.0, -1),
        (True, None, 100),
        (1.5, None, 100),
        (None, "50", 100),
    ],
)
def test_effective_budget_rejects_nonsense(budget_bytes: object, budget_percent: object, fs_total: int) -> None:
    with pytest.raises(BadConfig):
        effective_budget(budget_bytes, budget_percent, fs_total)  # type: ignore[arg-type]


def test_explain_names_each_victim_and_totals() -> None:
    candidates = [cand("n", 150, 0.0), cand("u", 150, 0.0, U), cand("o", 700, 0.0, OFF)]
    plan = plan_eviction(candidates, 1000, MARKS, protected={"o"})
    lines = explain(plan)
    assert "above the high watermark" in lines[0]
    assert lines[1] == "#1 evict n: 150 B, unpinned, last access 1970-01-01 00:00:00Z"
    assert lines[2].startswith("#2 evict u: 150 B, pinned by a user")
    assert lines[3] == "2 chunks, 300 B freed: 1000 B -> 700 B (target 800 B)"
    assert len(lines) == 4
    short = explain(plan_eviction(candidates, 1000, MARKS, protected={"o", "u"}, incoming=300))
    assert short[-2] == "1 chunks, 150 B freed: 1000 B -> 850 B + 300 B incoming (target 800 B)"
    assert short[-1].startswith("still 350 B above target")


def test_explain_nothing_to_do() -> None:
    lines = explain(plan_eviction(TEN[:5], 500, MARKS))
    assert "nothing is evicted" in lines[0]
    assert lines[-1] == "0 chunks, 0 B freed: 500 B -> 500 B (target 800 B)"


def test_farm_hints_annotate_replicas_and_last_copies() -> None:
    hints = FarmHints()
    plain = [cand("a"), cand("b"), cand("c")]
    assert hints.annotate(plain) == plain  # nothing known: as today
    hints.set_replicas({"a": 2, "b": 0})
    hints.set_custody(frozenset({"b", "c", "elsewhere"}))
    annotated = {c.chunk_id: (c.replicas, c.last_copy) for c in hints.annotate(plain)}
    assert annotated == {"a": (2, False), "b": (0, True), "c": (0, True)}
    hints.set_replicas({"c": 1})  # a farm-mate now holds c: no longer the last copy
    assert {c.chunk_id: c.last_copy for c in hints.annotate(plain)} == {"a": False, "b": True, "c": False}


def test_explain_says_farm_copies_and_last_copies() -> None:
    candidates = [cand("r", 100, 0.0, replicas=2), cand("l", 1100, 0.0, OFF, last=True)]
    lines = explain(plan_eviction(candidates, 1200, MARKS))  # 1100 B after r is still over the 1000 B budget
    assert lines[1] == "#1 evict r: 100 B, unpinned, 2 farm copies, last access 1970-01-01 00:00:00Z"
    assert lines[2].startswith("#2 evict l: 1100 B, official image, the farm's last copy")
