"""Who sent what to whom in a run: each node's bytes by source (hub, farm-mates, seeds, other farms), what each node
uploaded, and what crossed each NAT farm's WAN link.

Owns classifying the peer addresses an agent reports (``/status`` → ``peer_bytes``: payload per address, as that
agent sees it) into peer classes, from the topology and the addresses the backend gave the nodes: a host of the
same LAN is seen by its own address, any other NAT node by its router's (``seen_as``), so a public seed sees a
whole NAT farm as one address. Pure: plain data in, plain data out; it must not know processes, HTTP or backends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .topology import NodeSpec, Topology

PEER_CLASSES = ("farm", "seed", "other", "unknown")
"""``farm``: a farm-mate; ``seed``: a seed; ``other``: a node of another farm; ``unknown``: no node of the run
(should not happen: a count there means the address map is wrong)."""


@dataclass(frozen=True)
class Addresses:
    """Where the backend put each node: its own address, and the one hosts outside its LAN see."""

    own: Mapping[str, str]
    seen_as: Mapping[str, str]


def visible_address(observer: NodeSpec, other: NodeSpec, addresses: Addresses) -> str:
    """The address ``observer`` sees ``other``'s connections come from: its own, unless ``other`` is behind a NAT
    router that ``observer`` is not behind too."""
    same_lan = not observer.public and observer.farm == other.farm
    if other.public or same_lan:
        return addresses.own[other.name]
    return addresses.seen_as[other.name]


def peer_class(observer: NodeSpec, peers: list[NodeSpec]) -> str:
    """The class of one address behind which ``peers`` sit (several: a NAT farm seen from outside)."""
    if not peers:
        return "unknown"
    if all(peer.role == "seed" for peer in peers):
        return "seed"
    if all(peer.farm == observer.farm for peer in peers):
        return "farm"
    return "other"


def classify(
    topo: Topology, observer: NodeSpec, peer_bytes: Mapping[str, Mapping[str, int]], addresses: Addresses
) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes received from and sent to each peer class by ``observer`` (``peer_bytes``: ``{ip: {down, up}}``)."""
    behind: dict[str, list[NodeSpec]] = {}
    for other in topo.nodes:
        if other.name != observer.name:
            behind.setdefault(visible_address(observer, other, addresses), []).append(other)
    down = dict.fromkeys(PEER_CLASSES, 0)
    up = dict.fromkeys(PEER_CLASSES, 0)
    for ip, counts in peer_bytes.items():
        cls = peer_class(observer, behind.get(ip, []))
        down[cls] += int(counts.get("down", 0))
        up[cls] += int(counts.get("up", 0))
    return down, up


def node_account(
    topo: Topology,
    node: NodeSpec,
    from_hub: int,
    peer_bytes: Mapping[str, Mapping[str, int]],
    addresses: Addresses,
    done_s: float | None = None,
) -> dict[str, Any]:
    """One node's line of the result's ``per_node``."""
    down, up = classify(topo, node, peer_bytes, addresses)
    return {
        "farm": node.farm,
        "role": node.role,
        "fetches": node.fetches,
        "done_s": None if done_s is None else round(done_s, 3),
        "from_hub": from_hub,
        "from_peers": down,
        "to_peers": up,
        "uploaded": sum(up.values()),
    }


def totals(per_node: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Bytes received by fetching nodes by source, and uploaded by seeds, over the whole run."""
    out = {"from_hub": 0, **{f"from_{cls}": 0 for cls in PEER_CLASSES}, "seed_upload": 0}
    for line in per_node.values():
        if line["fetches"]:
            out["from_hub"] += line["from_hub"]
            for cls in PEER_CLASSES:
                out[f"from_{cls}"] += line["from_peers"][cls]
        if line["role"] == "seed":
            out["seed_upload"] += line["uploaded"]
    return out


def wan_usage(before: Mapping[str, tuple[int, int]], after: Mapping[str, tuple[int, int]]) -> dict[str, dict[str, int]]:
    """Bytes that entered and left each NAT farm during the run (router WAN counters, headers included)."""
    out = {}
    for farm, (received, sent) in after.items():
        start = before.get(farm, (0, 0))
        out[farm] = {"in_bytes": received - start[0], "out_bytes": sent - start[1]}
    return out
