"""The swarm port's flood guard as plain data: shares, blocks per address and per prefix, expiry, lost news."""

from __future__ import annotations

import pytest

from p2pchunks.swarm.addresses import from_internet
from p2pchunks.swarm.floodguard import FloodGuard, prefix_range, share_of


def test_shares_leave_room_for_everyone_else() -> None:
    assert share_of(200) == (50, 100)
    assert share_of(40) == (10, 20)
    assert share_of(8) == (4, 8)  # tiny limits still let a small farm behind one NAT in


@pytest.mark.parametrize(
    ("ip", "first", "last"),
    [
        ("127.66.0.9", "127.66.0.0", "127.66.0.255"),
        ("2001:db8:66:1::9", "2001:db8:66::", "2001:db8:66:ffff:ffff:ffff:ffff:ffff"),
    ],
)
def test_prefix_range(ip: str, first: str, last: str) -> None:
    assert prefix_range(ip) == (first, last)


def test_an_address_over_its_share_is_blocked_and_lifted_when_due() -> None:
    guard = FloodGuard(per_address=3, per_prefix=8, ban_s=60)
    assert not any(guard.opened("127.0.0.1", port, now=0) for port in (1, 2, 3))
    assert guard.opened("127.0.0.1", 4, now=1)  # the fourth at once: over the share
    assert guard.blocked == {("127.0.0.1", "127.0.0.1"): 61}
    assert not guard.opened("127.0.0.1", 5, now=2)  # already blocked: nothing new to tell libtorrent
    assert not guard.opened("127.0.0.2", 1, now=2)  # a neighbour is not touched
    assert guard.next_lift() == 61
    assert not guard.lift(now=60)
    assert guard.lift(now=61)
    assert guard.blocked == {}


def test_connections_that_end_free_their_share() -> None:
    guard = FloodGuard(per_address=2, per_prefix=8)
    guard.opened("127.0.0.1", 1, now=0)
    guard.opened("127.0.0.1", 2, now=0)
    guard.closed("127.0.0.1", 1)
    guard.closed("127.9.9.9", 1)  # an outgoing connection of ours, or one refused at accept: never counted
    assert not guard.opened("127.0.0.1", 3, now=0)
    assert not guard.opened("127.0.0.1", 3, now=0)  # the same connection told twice counts once
    assert guard.by_address == {"127.0.0.1": 2}


def test_a_prefix_over_its_share_is_blocked_whole() -> None:
    guard = FloodGuard(per_address=2, per_prefix=4)
    changed = [guard.opened(f"127.7.0.{k}", 1, now=0) for k in range(1, 6)]  # five addresses, one connection each
    assert changed == [False, False, False, False, True]
    assert list(guard.blocked) == [("127.7.0.0", "127.7.0.255")]


def test_an_ipv6_attacker_rotating_addresses_in_its_48_is_blocked_as_one() -> None:
    guard = FloodGuard(per_address=2, per_prefix=4)
    for k in range(5):
        guard.opened(f"2a02:db8:66:{k:x}::1", 1, now=0)
    assert list(guard.blocked) == [("2a02:db8:66::", "2a02:db8:66:ffff:ffff:ffff:ffff:ffff")]


def test_lost_news_start_the_count_over_and_memory_stays_bounded() -> None:
    guard = FloodGuard(per_address=1000, per_prefix=1000, max_tracked=10)
    for port in range(25):
        guard.opened(f"127.0.{port}.1", port + 1, now=0)
    assert len(guard.live) <= 10
    guard.forget_connections()
    assert (guard.live, guard.by_address, guard.by_prefix) == ({}, {}, {})


def test_connections_accepted_after_a_block_do_not_make_the_neighbours_look_guilty() -> None:
    guard = FloodGuard(per_address=2, per_prefix=4)
    guard.opened("127.7.0.1", 1, now=0)
    guard.opened("127.7.0.1", 2, now=0)
    assert guard.opened("127.7.0.1", 3, now=0)  # blocked; libtorrent still accepts a few before the filter lands
    for port in range(4, 20):
        assert not guard.opened("127.7.0.1", port, now=0)
    assert not guard.opened("127.7.0.2", 1, now=0)  # a neighbour: its /24 holds one counted connection
    assert list(guard.blocked) == [("127.7.0.1", "127.7.0.1")]
    assert guard.by_prefix == {"127.7.0.0": 1}
    for port in range(1, 20):
        guard.closed("127.7.0.1", port)
    assert guard.by_address == {"127.7.0.2": 1}


def test_shares_are_enforced_only_when_slots_are_scarce() -> None:
    guard = FloodGuard(per_address=2, per_prefix=8, crowded=6)
    assert not any(guard.opened("127.9.0.1", port, now=0) for port in range(1, 6))  # a big NAT'd farm, idle seed
    assert guard.opened("127.9.0.1", 6, now=0)  # the sixth fills half the slots: now it is over its share
    assert list(guard.blocked) == [("127.9.0.1", "127.9.0.1")]


@pytest.mark.parametrize("ip", ["10.1.2.3", "192.168.1.9", "172.16.0.4", "169.254.1.1", "fd00::5", "::ffff:10.0.0.9"])
def test_the_farm_on_the_lan_is_never_counted(ip: str) -> None:
    guard = FloodGuard(per_address=1, per_prefix=2)
    assert not any(guard.opened(ip, port, now=0) for port in range(1, 50))
    assert (guard.blocked, guard.live) == ({}, {})


@pytest.mark.parametrize(
    ("ip", "stranger"),
    [
        ("127.66.0.1", True), ("::1", True), ("8.8.4.4", True), ("2a02:db8::1", True),
        ("100.64.0.7", True),  # carrier-grade NAT: other customers of the ISP, not the node's farm
        ("10.0.0.1", False), ("fe80::1", False), ("::ffff:192.168.1.2", False),
    ],
)  # fmt: skip
def test_from_internet(ip: str, stranger: bool) -> None:
    assert from_internet(ip) is stranger
