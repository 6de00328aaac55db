"""Payload bytes exchanged with each peer address, over every connection: what a node got from whom, and what it
served (a volunteer seed shows its contribution with it).

Owns the ledger. libtorrent counts payload per connection (``peer_info.total_download`` / ``total_upload``) and
forgets a connection once it closes; the ledger keeps the last counts it read of each live connection and, when a
connection is gone (or its counts went down: a new connection on the same endpoint), folds them into its address's
closed total. Resolution: what a connection moves between the last read and its close is not counted, so the swarm
reads often (every second, and on every status request). Addresses are as this node sees them: behind a NAT, every
host of a farm seen from outside is its router's address.

Pure bookkeeping: it must not know libtorrent (``session.Torrent.peer_counters`` reads the counters) nor who the
addresses are (netsim classifies them; it knows the topology).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

Connection = tuple[str, str, int]
"""``(infohash, peer ip, peer port)``: one connection of one torrent."""


@dataclass(frozen=True, slots=True)
class ConnectionCount:
    """One live connection's payload counts as libtorrent reports them (since it opened)."""

    infohash: str
    ip: str
    port: int
    down: int
    up: int


@dataclass(frozen=True, slots=True)
class PeerBytes:
    down: int = 0
    """Payload bytes received from the address."""
    up: int = 0
    """Payload bytes sent to the address."""


class PeerLedger:
    """Payload bytes per peer address, accumulated over connections that came and went."""

    def __init__(self) -> None:
        self._closed: dict[str, PeerBytes] = {}
        self._live: dict[Connection, ConnectionCount] = {}

    def update(self, counts: Iterable[ConnectionCount]) -> None:
        """Take one reading of every live connection (those absent are closed)."""
        fresh: dict[Connection, ConnectionCount] = {}
        for count in counts:
            key = (count.infohash, count.ip, count.port)
            last = self._live.get(key)
            if last is not None and (count.down < last.down or count.up < last.up):
                self._close(last)  # the same endpoint on a new connection: counts restarted
            fresh[key] = count
        for key, last in self._live.items():
            if key not in fresh:
                self._close(last)
        self._live = fresh

    def _close(self, count: ConnectionCount) -> None:
        total = self._closed.get(count.ip, PeerBytes())
        self._closed[count.ip] = PeerBytes(total.down + count.down, total.up + count.up)

    def totals(self) -> dict[str, PeerBytes]:
        """Bytes per address: closed connections plus the live ones as last read."""
        out = dict(self._closed)
        for count in self._live.values():
            total = out.get(count.ip, PeerBytes())
            out[count.ip] = PeerBytes(total.down + count.down, total.up + count.up)
        return out

    @property
    def downloaded(self) -> int:
        return sum(total.down for total in self.totals().values())

    @property
    def uploaded(self) -> int:
        return sum(total.up for total in self.totals().values())

    def as_json(self) -> dict[str, dict[str, int]]:
        """``{ip: {"down": bytes, "up": bytes}}``, addresses sorted."""
        return {ip: {"down": b.down, "up": b.up} for ip, b in sorted(self.totals().items())}
