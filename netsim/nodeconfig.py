"""What each process of a run starts from: the image it publishes, and each agent's TOML config.

Owns the agents' configuration in a run (listen addresses, strict NAT as the backend models it, caps where the
backend does not enforce them on the links, discovery through the seeds) and the test image. It must not know how
processes are started nor what a run measures.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from .topology import NodeSpec, Topology

API_PORT = 7760
SWARM_PORT = 6881
TRACKER_PORT = 6969


def make_image(root: Path, size_bytes: int, hot_fraction: float, seed: int) -> list[str]:
    """A VM-like tree: a hot ``boot/`` part (``hot_fraction`` of the bytes) and a big ``disk.raw``."""
    rng = random.Random(seed)
    (root / "boot").mkdir(parents=True, exist_ok=True)
    hot = max(1, int(size_bytes * hot_fraction))
    (root / "boot" / "kernel").write_bytes(rng.randbytes(hot))
    with (root / "disk.raw").open("wb") as fh:
        left = size_bytes - hot
        while left > 0:
            n = min(left, 4 * 2**20)
            fh.write(rng.randbytes(n))
            left -= n
    return ["boot/kernel"]


def node_config(
    topo: Topology,
    node: NodeSpec,
    address: str,
    hub_url: str | list[str],
    work: Path,
    seeds: list[str],
    extra: dict[str, dict[str, Any]] | None = None,
    routers: list[str] | None = None,
    *,
    nat_standin: bool = True,
    shapes_links: bool = False,
) -> str:
    """The TOML config of one node. DHT bootstrap: the seeds, else ``routers`` (the farm's first node).

    ``nat_standin``: a NAT node refuses inbound connections itself (the loopback backend's stand-in for a router);
    where routers do the blocking (netns) it keeps inbound on, as an operator behind a strict NAT does.
    ``shapes_links``: the backend caps the links itself; libtorrent gets no rate limit."""

    def mbps(value: float | None) -> int:
        return 0 if value is None or shapes_links else int(value * 1e6 / 8)

    trackers = [f"http://{s}:{TRACKER_PORT}/announce" for s in seeds]
    bootstrap = [f"{s}:{SWARM_PORT}" for s in (seeds or routers or []) if s != address]
    sections: dict[str, dict[str, Any]] = {
        "agent": {
            "cache_dir": str(work / "nodes" / node.name),
            "hub": hub_url,
            "farm": node.farm,
            "mode": "seed" if node.role == "seed" else "node",
        },
        "api": {"listen": f"{address}:{API_PORT}"},
        "swarm": {
            "enabled": topo.swarm,
            "listen": f"{address}:{SWARM_PORT}",
            "inbound": node.public or not nat_standin,
            "utp": False,
            "lsd": True,
            "dht": True,
            # a lab packs its nodes into few /24s (127.0.0.x; the netns lab's public half): libtorrent's DHT guards
            # (one node per /24) would hide them from each other
            "relaxed_dht": True,
            "upload_rate_bps": mbps(node.up_mbps),
            "download_rate_bps": mbps(node.down_mbps),
            "limit_local_peers": True,
            "bootstrap": bootstrap,
            "trackers": trackers,
        },
        "cache": {"budget_bytes": 64 * 2**30},
        "fetch": {"hub_timeout_s": 30.0, "job_timeout_s": 3600.0},
        "tracker": {"enabled": node.role == "seed", "listen": f"{address}:{TRACKER_PORT}"},
        "warm": {"official": False},
    }
    for name, values in (extra or {}).items():
        sections.setdefault(name, {}).update(values)
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)
