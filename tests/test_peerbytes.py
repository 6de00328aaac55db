"""The peer ledger: payload bytes per peer address, accumulated over connections that come and go (pure)."""

from __future__ import annotations

from p2pchunks.swarm.peerbytes import ConnectionCount, PeerBytes, PeerLedger

IH, OTHER = "aa" * 32, "bb" * 32


def conn(ip: str, port: int, down: int, up: int, infohash: str = IH) -> ConnectionCount:
    return ConnectionCount(infohash, ip, port, down, up)


def test_live_connections_are_summed_per_address() -> None:
    ledger = PeerLedger()
    ledger.update([conn("10.0.0.2", 6881, 100, 5), conn("10.0.0.2", 40000, 50, 7), conn("10.0.0.3", 6881, 1, 2)])
    assert ledger.totals() == {"10.0.0.2": PeerBytes(150, 12), "10.0.0.3": PeerBytes(1, 2)}
    assert (ledger.downloaded, ledger.uploaded) == (151, 14)


def test_a_closed_connection_keeps_its_last_counts() -> None:
    ledger = PeerLedger()
    ledger.update([conn("10.0.0.2", 6881, 100, 5)])
    ledger.update([conn("10.0.0.2", 6881, 300, 9)])
    ledger.update([])  # closed
    ledger.update([conn("10.0.0.2", 51000, 10, 1)])  # the same address comes back on another connection
    assert ledger.totals() == {"10.0.0.2": PeerBytes(310, 10)}


def test_counts_going_down_on_one_endpoint_are_a_new_connection() -> None:
    ledger = PeerLedger()
    ledger.update([conn("10.0.0.2", 6881, 500, 50)])
    ledger.update([conn("10.0.0.2", 6881, 20, 3)])  # reconnected between two reads
    assert ledger.totals() == {"10.0.0.2": PeerBytes(520, 53)}


def test_the_same_peer_in_two_torrents_is_two_connections() -> None:
    ledger = PeerLedger()
    ledger.update([conn("10.0.0.2", 6881, 100, 0), conn("10.0.0.2", 6881, 40, 0, OTHER)])
    ledger.update([conn("10.0.0.2", 6881, 100, 0)])  # the other torrent's connection closed
    assert ledger.totals() == {"10.0.0.2": PeerBytes(140, 0)}


def test_as_json_sorts_addresses() -> None:
    ledger = PeerLedger()
    ledger.update([conn("10.0.0.9", 1, 1, 2), conn("10.0.0.10", 1, 3, 4)])
    assert ledger.as_json() == {"10.0.0.10": {"down": 3, "up": 4}, "10.0.0.9": {"down": 1, "up": 2}}
    assert PeerLedger().as_json() == {}
