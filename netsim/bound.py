"""T*, the physical lower bound of a topology: when its last fetching node can be done at the earliest, whatever the
protocol, given the caps and who can reach whom.

Owns the bound and the reachability it assumes. Strict NAT is what a router does: it drops every connection that
comes in from its WAN and nothing that hosts of its LAN send each other. So a NAT node accepts connections from its
farm-mates only, dials out to anyone public, and reaches another farm's NAT nodes not at all; every byte a NAT farm
receives from outside crosses its WAN link (``Topology.wan``). ``loopback_standin`` is the weaker reachability the
loopback backend enforces (a NAT node refuses every inbound connection, farm-mates included, and farm WAN caps do
not exist there); a run's bound is computed on the topology its backend enforces. It must not know how a run is
made or modelled.

Every term is a cut: a set of nodes must receive so many bytes, and only so much capacity feeds it.
"""

from __future__ import annotations

from dataclasses import replace

from .topology import Topology


def loopback_standin(topo: Topology) -> Topology:
    """What the loopback backend enforces for ``topo``: each NAT node alone behind its own (uncapped) router."""
    nodes = tuple(node if node.public else replace(node, farm=f"{node.farm}/{node.name}") for node in topo.nodes)
    return replace(topo, nodes=nodes, wan=())


def lower_bound_s(topo: Topology) -> float:
    """T*, the time before which the last fetching node that stays cannot be done.

    Swarm: the largest of
    * ``start_i + F/d_i``: each staying fetcher must receive F;
    * ``F/(u_hub + Σu_full)``: the first copy leaves the hub or a node that starts full;
    * ``N·F/(u_hub + Σu_all)``: N copies must be uploaded by someone;
    * per NAT farm f with fetchers and no full node: ``F/I_f`` and ``n_f·F/(I_f + Σu_f)``, where
      ``I_f = min(WAN down_f, u_hub + Σu_public)`` is all that can enter the farm;
    * all such NAT farms together: ``k·F/(u_hub + Σu_public)``;
    * public fetchers: ``n_pub·F/(u_hub + Σu_public + Σ_f min(WAN up_f, Σu_f))``.
    Hub-only: ``max(max_i(start_i + F/d_i), N·F/u_hub)``. F is all images' bytes; N counts the fetching nodes that
    never leave (a leaver need not finish; its upload still counts). Uncapped rates are infinite (their term is 0).
    """
    size = float(topo.image.total_bytes)
    staying = {
        node.name: start
        for node, start in zip(topo.nodes, topo.start_times(), strict=True)
        if node.fetches and node.leave_s is None
    }
    u_hub = sum(hub.rate_bps for hub in topo.hubs)  # every hub, even one that is down: still a bound
    terms = [start + size / node.down_bps for node in topo.nodes if (start := staying.get(node.name)) is not None]
    if not topo.swarm:
        return max([0.0, *terms, len(staying) * size / u_hub])
    u_full = sum(node.up_bps for node in topo.nodes if not node.fetches)
    u_all = sum(node.up_bps for node in topo.nodes)
    terms += [size / (u_hub + u_full), len(staying) * size / (u_hub + u_all)]
    u_public = u_hub + sum(node.up_bps for node in topo.nodes if node.public)
    isolated = 0
    from_farms = 0.0
    for farm, members in topo.nat_farms().items():
        link = topo.wan_of(farm)
        u_farm = sum(node.up_bps for node in members)
        from_farms += min(link.up_bps, u_farm)
        fetchers = sum(1 for node in members if node.name in staying)
        if not fetchers:
            continue
        inflow = min(link.down_bps, u_public)
        terms.append(fetchers * size / (inflow + u_farm))
        if all(node.fetches for node in members):
            terms.append(size / inflow)
            isolated += 1
    terms.append(isolated * size / u_public)
    public_fetchers = sum(1 for node in topo.nodes if node.public and node.name in staying)
    terms.append(public_fetchers * size / (u_public + from_farms))
    return max([0.0, *terms])


def hot_bound_s(topo: Topology, hot_bytes: int, grace_s: float) -> float:
    """The hot set's own bound: ``grace_s`` (the agents' discovery grace, before which no node asks the hub) plus the
    hot bytes at the hub's total rate plus one hub round trip (the emulated latency, added once per request).

    Not a physical bound like T* (the grace is a choice of the policy) but what hot-first can achieve at best: the
    first hot byte leaves the hub one round trip after the grace, and every hot byte must leave it."""
    u_hub = sum(hub.rate_bps for hub in topo.hubs)
    latency_s = min(hub.latency_ms for hub in topo.hubs) / 1000
    return grace_s + hot_bytes / u_hub + latency_s
