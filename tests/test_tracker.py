"""The seed's HTTP tracker: announce parsing, known infohashes, the peer table's caps, the mixed nearest-first
answer, floods of one address and of one /24 (in the core; over HTTP in test_tracker_floods.py), a real round trip."""

from __future__ import annotations

import ipaddress
import random
import urllib.parse

import httpx
import pytest
import trio

from p2pchunks.formats.bencoding import bdecode
from p2pchunks.http.server import serve_http
from p2pchunks.swarm.peermix import _runner_up_caps
from p2pchunks.swarm.peertable import PER_ADDRESS, PER_PREFIX, PER_TORRENT, PeerTable, packed
from p2pchunks.swarm.tracker import (
    MAX_TORRENTS,
    Announce,
    AnnounceError,
    Tracker,
    UnknownTorrent,
    known_among,
    parse_announce,
)

IH = bytes(range(20))


def query(**fields: str | bytes | int) -> str:
    return "&".join(
        f"{k}={urllib.parse.quote_from_bytes(v) if isinstance(v, bytes) else urllib.parse.quote(str(v))}"
        for k, v in fields.items()
    )


def compact(peers: bytes) -> list[tuple[str, int]]:
    return [
        (str(ipaddress.ip_address(peers[i : i + 4])), int.from_bytes(peers[i + 4 : i + 6], "big"))
        for i in range(0, len(peers), 6)
    ]


def announce(ip: str, port: int, *, left: int = 1, event: str = "", farm: str = "") -> Announce:
    return Announce(IH, f"peer-{ip}-{port}".encode(), ip, port, left, event, 50, farm)


def test_parse_announce_keeps_binary_fields() -> None:
    raw = query(info_hash=IH, peer_id=b"\xff" * 20, port=6881, left=0, event="started", numwant=10)
    parsed = parse_announce(raw, "127.0.0.5")
    assert parsed == Announce(IH, b"\xff" * 20, "127.0.0.5", 6881, 0, "started", 10)


def test_parse_announce_truncates_v2_hashes_like_libtorrent() -> None:
    parsed = parse_announce(query(info_hash=bytes(32), peer_id=b"x", port=1), "127.0.0.5")
    assert parsed.info_hash == bytes(20)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        query(info_hash=b"short", peer_id=b"x", port=1),
        query(info_hash=IH, port=1),
        query(info_hash=IH, peer_id=b"x", port=0),
        query(info_hash=IH, peer_id=b"x", port=70000),
        query(info_hash=IH, peer_id=b"x", port="12a"),
        query(info_hash=IH, peer_id=b"x", port=1, event="explode"),
        query(info_hash=IH, peer_id=b"x", port=1, left="-1"),
        "a=" + "b" * 5000,
    ],
)
def test_bad_announces_are_refused(raw: str) -> None:
    with pytest.raises(AnnounceError):
        parse_announce(raw, "127.0.0.5")


def tracker(*known: bytes, seed: int = 1, interval: int = 60) -> Tracker:
    return Tracker(set(known or (IH,)).__contains__, interval=interval, rng=random.Random(seed))


def ips_of(reply: dict[bytes, object]) -> list[str]:
    return [ip for ip, _ in compact(reply[b"peers"])]  # type: ignore[arg-type]


def test_peer_table_join_leave_expire_and_counts() -> None:
    t = tracker()
    t.announce(announce("127.0.0.2", 1000, left=0), now=0)
    t.announce(announce("127.0.0.3", 1000), now=0)
    reply = t.announce(announce("127.0.0.4", 1000), now=10)
    assert (reply[b"complete"], reply[b"incomplete"]) == (1, 2)
    assert sorted(compact(reply[b"peers"])) == [("127.0.0.2", 1000), ("127.0.0.3", 1000)]  # type: ignore[arg-type]
    t.announce(announce("127.0.0.3", 1000, event="stopped"), now=20)
    assert sorted(t.peers_of(IH)) == [("127.0.0.2", 1000), ("127.0.0.4", 1000)]
    reply = t.announce(announce("127.0.0.4", 1000), now=200)  # .2 silent for 200 s > 2.5 intervals
    assert compact(reply[b"peers"]) == []  # type: ignore[arg-type]
    t.announce(announce("127.0.0.4", 1000, event="stopped"), now=201)
    assert t.torrents == 0  # the last peer left: the torrent's table goes too


