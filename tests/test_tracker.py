"""The seed's HTTP tracker: announce parsing, the peer table, nearest-first order, and a real HTTP round trip."""

from __future__ import annotations

import ipaddress
import random
import urllib.parse

import httpx
import pytest
import trio

from p2pchunks.formats.bencoding import bdecode
from p2pchunks.http.server import serve_http
from p2pchunks.swarm.tracker import Announce, AnnounceError, Tracker, parse_announce

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


def test_peer_table_join_leave_expire_and_counts() -> None:
    tracker = Tracker(interval=60, rng=random.Random(1))
    tracker.announce(announce("127.0.0.2", 1000, left=0), now=0)
    tracker.announce(announce("127.0.0.3", 1000), now=0)
    reply = tracker.announce(announce("127.0.0.4", 1000), now=10)
    assert (reply[b"complete"], reply[b"incomplete"]) == (1, 2)
    assert sorted(compact(reply[b"peers"])) == [("127.0.0.2", 1000), ("127.0.0.3", 1000)]  # type: ignore[arg-type]
    tracker.announce(announce("127.0.0.3", 1000, event="stopped"), now=20)
    assert sorted(tracker.peers_of(IH)) == [("127.0.0.2", 1000), ("127.0.0.4", 1000)]
    reply = tracker.announce(announce("127.0.0.4", 1000), now=200)  # .2 silent for 200 s > 2.5 intervals
    assert compact(reply[b"peers"]) == []  # type: ignore[arg-type]


def test_same_farm_comes_before_address_closeness() -> None:
    tracker = Tracker(rng=random.Random(3))
    tracker.announce(announce("10.1.2.4", 7000, farm="b"), now=0)
    tracker.announce(announce("192.168.9.9", 7000, farm="a"), now=0)
    reply = tracker.announce(announce("10.1.2.3", 7000, farm="a"), now=1)
    assert [ip for ip, _ in compact(reply[b"peers"])] == ["192.168.9.9", "10.1.2.4"]  # type: ignore[arg-type]
    parsed = parse_announce(query(info_hash=IH, peer_id=b"x", port=1, farm="a"), "127.0.0.9")
    assert parsed.farm == "a"


def test_nearest_peers_come_first() -> None:
    tracker = Tracker(rng=random.Random(7))
    for ip in ["10.9.0.1", "192.168.5.3", "10.1.2.4", "10.1.2.9", "172.16.0.1"]:
        tracker.announce(announce(ip, 7000), now=0)
    reply = tracker.announce(announce("10.1.2.3", 7000), now=1)
    order = [ip for ip, _ in compact(reply[b"peers"])]  # type: ignore[arg-type]
    assert order[:2] in (["10.1.2.4", "10.1.2.9"], ["10.1.2.9", "10.1.2.4"])
    assert order[2] == "10.9.0.1"


async def test_announce_over_http() -> None:
    tracker = Tracker(interval=30)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, tracker.handle, "127.0.0.1", 0)
        base = f"http://127.0.0.1:{port}"
        with trio.fail_after(10):
            async with httpx.AsyncClient() as client:
                first = await client.get(f"{base}/announce?{query(info_hash=IH, peer_id=b'a' * 20, port=5001)}")
                second = await client.get(f"{base}/announce?{query(info_hash=IH, peer_id=b'b' * 20, port=5002)}")
                bad = await client.get(f"{base}/announce?{query(info_hash=b'x', peer_id=b'b', port=5002)}")
        nursery.cancel_scope.cancel()
    assert first.status_code == second.status_code == 200
    assert compact(bdecode(second.content)[b"peers"]) == [("127.0.0.1", 5001)]  # type: ignore[index,arg-type]
    assert bad.status_code == 400
    assert b"failure reason" in bad.content


def nat_announce(peer_id: bytes, ip: str, port: int, *, left: int = 1) -> Announce:
    return Announce(IH, peer_id, ip, port, left, "", 50, "")


def test_hosts_sharing_one_address_with_distinct_ports_are_all_kept_and_listed() -> None:
    tracker = Tracker(rng=random.Random(1))
    for i in range(3):  # three hosts behind one router, each with its own mapped port
        tracker.announce(nat_announce(b"host%d" % i, "10.0.0.1", 7000 + i), now=0)
    answer = tracker.announce(nat_announce(b"far", "10.9.0.1", 6881), now=0)
    assert sorted(compact(answer[b"peers"])) == [("10.0.0.1", 7000), ("10.0.0.1", 7001), ("10.0.0.1", 7002)]
    assert sorted(tracker.peers_of(IH)) == sorted([*(("10.0.0.1", 7000 + i) for i in range(3)), ("10.9.0.1", 6881)])


def test_a_nat_farm_on_one_address_and_port_is_one_endpoint() -> None:
    tracker = Tracker(rng=random.Random(1))
    for i in range(4):  # a farm behind one router: every host listens on 6881
        answer = tracker.announce(nat_announce(b"host%d" % i, "10.0.0.1", 6881), now=0)
        assert compact(answer[b"peers"]) == []  # its farm-mates look like itself: they find each other by LSD
    answer = tracker.announce(nat_announce(b"far", "10.9.0.1", 6881), now=0)
    assert compact(answer[b"peers"]) == [("10.0.0.1", 6881)]
    assert answer[b"incomplete"] == 5


def test_a_seed_fetching_an_image_counts_as_complete() -> None:
    fetching: set[bytes] = set()
    tracker = Tracker(committed=fetching.__contains__)
    assert tracker.announce(nat_announce(b"node", "10.0.0.2", 6881), now=0)[b"complete"] == 0
    fetching.add(IH)
    answer = tracker.announce(nat_announce(b"node", "10.0.0.2", 6881), now=1)
    assert (answer[b"complete"], answer[b"incomplete"]) == (1, 1)
    done = tracker.announce(nat_announce(b"other", "10.0.0.3", 6881, left=0), now=2)
    assert done[b"complete"] == 2
