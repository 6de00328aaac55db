"""The swarm port's flood guard: no address, and no /24 (IPv4) or /48 (IPv6), may hold more than its share of the
session's inbound connections; one that does is blocked for a while.

Owns the count of live inbound connections per source (fed by libtorrent's accept and disconnect news) and the
decision which addresses or prefixes are blocked until when. The session turns the blocked set into an ip_filter.

Why a guard of our own (docs/security.md): libtorrent accepts inbound connections up to ``connections_limit`` plus
some slack, from anyone, and a connection that never completes its handshake holds its slot for ``handshake_timeout``.
One address re-opening connections in a loop keeps the slots full and honest peers out (measured: two honest
leechers got 0 of 36 pieces in 30 s). libtorrent's only per-address control, ``allow_multiple_connections_per_ip =
False``, stops the handshaken ones but not the idle ones (measured: the honest leechers still waited ~28 s), and it
would also cut a farm behind one NAT to one connection per torrent. The guard counts every inbound connection,
handshaken or not, and stops an address (a prefix) at a quarter (a half) of the limit: room for a farm behind one
NAT, and always room left for everyone else. It acts only when slots are scarce (half the limit in use): a farm
behind one NAT with more nodes than a quarter of an idle seed's slots harms nobody and keeps its seed. Addresses on
the node's local network (``addresses``: its own farm) are not counted; loopback is, as the lab's stand-in for the
internet.

It must not know libtorrent, trio, sockets or the clock: times come in as ``now``.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field

from .addresses import from_internet

BAN_S = 60.0
"""How long a source that took more than its share stays blocked."""


def share_of(connections_limit: int) -> tuple[int, int]:
    """(per address, per prefix): a quarter and a half of the session's connection limit, at least 4 and 8."""
    return max(4, connections_limit // 4), max(8, connections_limit // 2)


def prefix_range(ip: str) -> tuple[str, str]:
    """First and last address of the /24 (IPv4) or /48 (IPv6) holding ``ip``."""
    address = ipaddress.ip_address(ip)
    network = ipaddress.ip_network(f"{address}/{24 if address.version == 4 else 48}", strict=False)
    return str(network.network_address), str(network.broadcast_address)


@dataclass
class FloodGuard:
    per_address: int
    per_prefix: int
    ban_s: float = BAN_S
    crowded: int = 0
    """Live inbound connections from which on the shares are enforced (the session: half its limit)."""
    max_tracked: int = 100_000
    """Live connections remembered at most (if disconnect news got lost, counting starts over)."""
    live: dict[tuple[str, int], str] = field(default_factory=dict)
    """(address, port) of each live inbound connection -> the first address of the prefix it counts against ("":
    none, its address was blocked: libtorrent may accept a few more before the block lands, and those must not make
    its neighbours look guilty)."""
    by_address: Counter[str] = field(default_factory=Counter)
    by_prefix: Counter[str] = field(default_factory=Counter)
    blocked: dict[tuple[str, str], float] = field(default_factory=dict)
    """Blocked ranges (first, last address; one address: first == last) -> until when."""

    def opened(self, ip: str, port: int, now: float) -> bool:
        """An inbound connection from ``ip:port`` was accepted; True if the blocked set grew."""
        if (ip, port) in self.live or not from_internet(ip):
            return False
        if len(self.live) >= self.max_tracked:
            self.forget_connections()
        first, last = prefix_range(ip)
        self.by_address[ip] += 1
        if (ip, ip) in self.blocked or (first, last) in self.blocked:
            self.live[(ip, port)] = ""
            return False
        self.live[(ip, port)] = first
        self.by_prefix[first] += 1
        if len(self.live) < self.crowded:
            return False
        if self.by_address[ip] > self.per_address:
            self.blocked[(ip, ip)] = now + self.ban_s
            for key, counted in self.live.items():
                if key[0] == ip and counted:
                    self.live[key] = ""
                    self._less(self.by_prefix, counted)
            return True
        if self.by_prefix[first] > self.per_prefix:
            self.blocked[(first, last)] = now + self.ban_s
            return True
        return False

    def closed(self, ip: str, port: int) -> None:
        """A connection to or from ``ip:port`` ended (only inbound ones we counted matter)."""
        if (ip, port) not in self.live:
            return
        counted = self.live.pop((ip, port))
        self._less(self.by_address, ip)
        if counted:
            self._less(self.by_prefix, counted)

    @staticmethod
    def _less(counter: Counter[str], key: str) -> None:
        counter[key] -= 1
        if counter[key] <= 0:
            del counter[key]

    def lift(self, now: float) -> bool:
        """Unblock what is due; True if the blocked set shrank."""
        due = [source for source, until in self.blocked.items() if until <= now]
        for source in due:
            del self.blocked[source]
        return bool(due)

    def next_lift(self) -> float | None:
        return min(self.blocked.values(), default=None)

    def forget_connections(self) -> None:
        """Start counting over (after lost news); blocks stay until they expire."""
        self.live.clear()
        self.by_address.clear()
        self.by_prefix.clear()