def test_an_unknown_infohash_is_refused_and_costs_nothing() -> None:
    t = tracker()
    flood = random.Random(5)
    for _ in range(10_000):  # the issue's flood: random infohashes from one address
        with pytest.raises(UnknownTorrent, match="unknown torrent"):
            t.announce(Announce(flood.randbytes(20), flood.randbytes(20), "127.66.0.1", 6881, 1, "", 50), now=0)
    assert t.torrents == 0
    t.announce(announce("127.0.0.2", 1000), now=1)  # a torrent it knows still gets a table at once
    reply = t.announce(announce("127.0.0.3", 1000), now=1)
    assert ips_of(reply) == ["127.0.0.2"]


def test_known_among_reads_the_agent_s_infohashes_at_each_announce() -> None:
    held: list[str | None] = [None]
    known = known_among(lambda: held)
    v2 = bytes(range(32))
    assert not known(v2[:20])
    held.append(v2.hex())  # a manifest the agent resolved later
    assert known(v2[:20])  # libtorrent announces a v2 infohash truncated to 20 bytes
    assert not known(bytes(20))


def test_one_address_holds_at_most_its_cap_and_churns_only_its_own_entries() -> None:
    t = tracker()
    for ip in ("127.1.0.1", "127.2.0.1"):
        t.announce(announce(ip, 6881), now=0)
    for i in range(PER_ADDRESS + 300):
        t.announce(Announce(IH, b"s%d" % i, "127.66.0.1", 1 + i, 1, "", 50, farm="f"), now=1 + i / 1000)
    entries = t.peers_of(IH)
    assert sum(1 for ip, _ in entries if ip == "127.66.0.1") == PER_ADDRESS
    assert {"127.1.0.1", "127.2.0.1"} <= {ip for ip, _ in entries}
    kept = {port for ip, port in entries if ip == "127.66.0.1"}
    assert min(kept) == 301  # the stranger's stalest entries made room for its newest


def test_one_prefix_holds_at_most_its_cap_and_honest_newcomers_are_always_recorded() -> None:
    t = tracker()
    for i in range(2 * PER_TORRENT):  # the issue's 2,000 announces, twice over, from one /24
        t.announce(Announce(IH, b"s%d" % i, f"127.77.0.{1 + i % 254}", 7000, 1, "", 50), now=i / 1000)
    assert len(t.peers_of(IH)) == PER_PREFIX
    t.announce(announce("127.1.0.1", 6881), now=10)
    assert ("127.1.0.1", 6881) in t.peers_of(IH)


def test_a_full_table_takes_room_from_the_most_crowded_prefix() -> None:
    table = PeerTable(per_address=2, per_prefix=3, capacity=5)
    a, b, c, d = (packed(f"10.{k}.0.1") for k in range(1, 5))
    a2 = packed("10.1.0.2")
    table.put(a, b"a1", 1, 1, "", now=0)
    table.put(b, b"b1", 1, 1, "", now=1)
    table.put(a, b"a2", 1, 1, "", now=2)
    table.put(a2, b"a3", 1, 1, "", now=3)
    table.put(c, b"c1", 1, 1, "", now=4)
    table.put(d, b"d1", 1, 1, "", now=5)  # full: 10.1.0.0/24 holds three, its stalest gives way
    assert {(e.ip, e.peer_id) for e in table.entries()} == {
        ("10.1.0.1", b"a2"),
        ("10.1.0.2", b"a3"),
        ("10.2.0.1", b"b1"),
        ("10.3.0.1", b"c1"),
        ("10.4.0.1", b"d1"),
    }
    spread = PeerTable(per_address=1, per_prefix=1, capacity=3)
    for k in range(4):  # one entry per prefix: nobody crowds, the table's stalest goes
        spread.put(packed(f"10.{k}.0.1"), b"p", 1, 1, "", now=k)
    assert sorted(e.ip for e in spread.entries()) == ["10.1.0.1", "10.2.0.1", "10.3.0.1"]


