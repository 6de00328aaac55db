"""What a netsim run looks like: the hub, the nodes, the image, and the NAT farms' WAN links.

Owns the plain description of a scenario (frozen dataclasses) and the generator ``farm()`` for the usual case of
many identical nodes; ``topofile.py`` reads the description from TOML, ``bound.py`` computes from it the bound every
measured and modelled completion time is compared with. It must not know how a scenario is run (processes,
namespaces, agents) nor how it is modelled: the loopback runner, the netns backend and ``model`` all read the same
``Topology``.

Units: sizes in MiB/KiB as written in scenarios, rates in Mbit/s (10^6 bit/s), times in seconds from run start.
A rate of ``None`` means uncapped (an infinite rate in the bound).
"""

from __future__ import annotations

import ipaddress
import itertools
import math
from dataclasses import dataclass, replace
from typing import Literal

from p2pchunks.errors import BadConfig

MIB = 1024 * 1024
KIB = 1024
MBPS = 1_000_000 / 8
"""Bytes per second in one Mbit/s."""

Role = Literal["node", "seed", "nat"]
ROLES: tuple[Role, ...] = ("node", "seed", "nat")
HUB_ADDRESS = "127.0.0.1"
"""The loopback hub address; never given to a node."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise BadConfig(message)


def _check_rate(name: str, value: float | None) -> None:
    _check(value is None or (math.isfinite(value) and value > 0), f"{name} must be a positive number or None: {value}")


def _bps(mbps: float | None) -> float:
    """A rate in bytes per second (``math.inf`` when uncapped)."""
    return math.inf if mbps is None else mbps * MBPS


@dataclass(frozen=True)
class HubSpec:
    latency_ms: float = 50
    rate_mbps: float | None = 200
    protocol: Literal["http", "zdb"] = "http"
    down: tuple[tuple[float, float], ...] = ()
    """Outage windows ``(start_s, end_s)`` from run start."""

    def __post_init__(self) -> None:
        _check(
            math.isfinite(self.latency_ms) and self.latency_ms >= 0, f"hub.latency_ms must be ≥ 0: {self.latency_ms}"
        )
        _check_rate("hub.rate_mbps", self.rate_mbps)
        _check(self.protocol in ("http", "zdb"), f"hub.protocol must be 'http' or 'zdb': {self.protocol!r}")
        for start, end in self.down:
            _check(0 <= start < end, f"hub.down window must satisfy 0 ≤ start < end: {(start, end)}")

    @property
    def rate_bps(self) -> float:
        """Hub egress in bytes per second (``math.inf`` when uncapped)."""
        return _bps(self.rate_mbps)

    def is_down(self, t: float) -> bool:
        return any(start <= t < end for start, end in self.down)


@dataclass(frozen=True, kw_only=True)
class NodeSpec:
    name: str
    farm: str
    role: Role
    up_mbps: float | None
    down_mbps: float | None
    join_s: float = 0
    leave_s: float | None = None
    address: str
    """127.0.0.x for the loopback backend (never 127.0.0.1, the hub's)."""
    starts_full: bool | None = None
    """Holds every image before the clock starts; ``None``: only seeds do."""

    def __post_init__(self) -> None:
        _check(bool(self.name), "node.name must not be empty")
        _check(self.role in ROLES, f"node {self.name}: role must be one of {ROLES}: {self.role!r}")
        _check_rate(f"node {self.name}: up_mbps", self.up_mbps)
        _check_rate(f"node {self.name}: down_mbps", self.down_mbps)
        _check(math.isfinite(self.join_s) and self.join_s >= 0, f"node {self.name}: join_s must be ≥ 0")
        _check(self.leave_s is None or self.leave_s > self.join_s, f"node {self.name}: leave_s must be after join_s")
        try:
            ip = ipaddress.IPv4Address(self.address)
        except ValueError:
            raise BadConfig(f"node {self.name}: address is not an IPv4 address: {self.address!r}") from None
        _check(str(ip) != HUB_ADDRESS, f"node {self.name}: address {HUB_ADDRESS} is reserved for the hub")

    @property
    def fetches(self) -> bool:
        """Seeds start with the image (unless ``starts_full`` is false); every other node fetches it."""
        full = self.role == "seed" if self.starts_full is None else self.starts_full
        return not full

    @property
    def public(self) -> bool:
        """Reachable from anywhere (a NAT node is reachable only from its own farm's LAN)."""
        return self.role != "nat"

    @property
    def up_bps(self) -> float:
        return _bps(self.up_mbps)

    @property
    def down_bps(self) -> float:
        return _bps(self.down_mbps)


@dataclass(frozen=True)
class ImageSpec:
    size_mib: float
    chunk_kib: int = 512
    hot_fraction: float = 0.05
    count: int = 1
    """How many images of ``size_mib`` each (update storm)."""

    def __post_init__(self) -> None:
        _check(math.isfinite(self.size_mib) and self.size_mib > 0, f"image.size_mib must be > 0: {self.size_mib}")
        _check(self.chunk_kib > 0, f"image.chunk_kib must be > 0: {self.chunk_kib}")
        _check(0 <= self.hot_fraction <= 1, f"image.hot_fraction must be within [0, 1]: {self.hot_fraction}")
        _check(self.count >= 1, f"image.count must be ≥ 1: {self.count}")

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_kib * KIB

    @property
    def image_bytes(self) -> int:
        """Bytes of one image."""
        return int(self.size_mib * MIB)

    @property
    def total_bytes(self) -> int:
        """Bytes every fetching node must receive: all images."""
        return self.image_bytes * self.count

    @property
    def hot_bytes(self) -> int:
        """Bytes of one image's boot-critical file (``nodeconfig.make_image`` writes at least one byte of it)."""
        return min(self.image_bytes, max(1, int(self.image_bytes * self.hot_fraction)))

    @property
    def files(self) -> tuple[tuple[int, bool], ...]:
        """``(size, hot)`` of every file of every image, as ``nodeconfig.make_image`` writes them."""
        one = ((self.hot_bytes, True), (self.image_bytes - self.hot_bytes, False))
        return tuple(f for f in one if f[0] > 0) * self.count


@dataclass(frozen=True)
class WanSpec:
    """The WAN link of a NAT farm: what its router passes to and from the outside (``None``: uncapped)."""

    farm: str
    up_mbps: float | None = None
    down_mbps: float | None = None

    def __post_init__(self) -> None:
        _check_rate(f"wan {self.farm}: up_mbps", self.up_mbps)
        _check_rate(f"wan {self.farm}: down_mbps", self.down_mbps)

    @property
    def up_bps(self) -> float:
        return _bps(self.up_mbps)

    @property
    def down_bps(self) -> float:
        return _bps(self.down_mbps)


@dataclass(frozen=True)
class Topology:
    hub: HubSpec
    nodes: tuple[NodeSpec, ...]
    image: ImageSpec
    swarm: bool = True
    stagger_s: float = 0
    wan: tuple[WanSpec, ...] = ()
    """WAN caps of NAT farms (a farm without an entry has an uncapped router)."""
    mirrors: tuple[HubSpec, ...] = ()
    """More hubs serving the same root; every node lists ``hub`` first, then these, in its ``agent.hub``."""

    @property
    def hubs(self) -> tuple[HubSpec, ...]:
        return (self.hub, *self.mirrors)

    def hubs_down(self, t: float) -> bool:
        """Every hub is down at ``t``."""
        return all(hub.is_down(t) for hub in self.hubs)

    def hub_rate_bps(self, t: float) -> float:
        """What the hubs that are up at ``t`` can send together (bytes/s)."""
        return sum(hub.rate_bps for hub in self.hubs if not hub.is_down(t))

    def hub_outages(self) -> list[tuple[float, float]]:
        """The windows during which every hub is down."""
        edges = sorted({edge for hub in self.hubs for window in hub.down for edge in window})
        return [(a, b) for a, b in itertools.pairwise(edges) if self.hubs_down((a + b) / 2)]

    def __post_init__(self) -> None:
        _check(len(self.nodes) > 0, "a topology needs at least one node")
        _check(math.isfinite(self.stagger_s) and self.stagger_s >= 0, f"stagger_s must be ≥ 0: {self.stagger_s}")
        for attr in ("name", "address"):
            seen: set[str] = set()
            for node in self.nodes:
                value = getattr(node, attr)
                _check(value not in seen, f"two nodes share the {attr} {value!r}")
                seen.add(value)
        nat_farms = self.nat_farms()
        linked: set[str] = set()
        for link in self.wan:
            _check(link.farm in nat_farms, f"wan {link.farm!r}: not a farm with NAT nodes (only routers have a WAN)")
            _check(link.farm not in linked, f"wan {link.farm!r} is given twice")
            linked.add(link.farm)

    def nat_farms(self) -> dict[str, list[NodeSpec]]:
        """The NAT nodes of each farm that has some (they sit behind that farm's router), in topology order."""
        out: dict[str, list[NodeSpec]] = {}
        for node in self.nodes:
            if not node.public:
                out.setdefault(node.farm, []).append(node)
        return out

    def wan_of(self, farm: str) -> WanSpec:
        """The WAN link of ``farm``'s router (uncapped when the topology names none)."""
        return next((link for link in self.wan if link.farm == farm), WanSpec(farm))

    def farms(self) -> dict[str, list[NodeSpec]]:
        """Nodes by farm, farms and nodes in topology order."""
        out: dict[str, list[NodeSpec]] = {}
        for node in self.nodes:
            out.setdefault(node.farm, []).append(node)
        return out

    @property
    def fetchers(self) -> tuple[NodeSpec, ...]:
        return tuple(node for node in self.nodes if node.fetches)

    def start_times(self) -> tuple[float, ...]:
        """When each node starts, in node order: ``join_s``, plus ``i * stagger_s`` for the i-th fetching node."""
        out: list[float] = []
        i = 0
        for node in self.nodes:
            out.append(node.join_s + (i * self.stagger_s if node.fetches else 0.0))
            i += node.fetches
        return tuple(out)


def loopback_addresses(first: int, count: int) -> list[str]:
    """``count`` distinct loopback addresses from 127.0.0.<first>, skipping .0 and .255 last octets."""
    _check(first >= 2, f"first_address must be ≥ 2 (127.0.0.1 is the hub's): {first}")
    out: list[str] = []
    value = int(ipaddress.IPv4Address("127.0.0.0")) + first
    while len(out) < count:
        if value & 0xFF not in (0, 255):
            out.append(str(ipaddress.IPv4Address(value)))
        value += 1
    _check(not out or ipaddress.IPv4Address(out[-1]) in ipaddress.IPv4Network("127.0.0.0/8"), "too many nodes")
    return out


def farm(
    n: int,
    *,
    farms: int = 1,
    up_mbps: float | None = 100,
    down_mbps: float | None = 100,
    nat: int = 0,
    seeds: int = 0,
    first_address: int = 2,
) -> tuple[NodeSpec, ...]:
    """``n`` nodes split into ``farms`` contiguous farms (``farm0``…); the first ``seeds`` are seeds, the last
    ``nat`` are behind NAT, the rest plain nodes. Node i gets 127.0.0.(first_address + i) (continuing into
    127.0.1.x past .254)."""
    _check(n >= 1, f"n must be ≥ 1: {n}")
    _check(1 <= farms <= n, f"farms must be within [1, n]: {farms}")
    _check(nat >= 0 and seeds >= 0 and nat + seeds <= n, f"nat + seeds must be within [0, n]: {nat} + {seeds}")
    width = len(str(n - 1))
    addresses = loopback_addresses(first_address, n)
    nodes: list[NodeSpec] = []
    for i in range(n):
        role: Role = "seed" if i < seeds else "nat" if i >= n - nat else "node"
        nodes.append(
            NodeSpec(
                name=f"n{i:0{width}d}",
                farm=f"farm{i * farms // n}",
                role=role,
                up_mbps=up_mbps,
                down_mbps=down_mbps,
                address=addresses[i],
            )
        )
    return tuple(nodes)


def with_churn(nodes: tuple[NodeSpec, ...], count: int, leave_s: float) -> tuple[NodeSpec, ...]:
    """The last ``count`` fetching nodes leave at ``leave_s``."""
    fetching = [i for i, node in enumerate(nodes) if node.fetches]
    _check(0 <= count <= len(fetching), f"churn count must be within [0, {len(fetching)}]: {count}")
    leaving = set(fetching[len(fetching) - count :])
    return tuple(replace(node, leave_s=leave_s) if i in leaving else node for i, node in enumerate(nodes))
