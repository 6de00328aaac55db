"""Where a peer's address is: on this node's local network, or somewhere a stranger could be.

Owns the one rule both the farm view (who is a farm-mate) and the flood guard (whose connections count) use: an
address of a private, loopback or link-local range (IPv4 and IPv6; an IPv4-mapped IPv6 address as its IPv4) is on
the local network, the ranges libtorrent itself puts in its local peer class. Everything else, carrier-grade NAT
(100.64.0.0/10, other customers of the same ISP) included, is not.
"""

from __future__ import annotations

import ipaddress

__all__ = ["from_internet", "on_local_network"]

_PRIVATE = tuple(ipaddress.ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))


def on_local_network(ip: str) -> bool:
    """An address of this node's local network: private, loopback or link-local (IPv4 and IPv6)."""
    address = _parse(ip)
    return address is not None and bool(
        address.is_loopback
        or address.is_link_local
        or any(address in net for net in _PRIVATE if net.version == address.version)
    )


def from_internet(ip: str) -> bool:
    """Whether ``ip`` may be a stranger's: anything off the local network, and loopback (the lab's internet)."""
    address = _parse(ip)
    return address is None or address.is_loopback or not on_local_network(ip)


def _parse(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, an IPv4-mapped IPv6 address as its IPv4; None if ``ip`` is not an address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