def test_an_announce_cannot_touch_the_entries_of_another_address() -> None:
    t = tracker()
    t.announce(Announce(IH, b"honest", "127.1.0.1", 6881, 1, "", 50), now=0)
    t.announce(Announce(IH, b"honest", "127.66.0.1", 6881, 1, "stopped", 50), now=1)  # a stolen peer id
    assert ("127.1.0.1", 6881) in t.peers_of(IH)


def test_the_issue_s_flood_no_longer_hides_an_honest_neighbour() -> None:
    """Two honest peers; 300 announces from one address with fresh ids and ports, claiming their farm."""
    t = tracker()
    t.announce(announce("127.0.0.2", 6881, farm="farm-a"), now=0)
    for i in range(300):
        t.announce(Announce(IH, b"x%d" % i, "127.0.0.66", 2000 + i, 1, "", 50, "farm-a"), now=1)
    reply = t.announce(announce("127.0.0.3", 6881, farm="farm-a"), now=2)
    handed = ips_of(reply)
    assert "127.0.0.2" in handed
    assert handed.count("127.0.0.66") <= handed.count("127.0.0.2")


def test_address_closeness_comes_before_a_farm_claim() -> None:
    for seed in range(20):
        t = tracker(seed=seed)
        t.announce(announce("10.1.2.4", 7000, farm="b"), now=0)
        t.announce(announce("192.168.9.9", 7000, farm="a"), now=0)  # claims the asker's farm from afar
        assert ips_of(t.announce(announce("10.1.2.3", 7000, farm="a"), now=1)) == ["10.1.2.4", "192.168.9.9"]
    parsed = parse_announce(query(info_hash=IH, peer_id=b"x", port=1, farm="a"), "127.0.0.9")
    assert parsed.farm == "a"


def test_a_farm_claim_breaks_ties_between_equally_near_prefixes() -> None:
    for seed in range(20):
        t = tracker(seed=seed)
        t.announce(announce("10.200.0.1", 7000, farm="b"), now=0)  # both share 8 leading bits with 10.1.2.3
        t.announce(announce("10.201.0.1", 7000, farm="a"), now=0)
        asker = Announce(IH, b"asker", "10.1.2.3", 7000, 1, "", 1, "a")  # room for one peer
        assert ips_of(t.announce(asker, now=1)) == ["10.201.0.1"]


def test_nearest_peers_come_first() -> None:
    t = tracker(seed=7)
    for ip in ["10.9.0.1", "192.168.5.3", "10.1.2.4", "10.1.2.9", "172.16.0.1"]:
        t.announce(announce(ip, 7000), now=0)
    order = ips_of(t.announce(announce("10.1.2.3", 7000), now=1))
    assert sorted(order[:2]) == ["10.1.2.4", "10.1.2.9"]  # the asker's /24
    assert order[2] == "10.9.0.1"  # then the prefix sharing the most leading bits


@pytest.mark.parametrize(
    ("demand", "exempt", "caps"),
    [
        ({b"a": 5, b"b": 1}, None, {b"a": 1, b"b": 1}),  # the single largest is cut to the runner-up
        ({b"a": 5, b"b": 5, b"c": 1}, None, {b"a": 5, b"b": 5, b"c": 1}),  # two largest: nobody dominates
        ({b"a": 5}, None, {b"a": 5}),  # alone: nobody to crowd out
        ({b"a": 5, b"b": 2}, b"a", {b"a": 5, b"b": 2}),  # the asker's own prefix is exempt
        ({b"a": 5, b"b": 0, b"c": 3}, None, {b"a": 3, b"b": 0, b"c": 3}),
    ],
)
def test_no_source_above_the_runner_up(demand: dict[bytes, int], exempt: bytes | None, caps: dict[bytes, int]) -> None:
    assert _runner_up_caps(demand, exempt) == caps


