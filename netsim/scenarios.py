"""The named scenarios: each turns command-line knobs into a topology and runs it.

``farm-deploy``  N nodes fetch one image at once (the swarm).
``hub-only``     the same farm with the swarm off: what zos does today.
``nat-behind-seed``  every node behind one strict NAT router (``--farms``: one router per farm) plus a volunteer
                 seed that holds the image.
``nat-farms``    F farms (``--farms``, default 3) of 4 nodes, each behind its own strict NAT router with a WAN cap
                 below the LAN rate, one volunteer seed on the public side; the image is on the hub only, so the
                 seed fetches it too (``--seeds 0``: no seed at all).
``hub-outage``   two hubs serving the same root: the one every node lists first is down for the whole run, and the
                 second goes down too from 1.5 s to 6 s (failover, then a full outage and the resume after it).
``churn``        a quarter of the nodes leave mid-deploy and as many fresh ones join.
``update-storm`` N nodes warm K official images after a release; staggered (``--stagger-s``) or not.
``farm-cache``   N nodes with small caches warm a list of K official images, then deploy each in turn: custody on
                 and off in one run (``farmcache.py``).

Knobs a scenario does not set come from ``SCENARIO_DEFAULTS`` (``knobs_for``): the NAT scenarios give each node a
gigabit LAN port and each farm's router a slower WAN, as on a real farm (and so their bound means something).
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
from .topology import HubSpec, ImageSpec, NodeSpec, Topology, WanSpec, farm

OUTAGE = (1.5, 6.0)
"""hub-outage: when the second hub is down too."""
SCENARIOS = (
    "farm-deploy",
    "hub-only",
    "nat-behind-seed",
    "nat-farms",
    "hub-outage",
    "churn",
    "update-storm",
    "farm-cache",
)
NAT_SCENARIOS = ("nat-behind-seed", "nat-farms")
NAT_FARM_SIZE = 4
"""Nodes per farm in ``nat-farms`` when ``--nodes`` is not given."""
SCENARIO_DEFAULTS: dict[str, dict[str, Any]] = {
    # a farm: a gigabit LAN behind a router whose WAN is what limits it
    "nat-behind-seed": {"up_mbps": 1000.0, "down_mbps": 1000.0, "wan_mbps": 100.0},
    "nat-farms": {"farms": 3, "up_mbps": 1000.0, "down_mbps": 1000.0, "wan_mbps": 50.0},
    "farm-cache": {"nodes": 8, "images": 6, "image_mib": 16},
}


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
    seeds: int = 1
    """Volunteer seeds of the NAT scenarios (public side)."""
    seed_mbps: float | None = 1000.0
    """The seeds' up and down caps in the NAT scenarios (a public uplink)."""
    wan_mbps: float | None = None
    """The WAN cap (both ways) of each NAT farm's router."""
    utp: bool = False
    """uTP besides TCP (off by default: slow on loopback; BEP 55 hole punching needs it)."""


def knobs_for(name: str, **given: Any) -> Knobs:
    """The knobs of ``name``: ``given`` over the scenario's defaults over ``Knobs()``'s. ``nat-farms`` without
    ``nodes``: ``NAT_FARM_SIZE`` per farm."""
    values = {**SCENARIO_DEFAULTS.get(name, {}), **given}
    if name == "nat-farms" and "nodes" not in given:
        values["nodes"] = NAT_FARM_SIZE * values.get("farms", 1)
    return Knobs(**values)


def topology(name: str, knobs: Knobs) -> Topology:
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    outage = name == "hub-outage"
    hub = HubSpec(latency_ms=knobs.hub_latency_ms, rate_mbps=knobs.hub_mbps, down=((0.0, knobs.deadline_s),) * outage)
    mirrors = (HubSpec(latency_ms=knobs.hub_latency_ms, rate_mbps=knobs.hub_mbps, down=(OUTAGE,)),) * outage
    image = ImageSpec(size_mib=knobs.image_mib, chunk_kib=knobs.chunk_kib, count=knobs.images)
    if name in NAT_SCENARIOS:
        return nat_topology(name, knobs, hub, image)
    nodes = farm(knobs.nodes, farms=knobs.farms, up_mbps=knobs.up_mbps, down_mbps=knobs.down_mbps)
    if name == "churn":
        nodes = churned(nodes)
    # update-storm staggers inside the agents (each warms after its own start delay), not by joining late.
    stagger = 0.0 if name == "update-storm" else knobs.stagger_s
    return Topology(hub=hub, nodes=nodes, image=image, swarm=name != "hub-only", stagger_s=stagger, mirrors=mirrors)


def nat_topology(name: str, knobs: Knobs, hub: HubSpec, image: ImageSpec) -> Topology:
    """``knobs.seeds`` public seeds (farm ``seeds``; full in ``nat-behind-seed``, empty in ``nat-farms``), then
    ``knobs.nodes`` NAT nodes in ``knobs.farms`` farms, each farm behind its own router (``knobs.wan_mbps``)."""
    full = None if name == "nat-behind-seed" else False
    seeds = tuple(
        NodeSpec(
            name=f"seed{i}",
            farm="seeds",
            role="seed",
            up_mbps=knobs.seed_mbps,
            down_mbps=knobs.seed_mbps,
            address=f"127.0.0.{2 + i}",
            starts_full=full,
        )
        for i in range(knobs.seeds)
    )
    nat = farm(
        knobs.nodes,
        farms=knobs.farms,
        up_mbps=knobs.up_mbps,
        down_mbps=knobs.down_mbps,
        nat=knobs.nodes,
        first_address=2 + knobs.seeds,
    )
    wan = () if knobs.wan_mbps is None else tuple(WanSpec(f, knobs.wan_mbps, knobs.wan_mbps) for f in _farms(nat))
    return Topology(hub=hub, nodes=seeds + nat, image=image, stagger_s=knobs.stagger_s, wan=wan)


def _farms(nodes: tuple[NodeSpec, ...]) -> list[str]:
    return list(dict.fromkeys(node.farm for node in nodes))


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
    if name == "farm-cache":  # two runs (custody on and off) and a result of its own
        from .farmcache import run_farm_cache

        return await run_farm_cache(knobs, workdir)
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
        if knobs.utp:
            extra = with_utp(extra)
        result = await Run(topo, options, backend, node_extra=extra).execute()
    result["knobs"] = dataclasses.asdict(knobs)
    return result


def with_utp(extra: Any) -> Any:
    """``extra`` (a node's extra config sections, or None) with uTP turned on."""

    def config(node: NodeSpec) -> dict[str, dict[str, Any]]:
        sections: dict[str, dict[str, Any]] = dict(extra(node)) if extra else {}
        sections["swarm"] = {**sections.get("swarm", {}), "utp": True}
        return sections

    return config


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
