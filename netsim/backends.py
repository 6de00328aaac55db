"""Where a run's processes live and how the harness reaches them: the ``Backend`` protocol and the loopback backend.

The netns backend (``netns_backend.py``) implements the same protocol with network namespaces.
"""

from __future__ import annotations

import random
import socket
import subprocess
from pathlib import Path
from typing import Protocol

import httpx

from .topology import NodeSpec


class Backend(Protocol):
    """Where processes run and how they are addressed."""

    hub_address: str
    nat_standin: bool
    """True: strict NAT is the agents' ``swarm.inbound = false`` (a NAT node refuses everyone, farm-mates too, and
    farm WAN caps are not enforced: ``bound.loopback_standin``). False: routers enforce it, as on a real farm."""
    shapes_links: bool
    """True: the backend enforces node caps on the links (tbf), so agents get no libtorrent rate limits (both at once
    slow a 16 MiB transfer at 100 Mbit/s from 1.9 s to 4.4 s in the lab). False: libtorrent enforces them."""

    def address(self, node: NodeSpec) -> str: ...

    def seen_as(self, node: NodeSpec) -> str:
        """The address hosts outside the node's LAN see its connections come from (its router's, behind NAT)."""
        ...

    def wan_bytes(self) -> dict[str, tuple[int, int]]:
        """Bytes (received, sent) so far through each NAT farm's router WAN port (empty: no routers)."""
        ...

    def spawn(self, host: str | None, argv: list[str], log: Path) -> subprocess.Popen[bytes]: ...

    def http_transport(self) -> httpx.AsyncBaseTransport | None:
        """How the harness's HTTP client reaches the hub and the APIs (``None``: directly)."""
        ...

    def close(self) -> None: ...


class LoopbackBackend:
    """Every node a process on its own 127.0.0.x; strict NAT via ``inbound = false``; caps via libtorrent."""

    hub_address = "127.0.0.1"
    nat_standin = True
    shapes_links = False

    def address(self, node: NodeSpec) -> str:
        return node.address

    def seen_as(self, node: NodeSpec) -> str:
        return node.address

    def wan_bytes(self) -> dict[str, tuple[int, int]]:
        return {}

    def spawn(self, host: str | None, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def http_transport(self) -> httpx.AsyncBaseTransport | None:
        return None

    def close(self) -> None:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A port for a child to bind on ``host``, from below the kernel's ephemeral range (32768 and up on Linux), so
    no port-0 bind (agents, tests, clients) can take it between this probe and the child's bind; random, so two
    callers do not pick the same one. (``p2pchunks hub serve`` also takes port 0 and prints its ports as one JSON
    line, which is race-free where the caller can read that line.)"""
    for _ in range(50):
        port = random.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        return port
    raise OSError(f"no free port on {host} below the ephemeral range")
