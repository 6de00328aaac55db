"""The hubs' health board: which hub a request goes to, and how a hub goes down and comes back (no sockets, no
clock: ``now`` is a number)."""

from __future__ import annotations

import pytest

from p2pchunks.hub.health import HealthBoard

URLS = ("http://a/", "http://b/", "http://c/")


def board(budget: int = 4) -> HealthBoard:
    return HealthBoard(URLS, budget, backoff=1.0, max_backoff=8.0)


def fail(b: HealthBoard, index: int, now: float, times: int = 1) -> None:
    for _ in range(times):
        b.started(index)
        b.failed(index, now, "boom")


# (what happened before, now, excluded, the hub chosen)
CASES = [
    ("all up, idle: the first listed", lambda b: None, 0.0, (), 0),
    ("first busier by share of budget", lambda b: b.started(0), 0.0, (), 1),
    ("first down, not due", lambda b: fail(b, 0, 0.0), 0.5, (), 1),
    ("first down, probe due", lambda b: fail(b, 0, 0.0), 1.0, (), 0),
    ("probe due but one already in flight", lambda b: (fail(b, 0, 0.0), b.started(0)), 1.5, (), 1),
    ("first excluded (said missing)", lambda b: None, 0.0, (0,), 1),
    ("every hub excluded", lambda b: None, 0.0, (0, 1, 2), None),
    (
        "all down, none due: the one due soonest",
        lambda b: (fail(b, 0, 0.0, 2), fail(b, 1, 0.0), fail(b, 2, 0.0, 3)),
        0.5,
        (),
        1,
    ),
    ("down hub answering missing is back up", lambda b: (fail(b, 0, 0.0), b.started(0), b.said_missing(0)), 0.1, (), 0),
]


@pytest.mark.parametrize(("name", "before", "now", "exclude", "chosen"), CASES, ids=[c[0] for c in CASES])
def test_choose(name: str, before: object, now: float, exclude: tuple[int, ...], chosen: int | None) -> None:
    b = board()
    assert callable(before)
    before(b)
    assert b.choose(now, exclude) == chosen


def test_down_backoff_doubles_to_its_cap_and_success_clears_it() -> None:
    b = board()
    waits = []
    for _ in range(6):
        fail(b, 0, 100.0)
        waits.append(b.hubs[0].retry_at - 100.0)
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert b.hubs[0].state == "down"
    assert b.hubs[0].errors == 6
    b.started(0)
    b.succeeded(0, 1234)
    hub = b.hubs[0]
    assert (hub.state, hub.failures, hub.bytes, hub.inflight, hub.requests) == ("up", 0, 1234, 0, 7)


def test_load_is_spread_by_the_share_of_each_budget() -> None:
    b = board(budget=4)
    b.hubs[1].budget = 8  # a bigger hub takes a bigger share
    picks = []
    for _ in range(12):
        index = b.choose(0.0)
        assert index is not None
        b.started(index)
        picks.append(index)
    assert [picks.count(i) for i in range(3)] == [3, 6, 3]
    assert all(h.inflight / h.budget == 0.75 for h in b.hubs)


def test_a_cancelled_request_teaches_nothing() -> None:
    b = board()
    b.started(2)
    b.abandoned(2)
    hub = b.hubs[2]
    assert (hub.state, hub.inflight, hub.errors, hub.requests) == ("up", 0, 0, 1)


def test_rows_show_state_bytes_errors() -> None:
    b = board()
    fail(b, 1, 10.0)
    rows = b.rows(10.25)
    assert [r["state"] for r in rows] == ["up", "down", "up"]
    assert rows[1]["retry_in_s"] == 0.75
    assert rows[1]["errors"] == 1
    assert rows[1]["last_error"] == "boom"


@pytest.mark.parametrize(
    ("urls", "budget", "backoff", "cap"), [((), 1, 1.0, 2.0), (URLS, 0, 1.0, 2.0), (URLS, 1, 0.0, 1.0), (URLS, 1, 3, 2)]
)
def test_bad_boards_are_refused(urls: tuple[str, ...], budget: int, backoff: float, cap: float) -> None:
    with pytest.raises(ValueError, match="health board"):
        HealthBoard(urls, budget, backoff=backoff, max_backoff=cap)
