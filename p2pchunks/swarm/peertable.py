"""The peer table of one torrent on a seed's tracker: who may hold how many entries, and who gives way.

Owns the entries (one per source address and peer id), the caps that keep one source from filling the table (per
address, per /24 for IPv4 or /48 for IPv6, per torrent), which entry gives way when a cap is reached, and expiry.

Theory of operation. The tracker sees each announce's TCP source address and nothing else it can trust: a peer id,
a port, a farm claim are whatever the announcer wrote. So an entry is keyed by (address, peer id), and an announce
can only create, refresh or remove entries of its own address. A source that reaches a cap makes room by losing
its own stalest entry; a newcomer to a full table takes the stalest entry of the prefix holding the most entries.
One address, or one /24, flooding announces therefore churns through its own entries and nobody else's, and the
table never refuses an honest peer. Entries live ``2.5 x interval`` past their last announce (``expire``).

It must not know sockets, HTTP, trio or the clock (times come in as ``now``); the order in which peers are
handed out is :mod:`peermix`'s business.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

PER_ADDRESS = 256
"""Entries one address may hold in one torrent: a farm of up to 256 nodes behind one NAT (docs/security.md)."""
PER_PREFIX = 512
"""Entries one /24 (IPv4) or /48 (IPv6) may hold in one torrent: two such farms, or a /24 of public nodes."""
PER_TORRENT = 2000
"""Entries of one torrent: at least four prefixes must share a full table."""


def packed(ip: str) -> bytes:
    """The address as 4 or 16 bytes; an IPv4-mapped IPv6 address counts as its IPv4 address."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.packed


def prefix_of(address: bytes) -> bytes:
    """The /24 of an IPv4 address, the /48 of an IPv6 one: what one operator is likely to hold."""
    return address[:3] if len(address) == 4 else address[:6]


@dataclass(slots=True)
class Entry:
    address: bytes
    peer_id: bytes
    port: int
    left: int
    seen: float
    farm: str

    @property
    def compact(self) -> bytes:
        """BEP 23 / BEP 7 compact form: address bytes then the port, big-endian."""
        return self.address + self.port.to_bytes(2, "big")

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_address(self.address))


@dataclass(slots=True)
class Prefix:
    """The entries of one /24 or /48, by address (each address's peer ids oldest first)."""

    key: bytes
    addresses: dict[bytes, OrderedDict[bytes, Entry]] = field(default_factory=dict)
    order: OrderedDict[tuple[bytes, bytes], Entry] = field(default_factory=OrderedDict)
    """Every entry of the prefix, least recently seen first."""
    farms: Counter[str] = field(default_factory=Counter)

    @property
    def count(self) -> int:
        return len(self.order)


class PeerTable:
    """The peers of one torrent. ``put``/``drop`` on announces, ``expire`` before answering."""

    def __init__(self, per_address: int = PER_ADDRESS, per_prefix: int = PER_PREFIX, capacity: int = PER_TORRENT):
        if not 1 <= per_address <= per_prefix <= capacity:
            raise ValueError("caps must satisfy 1 <= per_address <= per_prefix <= capacity")
        self.per_address = per_address
        self.per_prefix = per_prefix
        self.capacity = capacity
        self.order: OrderedDict[tuple[bytes, bytes], Entry] = OrderedDict()
        """Every entry, least recently seen first."""
        self.prefixes: dict[bytes, Prefix] = {}
        self.seeds = 0

    def __len__(self) -> int:
        return len(self.order)

    def entries(self) -> list[Entry]:
        return list(self.order.values())

    def held_by(self, address: bytes) -> OrderedDict[bytes, Entry]:
        """The entries of ``address`` (peer id -> entry, oldest first); empty if none."""
        prefix = self.prefixes.get(prefix_of(address))
        held = prefix.addresses.get(address) if prefix is not None else None
        return held if held is not None else OrderedDict()

    def put(self, address: bytes, peer_id: bytes, port: int, left: int, farm: str, now: float) -> None:
        """Record an announce of ``peer_id`` from ``address`` (a refresh if it is already there)."""
        entry = self.order.get((address, peer_id))
        if entry is not None:
            self.order.move_to_end((address, peer_id))
            group = self.prefixes[prefix_of(address)]
            group.addresses[address].move_to_end(peer_id)
            group.order.move_to_end((address, peer_id))
            self.seeds += (left == 0) - (entry.left == 0)
            if entry.farm != farm:
                self._count_farm(group, entry.farm, -1)
                self._count_farm(group, farm, +1)
            entry.port, entry.left, entry.seen, entry.farm = port, left, now, farm
            return
        self._make_room(address)
        entry = Entry(address, peer_id, port, left, now, farm)
        self.order[(address, peer_id)] = entry
        key = prefix_of(address)
        group = self.prefixes.get(key) or self.prefixes.setdefault(key, Prefix(key))
        group.addresses.setdefault(address, OrderedDict())[peer_id] = entry
        group.order[(address, peer_id)] = entry
        self._count_farm(group, farm, +1)
        self.seeds += left == 0

    def drop(self, address: bytes, peer_id: bytes) -> None:
        """Forget ``peer_id`` of ``address`` (a ``stopped`` event); entries of other addresses are out of reach."""
        entry = self.order.get((address, peer_id))
        if entry is not None:
            self._remove(entry)

    def expire(self, before: float) -> None:
        """Forget every entry last seen before ``before``."""
        while self.order:
            oldest = next(iter(self.order.values()))
            if oldest.seen >= before:
                break
            self._remove(oldest)

    def _make_room(self, address: bytes) -> None:
        group = self.prefixes.get(prefix_of(address))
        if group is not None:
            own = group.addresses.get(address)
            if own is not None and len(own) >= self.per_address:
                self._remove(next(iter(own.values())))
                return
            if group.count >= self.per_prefix:
                self._remove(next(iter(group.order.values())))
                return
        if len(self.order) >= self.capacity:
            largest = max(self.prefixes.values(), key=lambda g: g.count)
            # every prefix holding one entry: nobody is crowding, the table's stalest entry goes
            victim = next(iter((largest if largest.count > 1 else self).order.values()))
            self._remove(victim)

    def _remove(self, entry: Entry) -> None:
        del self.order[(entry.address, entry.peer_id)]
        key = prefix_of(entry.address)
        group = self.prefixes[key]
        own = group.addresses[entry.address]
        del own[entry.peer_id]
        if not own:
            del group.addresses[entry.address]
        del group.order[(entry.address, entry.peer_id)]
        self._count_farm(group, entry.farm, -1)
        if not group.count:
            del self.prefixes[key]
        self.seeds -= entry.left == 0

    @staticmethod
    def _count_farm(group: Prefix, farm: str, delta: int) -> None:
        if not farm:
            return
        group.farms[farm] += delta
        if group.farms[farm] <= 0:
            del group.farms[farm]