def test_mates_behind_the_asker_s_address_come_first_and_the_asker_is_not_handed_itself() -> None:
    t = tracker(seed=3)
    t.announce(announce("10.5.0.1", 7000), now=0)
    for port in (7001, 7002):
        t.announce(Announce(IH, b"mate%d" % port, "203.0.113.7", port, 1, "", 50), now=0)
    reply = t.announce(Announce(IH, b"me", "203.0.113.7", 7003, 1, "", 50), now=1)
    handed = compact(reply[b"peers"])  # type: ignore[arg-type]
    assert sorted(handed[:2]) == [("203.0.113.7", 7001), ("203.0.113.7", 7002)]
    assert handed[2:] == [("10.5.0.1", 7000)]
    assert ("203.0.113.7", 7003) not in handed


def test_ipv6_sources_are_capped_per_48_and_answered_in_peers6() -> None:
    t = tracker()
    t.announce(announce("2001:db8:1::1", 6881), now=0)
    for i in range(PER_PREFIX + 100):  # a /48 with many addresses
        t.announce(Announce(IH, b"v6-%d" % i, f"2001:db8:66:{i % 300:x}::1", 7000, 1, "", 50), now=1)
    assert sum(1 for ip, _ in t.peers_of(IH) if ip.startswith("2001:db8:66:")) == PER_PREFIX
    reply = t.announce(announce("2001:db8:2::1", 6881), now=2)
    six = reply[b"peers6"]
    assert isinstance(six, bytes)
    handed = [str(ipaddress.ip_address(six[i : i + 16])) for i in range(0, len(six), 18)]
    assert "2001:db8:1::1" in handed
    assert sum(1 for ip in handed if ip.startswith("2001:db8:66:")) == 1  # cut to the runner-up /48's one
    assert packed("::ffff:10.0.0.1") == packed("10.0.0.1")  # a mapped IPv4 address counts as itself


def test_a_tracker_forgets_the_torrent_announced_least_recently_past_max_torrents() -> None:
    t = Tracker(lambda info_hash: True, rng=random.Random(1))
    hashes = [i.to_bytes(20, "big") for i in range(MAX_TORRENTS + 1)]
    for i, info_hash in enumerate(hashes):
        t.announce(Announce(info_hash, b"p", "127.1.0.1", 6881, 1, "", 0), now=i / 1e4)
    assert t.torrents == MAX_TORRENTS
    assert t.peers_of(hashes[0]) == []
    assert t.peers_of(hashes[-1]) == [("127.1.0.1", 6881)]


@pytest.mark.parametrize("source", ["one address", "one /24"])
def test_floods_leave_strangers_at_most_a_tenth_of_the_peers_handed_to_honest_nodes(source: str) -> None:
    t = tracker()
    honest = [f"10.{1 + i // 2}.0.{1 + i % 2}" for i in range(20)]  # ten /24s, two public addresses each
    for ip in honest:
        t.announce(Announce(IH, ip.encode(), ip, 6881, 1, "", 50, "farm-7"), now=0)
    flood = random.Random(9)
    for i in range(20_000):
        ip = "198.51.100.1" if source == "one address" else f"198.51.100.{1 + i % 254}"
        t.announce(Announce(IH, flood.randbytes(20), ip, flood.randrange(1, 65536), 1, "", 50, "farm-7"), now=1)
    assert len(t.peers_of(IH)) <= len(honest) + (PER_ADDRESS if source == "one address" else PER_PREFIX)
    handed = [
        ip
        for ip_ in honest
        for ip in ips_of(t.announce(Announce(IH, ip_.encode(), ip_, 6881, 1, "", 50, "farm-7"), now=2))
    ]
    strangers = sum(1 for ip in handed if ip.startswith("198.51.100."))
    assert set(honest) <= set(handed)
    assert strangers / len(handed) <= 0.10, (strangers, len(handed))


