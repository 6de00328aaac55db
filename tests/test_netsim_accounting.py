"""Who sent what to whom: classifying the peer addresses agents report, as the netns lab shows them (pure)."""

from __future__ import annotations

import pytest

from netsim.accounting import Addresses, classify, node_account, totals, visible_address, wan_usage
from netsim.topology import HubSpec, ImageSpec, NodeSpec, Topology

SEED = NodeSpec(name="seed", farm="seeds", role="seed", up_mbps=None, down_mbps=None, address="127.0.0.2")
A1 = NodeSpec(name="a1", farm="fa", role="nat", up_mbps=None, down_mbps=None, address="127.0.0.3")
A2 = NodeSpec(name="a2", farm="fa", role="nat", up_mbps=None, down_mbps=None, address="127.0.0.4")
B1 = NodeSpec(name="b1", farm="fb", role="nat", up_mbps=None, down_mbps=None, address="127.0.0.5")
P1 = NodeSpec(name="p1", farm="fp", role="node", up_mbps=None, down_mbps=None, address="127.0.0.6")
TOPO = Topology(hub=HubSpec(), nodes=(SEED, A1, A2, B1, P1), image=ImageSpec(1))
# The netns lab: public hosts on 10.231.0.x, farm fa's LAN 10.231.128.0/24 behind router .0.10, fb's behind .0.11
LAB = Addresses(
    own={"seed": "10.231.0.3", "a1": "10.231.128.2", "a2": "10.231.128.3", "b1": "10.231.129.2", "p1": "10.231.0.4"},
    seen_as={"seed": "10.231.0.3", "a1": "10.231.0.10", "a2": "10.231.0.10", "b1": "10.231.0.11", "p1": "10.231.0.4"},
)


@pytest.mark.parametrize(
    ("observer", "other", "expected"),
    [
        (A1, A2, "10.231.128.3"),  # a farm-mate: its LAN address
        (A1, SEED, "10.231.0.3"),  # a public host: its own address
        (SEED, A1, "10.231.0.10"),  # from outside, a NAT host is its router
        (B1, A1, "10.231.0.10"),  # another farm's NAT host too
        (P1, A2, "10.231.0.10"),
        (A1, P1, "10.231.0.4"),
    ],
)
def test_visible_address(observer: NodeSpec, other: NodeSpec, expected: str) -> None:
    assert visible_address(observer, other, LAB) == expected


def test_a_nat_node_tells_farm_mates_seeds_and_other_farms_apart() -> None:
    peer_bytes = {
        "10.231.128.3": {"down": 100, "up": 7},  # a2
        "10.231.0.3": {"down": 50, "up": 0},  # the seed
        "10.231.0.11": {"down": 5, "up": 1},  # fb's router: b1
        "10.231.0.4": {"down": 2, "up": 2},  # a public node of another farm
        "10.9.9.9": {"down": 1, "up": 0},  # nobody of the run
    }
    down, up = classify(TOPO, A1, peer_bytes, LAB)
    assert down == {"farm": 100, "seed": 50, "other": 7, "unknown": 1}
    assert up == {"farm": 7, "seed": 0, "other": 3, "unknown": 0}


def test_the_seed_sees_a_whole_nat_farm_as_one_address() -> None:
    down, up = classify(TOPO, SEED, {"10.231.0.10": {"down": 0, "up": 300}, "10.231.0.11": {"up": 30}}, LAB)
    assert up == {"farm": 0, "seed": 0, "other": 330, "unknown": 0}
    assert sum(down.values()) == 0


def test_on_loopback_every_address_is_the_nodes_own() -> None:
    loopback = Addresses(own={n.name: n.address for n in TOPO.nodes}, seen_as={n.name: n.address for n in TOPO.nodes})
    down, _ = classify(TOPO, A1, {A2.address: {"down": 9, "up": 0}, SEED.address: {"down": 4, "up": 0}}, loopback)
    assert (down["farm"], down["seed"]) == (9, 4)


def test_totals_sum_fetchers_by_source_and_seed_uploads() -> None:
    per_node = {
        "seed": node_account(TOPO, SEED, 0, {"10.231.0.10": {"down": 0, "up": 40}}, LAB),
        "a1": node_account(TOPO, A1, 10, {"10.231.0.3": {"down": 40, "up": 0}, "10.231.128.3": {"up": 20}}, LAB),
        "a2": node_account(TOPO, A2, 0, {"10.231.128.2": {"down": 20, "up": 0}}, LAB, done_s=2.34567),
    }
    assert (per_node["a1"]["done_s"], per_node["a2"]["done_s"]) == (None, 2.346)
    assert per_node["a1"]["uploaded"] == 20
    assert per_node["seed"]["fetches"] is False
    assert totals(per_node) == {
        "from_hub": 10,
        "from_farm": 20,
        "from_seed": 40,
        "from_other": 0,
        "from_unknown": 0,
        "seed_upload": 40,
    }


def test_wan_usage_is_the_difference_of_two_readings() -> None:
    assert wan_usage({"fa": (100, 10)}, {"fa": (1100, 60), "fb": (5, 5)}) == {
        "fa": {"in_bytes": 1000, "out_bytes": 50},
        "fb": {"in_bytes": 5, "out_bytes": 5},
    }
