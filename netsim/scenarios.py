"""The named scenarios: each turns command-line knobs into a topology and runs it.

``farm-deploy``  N nodes fetch one image at once (the swarm).
``hub-only``     the same farm with the swarm off: what zos does today.
``nat-behind-seed``  every node behind strict NAT (no inbound) plus one volunteer seed.
``hub-outage``   two hubs (mirrors): the one every node lists first is down for the whole run.
``churn``        a quarter of the nodes leave mid-deploy and as many fresh ones join.
``update-storm`` N nodes warm K official images after a release; staggered (``--stagger-s``) or not.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pchunks.formats.signing import generate_keypair, load_signing_key, sign_file

from .backends import LoopbackBackend
from .runner import Run, RunOptions
from .topology import HubSpec, ImageSpec, NodeSpec, Topology, farm

SCENARIOS = ("farm-deploy", "hub-only", "nat-behind-seed", "hub-outage", "churn", "update-storm")


@dataclass(frozen=True)
class Knobs:
    nodes: int = 4
    image_mib: float = 32
    chunk_kib: int = 512
    hub_latency_ms: float = 50.0
    hub_mbps: float | None = 200.0
    up_mbps: float | None = None
    down_mbps: float | None = None
    farms: int = 1
    images: int = 1
    stagger_s: float = 0.0
    deadline_s: float = 900.0
    backend: str = "loopback"


def topology(name: str, knobs: Knobs) -> Topology:
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    nat = knobs.nodes if name == "nat-behind-seed" else 0
    seeds = 1 if name == "nat-behind-seed" else 0
    nodes = farm(
        knobs.nodes + seeds, farms=knobs.farms, up_mbps=knobs.up_mbps, down_mbps=knobs.down_mbps, nat=nat, seeds=seeds
    )
    down: tuple[tuple[float, float], ...] = ()
    mirrors: tuple[HubSpec, ...] = ()
    if name == "hub-outage":  # every node lists the dead hub first
        down = ((0.0, knobs.deadline_s),)
        mirrors = (HubSpec(latency_ms=knobs.hub_latency_ms, rate_mbps=knobs.hub_mbps),)
    if name == "churn":
        nodes = churned(nodes)
    hub = HubSpec(latency_ms=knobs.hub_latency_ms, rate_mbps=knobs.hub_mbps, down=down)
    image = ImageSpec(size_mib=knobs.image_mib, chunk_kib=knobs.chunk_kib, count=knobs.images)
    # update-storm staggers inside the agents (each warms after its own start delay), not by joining late.
    stagger = 0.0 if name == "update-storm" else knobs.stagger_s
    return Topology(hub=hub, nodes=nodes, image=image, swarm=name != "hub-only", stagger_s=stagger, mirrors=mirrors)


def churned(nodes: tuple[NodeSpec, ...]) -> tuple[NodeSpec, ...]:
    """A quarter of the nodes leave at 2 s; as many new ones join at 3 s."""
    fetching = [n for n in nodes if n.role != "seed"]
    leavers = max(1, len(fetching) // 4)
    out = [dataclasses.replace(n, leave_s=2.0) if i < leavers else n for i, n in enumerate(fetching)]
    last = max(int(n.address.rsplit(".", 1)[1]) for n in nodes)
    for i in range(leavers):
        template = fetching[i]
        out.append(
            dataclasses.replace(template, name=f"late{i}", address=f"127.0.0.{last + 1 + i}", join_s=3.0, leave_s=None)
        )
    return tuple(out) + tuple(n for n in nodes if n.role == "seed")


async def run(name: str, knobs: Knobs, workdir: Path | None = None) -> dict[str, Any]:
    topo = topology(name, knobs)
    backend: Any = LoopbackBackend()
    if knobs.backend == "netns":
        from .netns_backend import NetnsBackend

        backend = NetnsBackend(topo)
    with tempfile.TemporaryDirectory(prefix=f"netsim-{name}-") as tmp:
        work = workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        options = RunOptions(workdir=work, scenario=name, deadline_s=knobs.deadline_s, images=knobs.images)
        extra = None
        if name == "update-storm":
            extra = storm_config(work, knobs)
            options.warm_only = True
            options.scenario = f"update-storm({'staggered' if knobs.stagger_s else 'at once'})"
        result = await Run(topo, options, backend, node_extra=extra).execute()
    result["knobs"] = dataclasses.asdict(knobs)
    return result


def storm_config(work: Path, knobs: Knobs) -> Any:
    """Nodes warm a signed official list of every image, each after its own start delay."""
    key_path, pub_path = generate_keypair(work / "release")
    lines = ["version = 1", ""]
    for i in range(knobs.images):
        lines += ["[[image]]", f'name = "image{i}"', f'manifest = "image{i}"', f"priority = {i}", ""]
    official = work / "official.toml"
    official.write_text("\n".join(lines))
    sign_file(official, load_signing_key(key_path))
    public = pub_path.read_text().strip()

    def extra(node: NodeSpec) -> dict[str, dict[str, Any]]:
        return {
            "warm": {
                "official": True,
                "official_file": str(official),
                "trusted_keys": [public],
                "max_start_delay_s": knobs.stagger_s,
                "hub_rate_bps": 0,
            }
        }

    return extra