async def test_announce_over_http() -> None:
    t = Tracker({IH}.__contains__, interval=30)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, t.handle, "127.0.0.1", 0)
        base = f"http://127.0.0.1:{port}"
        with trio.fail_after(10):
            async with httpx.AsyncClient() as client:
                first = await client.get(f"{base}/announce?{query(info_hash=IH, peer_id=b'a' * 20, port=5001)}")
                second = await client.get(f"{base}/announce?{query(info_hash=IH, peer_id=b'b' * 20, port=5002)}")
                bad = await client.get(f"{base}/announce?{query(info_hash=b'x', peer_id=b'b', port=5002)}")
                unknown = await client.get(f"{base}/announce?{query(info_hash=bytes(20), peer_id=b'c', port=5003)}")
        nursery.cancel_scope.cancel()
    assert first.status_code == second.status_code == 200
    assert compact(bdecode(second.content)[b"peers"]) == [("127.0.0.1", 5001)]  # type: ignore[index,arg-type]
    assert bad.status_code == 400
    assert b"failure reason" in bad.content
    # a well-formed announce for a torrent it does not serve: 200, so that libtorrent shows the reason
    assert unknown.status_code == 200
    assert bdecode(unknown.content) == {
        b"failure reason": b"unknown torrent: this tracker serves only the torrents of the grid's images"
    }
    assert t.torrents == 1


def nat_announce(peer_id: bytes, ip: str, port: int, *, left: int = 1) -> Announce:
    return Announce(IH, peer_id, ip, port, left, "", 50, "")


def test_hosts_sharing_one_address_with_distinct_ports_are_all_kept_and_listed() -> None:
    t = tracker()
    for i in range(3):  # three hosts behind one router, each with its own mapped port
        t.announce(nat_announce(b"host%d" % i, "10.0.0.1", 7000 + i), now=0)
    answer = t.announce(nat_announce(b"far", "10.9.0.1", 6881), now=0)
    assert sorted(compact(answer[b"peers"])) == [("10.0.0.1", 7000), ("10.0.0.1", 7001), ("10.0.0.1", 7002)]  # type: ignore[arg-type]
    assert sorted(t.peers_of(IH)) == sorted([*(("10.0.0.1", 7000 + i) for i in range(3)), ("10.9.0.1", 6881)])


def test_a_nat_farm_on_one_address_and_port_is_one_endpoint() -> None:
    t = tracker()
    for i in range(4):  # a farm behind one router: every host listens on 6881
        answer = t.announce(nat_announce(b"host%d" % i, "10.0.0.1", 6881), now=0)
        assert compact(answer[b"peers"]) == []  # type: ignore[arg-type]  # its farm-mates look like itself: LSD finds them
    answer = t.announce(nat_announce(b"far", "10.9.0.1", 6881), now=0)
    assert compact(answer[b"peers"]) == [("10.0.0.1", 6881)]  # type: ignore[arg-type]
    assert answer[b"incomplete"] == 5


def test_a_seed_fetching_an_image_counts_as_complete() -> None:
    fetching: set[bytes] = set()
    t = Tracker({IH}.__contains__, committed=fetching.__contains__)
    assert t.announce(nat_announce(b"node", "10.0.0.2", 6881), now=0)[b"complete"] == 0
    fetching.add(IH)
    answer = t.announce(nat_announce(b"node", "10.0.0.2", 6881), now=1)
    assert (answer[b"complete"], answer[b"incomplete"]) == (1, 1)
    done = t.announce(nat_announce(b"other", "10.0.0.3", 6881, left=0), now=2)
    assert done[b"complete"] == 2
