"""Topologies: the farm generator, TOML loading (and its errors), and the lower bound, as tables of cases."""

from __future__ import annotations

import ipaddress
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsim.bound import loopback_standin, lower_bound_s
from netsim.topofile import load_topology, topology_from_dict
from netsim.topology import (
    MBPS,
    MIB,
    HubSpec,
    ImageSpec,
    NodeSpec,
    Topology,
    WanSpec,
    farm,
    with_churn,
)
from p2pchunks.errors import BadConfig


def topo(
    nodes: tuple[NodeSpec, ...], *, swarm: bool = True, hub_mbps: float | None = 200, mib: float = 100
) -> Topology:
    return Topology(hub=HubSpec(rate_mbps=hub_mbps), nodes=nodes, image=ImageSpec(mib), swarm=swarm)


# ---- farm() ----


def test_farm_addresses_are_distinct_loopback_and_never_the_hubs() -> None:
    nodes = farm(600, farms=7)
    addresses = [n.address for n in nodes]
    assert addresses[:2] == ["127.0.0.2", "127.0.0.3"]
    assert len(set(addresses)) == 600
    assert "127.0.0.1" not in addresses
    for a in addresses:
        ip = ipaddress.IPv4Address(a)
        assert ip.is_loopback
        assert a.rsplit(".", 1)[1] not in ("0", "255")


@pytest.mark.parametrize(
    ("n", "farms", "nat", "seeds", "roles", "farm_sizes"),
    [
        (1, 1, 0, 0, {"node": 1}, [1]),
        (10, 3, 2, 1, {"seed": 1, "node": 7, "nat": 2}, [4, 3, 3]),
        (4, 4, 4, 0, {"nat": 4}, [1, 1, 1, 1]),
        (5, 2, 0, 5, {"seed": 5}, [3, 2]),
    ],
)
def test_farm_roles_and_farms(
    n: int, farms: int, nat: int, seeds: int, roles: dict[str, int], farm_sizes: list[int]
) -> None:
    nodes = farm(n, farms=farms, nat=nat, seeds=seeds)
    got: dict[str, int] = {}
    for node in nodes:
        got[node.role] = got.get(node.role, 0) + 1
    assert got == roles
    t = topo(nodes)
    assert sorted(len(v) for v in t.farms().values()) == sorted(farm_sizes)
    assert list(t.farms()) == [f"farm{i}" for i in range(farms)]
    assert [n.role for n in nodes[:seeds]] == ["seed"] * seeds
    assert all(n.role == "nat" for n in nodes[n - nat :]) if nat else True


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be"),
        ({"n": 3, "farms": 4}, "farms must be"),
        ({"n": 3, "nat": 2, "seeds": 2}, "nat \\+ seeds"),
        ({"n": 3, "first_address": 1}, "first_address"),
        ({"n": 3, "up_mbps": 0}, "up_mbps"),
        ({"n": 3, "down_mbps": -1}, "down_mbps"),
    ],
)
def test_farm_rejects(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(BadConfig, match=message):
        farm(**kwargs)  # type: ignore[arg-type]


def test_with_churn_marks_the_last_fetchers() -> None:
    nodes = with_churn(farm(5, seeds=1), 2, 7.5)
    assert [n.leave_s for n in nodes] == [None, None, None, 7.5, 7.5]
    with pytest.raises(BadConfig):
        with_churn(farm(3, seeds=1), 3, 1.0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (lambda: HubSpec(latency_ms=-1), "latency_ms"),
        (lambda: HubSpec(down=((5, 5),)), "down window"),
        (lambda: HubSpec(protocol="ftp"), "protocol"),  # type: ignore[arg-type]
        (lambda: ImageSpec(0), "size_mib"),
        (lambda: ImageSpec(1, hot_fraction=1.5), "hot_fraction"),
        (lambda: ImageSpec(1, count=0), "count"),
        (lambda: NodeSpec(name="a", farm="f", role="x", up_mbps=1, down_mbps=1, address="127.0.0.2"), "role"),  # type: ignore[arg-type]
        (lambda: NodeSpec(name="a", farm="f", role="node", up_mbps=1, down_mbps=1, address="127.0.0.1"), "reserved"),
        (lambda: NodeSpec(name="a", farm="f", role="node", up_mbps=1, down_mbps=1, address="nope"), "IPv4"),
        (
            lambda: NodeSpec(
                name="a", farm="f", role="node", up_mbps=1, down_mbps=1, address="127.0.0.2", join_s=5, leave_s=5
            ),
            "leave_s",
        ),
        (lambda: topo(farm(2) + farm(1)), "share the name"),
        (lambda: topo(()), "at least one node"),
        (lambda: WanSpec("f", up_mbps=0), "up_mbps"),
        (lambda: WanSpec("f", down_mbps=-5), "down_mbps"),
        (lambda: Topology(HubSpec(), farm(2), ImageSpec(1), wan=(WanSpec("farm0"),)), "not a farm with NAT nodes"),
        (
            lambda: Topology(HubSpec(), farm(2, nat=2), ImageSpec(1), wan=(WanSpec("farm0"), WanSpec("farm0", 5))),
            "given twice",
        ),
    ],
)
def test_specs_validate(spec: object, message: str) -> None:
    with pytest.raises(BadConfig, match=message):
        spec()  # type: ignore[operator]


def test_who_fetches_and_who_is_public() -> None:
    full_seed, node, nat = farm(3, seeds=1, nat=1)
    empty_seed = NodeSpec(
        name="s", farm="f", role="seed", up_mbps=None, down_mbps=None, address="127.0.0.9", starts_full=False
    )
    full_node = NodeSpec(
        name="m", farm="f", role="node", up_mbps=None, down_mbps=None, address="127.0.0.8", starts_full=True
    )
    assert [n.fetches for n in (full_seed, empty_seed, node, nat, full_node)] == [False, True, True, True, False]
    assert [n.public for n in (full_seed, empty_seed, node, nat)] == [True, True, True, False]
    t = Topology(HubSpec(), farm(5, farms=2, nat=3), ImageSpec(1), wan=(WanSpec("farm1", 10, 20),))
    assert {farm: [n.name for n in nodes] for farm, nodes in t.nat_farms().items()} == {
        "farm0": ["n2"],
        "farm1": ["n3", "n4"],
    }
    assert t.wan_of("farm1") == WanSpec("farm1", 10, 20)
    assert t.wan_of("farm0") == WanSpec("farm0")


def test_start_times_stagger_fetchers_only() -> None:
    nodes = farm(4, seeds=1)
    t = Topology(hub=HubSpec(), nodes=nodes, image=ImageSpec(1), stagger_s=2.0)
    assert t.start_times() == (0.0, 0.0, 2.0, 4.0)


# ---- TOML ----

FULL = """
swarm = false
stagger_s = 0.5
[hub]
latency_ms = 20
rate_mbps = "none"
protocol = "zdb"
down = [[1, 2.5]]
[image]
size_mib = 64
chunk_kib = 256
hot_fraction = 0.1
count = 2
[nodes]
n = 6
farms = 2
up_mbps = 50
down_mbps = 500
nat = 2
seeds = 1
leave = 1
leave_s = 9
[[node]]
name = "edge"
farm = "far"
role = "nat"
up_mbps = 5
[[node]]
name = "volunteer"
farm = "seeds"
role = "seed"
starts_full = false
[[wan]]
farm = "far"
down_mbps = 40
"""


def test_load_full_topology(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(FULL)
    t = load_topology(path)
    assert t.hub == HubSpec(latency_ms=20, rate_mbps=None, protocol="zdb", down=((1.0, 2.5),))
    assert t.image == ImageSpec(64, chunk_kib=256, hot_fraction=0.1, count=2)
    assert (t.swarm, t.stagger_s) == (False, 0.5)
    assert len(t.nodes) == 8
    edge, volunteer = t.nodes[-2:]
    assert (edge.name, edge.farm, edge.role, edge.up_mbps, edge.down_mbps) == ("edge", "far", "nat", 5, None)
    assert edge.address not in {n.address for n in t.nodes[:-2]}
    assert (volunteer.role, volunteer.fetches) == ("seed", True)
    assert t.wan == (WanSpec("far", None, 40),)
    assert [n.leave_s for n in t.nodes[:6]] == [None] * 5 + [9.0]
    assert t.image.total_bytes == 128 * MIB


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[image]\nsize_mib = 1\n[hub]\nlatncy_ms = 3\n[nodes]\nn = 1", "unknown key 'hub.latncy_ms'"),
        ("[image]\nsize_mib = 1\n[nodes]\nn = 1\nfrobs = 2", "unknown key 'nodes.frobs'"),
        ("colour = 1\n[image]\nsize_mib = 1", "unknown key 'colour'"),
        ("[image]\nsize_mib = 'big'\n[nodes]\nn = 1", "image.size_mib: expected a number"),
        ("[image]\nsize_mib = 1\n[nodes]\nn = 1.5", "nodes.n: expected an integer"),
        ("[image]\nsize_mib = 1\n[nodes]\nn = true", "nodes.n: expected an integer"),
        ("swarm = 'yes'\n[image]\nsize_mib = 1\n[nodes]\nn = 1", "swarm: expected true or false"),
        ("[image]\nsize_mib = 1\n[hub]\ndown = [[1]]\n[nodes]\nn = 1", "hub.down\\[0\\]"),
        ("[image]\nchunk_kib = 1\n[nodes]\nn = 1", "missing key 'image.size_mib'"),
        ("[nodes]\nn = 1", "missing table \\[image\\]"),
        ("[image]\nsize_mib = 1\n[[node]]\nname = 'a'\nrole = 'node'", "missing key 'node\\[0\\].farm'"),
        ("[image]\nsize_mib = 1\n[[node]]\nname = 'a'\nfarm = 'f'\nrole = 'node'\nspeed = 1", "node\\[0\\].speed"),
        ("[image]\nsize_mib = 1\n[nodes]\nn = 2\nleave = 1", "needs 'nodes.leave_s'"),
        ("[image]\nsize_mib = 1", "at least one node"),
        ("[image\nsize_mib = 1", "not valid TOML"),
        ("[image]\nsize_mib = 1\n[nodes]\nn = 1\nnat = 1\n[[wan]]\nup_mbps = 3", "missing key 'wan\\[0\\].farm'"),
        ("[image]\nsize_mib = 1\n[nodes]\nn = 1\nnat = 1\n[[wan]]\nfarm = 'farm0'\nspeed = 3", "wan\\[0\\].speed"),
        ("[image]\nsize_mib = 1\n[nodes]\nn = 1\n[[wan]]\nfarm = 'farm0'", "not a farm with NAT nodes"),
        ("wan = 1\n[image]\nsize_mib = 1\n[nodes]\nn = 1", "'wan' must be an array of tables"),
        ("mirror = 1\n[image]\nsize_mib = 1\n[nodes]\nn = 1", "'mirror' must be an array of tables"),
        ("[image]\nsize_mib = 1\n[nodes]\nn = 1\n[[mirror]]\nlatency = 3", "unknown key 'mirror\\[0\\].latency'"),
    ],
)
def test_load_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(BadConfig, match=message) as info:
        load_topology(path)
    assert isinstance(info.value, ValueError)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadConfig, match="cannot read"):
        load_topology(tmp_path / "absent.toml")


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.integers() | st.text(max_size=5), max_size=4))
def test_arbitrary_tables_fail_only_with_bad_config(extra: dict[str, object]) -> None:
    raw: dict[str, object] = {"image": {"size_mib": 1}, "nodes": {"n": 1}, **{f"x{k}": v for k, v in extra.items()}}
    if extra:
        with pytest.raises(BadConfig, match="unknown key"):
            topology_from_dict(raw)
    else:
        assert len(topology_from_dict(raw).nodes) == 1


# ---- the bound ----

F = 100 * MIB


@pytest.mark.parametrize(
    ("nodes", "swarm", "hub_mbps", "expected"),
    [
        # one node: the slower of hub and its link
        (farm(1, up_mbps=10, down_mbps=100), True, 200, F / (100 * MBPS)),
        (farm(1, up_mbps=10, down_mbps=None), True, 200, F / (200 * MBPS)),
        # many nodes, swarm: N·F over all upload
        (farm(100, up_mbps=10, down_mbps=100), True, 200, 100 * F / ((200 + 1000) * MBPS)),
        # hub-only: N·F over the hub
        (farm(100, up_mbps=10, down_mbps=100), False, 200, 100 * F / (200 * MBPS)),
        # seeds do not fetch, but upload (and can give the first copy)
        (farm(10, up_mbps=100, down_mbps=None, seeds=1), True, 50, 9 * F / ((50 + 1000) * MBPS)),
        (farm(3, up_mbps=100, down_mbps=None, seeds=1), True, 50, F / ((50 + 100) * MBPS)),
        # nothing capped: no bound
        (farm(5, up_mbps=None, down_mbps=None), True, None, 0.0),
    ],
)
def test_lower_bound(nodes: tuple[NodeSpec, ...], swarm: bool, hub_mbps: float | None, expected: float) -> None:
    assert lower_bound_s(topo(nodes, swarm=swarm, hub_mbps=hub_mbps)) == pytest.approx(expected)


def test_lower_bound_counts_late_joiners_and_not_leavers() -> None:
    base = farm(4, up_mbps=None, down_mbps=100)
    late = (
        *base[:3],
        NodeSpec(name="late", farm="f", role="node", up_mbps=None, down_mbps=100, join_s=30, address="127.0.0.9"),
    )
    assert lower_bound_s(topo(late)) == pytest.approx(30 + F / (100 * MBPS))
    slow_leaver = (
        *base,
        NodeSpec(name="gone", farm="f", role="node", up_mbps=None, down_mbps=1, leave_s=5, address="127.0.0.9"),
    )
    assert lower_bound_s(topo(slow_leaver)) == pytest.approx(lower_bound_s(topo(base)))


def test_lower_bound_counts_every_image() -> None:
    one = Topology(hub=HubSpec(), nodes=farm(3), image=ImageSpec(10))
    three = Topology(hub=HubSpec(), nodes=farm(3), image=ImageSpec(10, count=3))
    assert lower_bound_s(three) == pytest.approx(3 * lower_bound_s(one))
    assert math.isfinite(lower_bound_s(three))


# ---- the bound with NAT: who can reach whom ----

HUB = 200 * MBPS


def nat_topo(*farms_: tuple[str, int, float | None], up: float | None = None, seed: str = "full") -> Topology:
    """A public seed (``full``, ``empty`` or ``none``) and NAT farms ``(name, nodes, WAN Mbit/s both ways)``."""
    nodes: list[NodeSpec] = []
    if seed != "none":
        nodes.append(
            NodeSpec(
                name="seed", farm="seeds", role="seed", up_mbps=1000, down_mbps=1000, address="127.0.0.2",
                starts_full=seed == "full",
            )
        )  # fmt: skip
    address = 3
    for name, count, _ in farms_:
        for i in range(count):
            nodes.append(
                NodeSpec(
                    name=f"{name}{i}", farm=name, role="nat", up_mbps=up, down_mbps=None, address=f"127.0.0.{address}"
                )
            )
            address += 1
    wan = tuple(WanSpec(name, mbps, mbps) for name, _, mbps in farms_ if mbps is not None)
    return Topology(hub=HubSpec(rate_mbps=200), nodes=tuple(nodes), image=ImageSpec(100), wan=wan)


def test_a_nat_farm_gets_its_first_copy_through_its_wan() -> None:
    assert lower_bound_s(nat_topo(("fa", 4, 50))) == pytest.approx(F / (50 * MBPS))


def test_a_nat_farm_shares_on_its_lan_what_enters_through_its_wan() -> None:
    # 8 nodes uploading 10 Mbit/s each to farm-mates, 50 Mbit/s in: 8 copies need (50 + 80) Mbit/s for 8F
    assert lower_bound_s(nat_topo(("fa", 8, 50), up=10)) == pytest.approx(8 * F / (130 * MBPS))


def test_nat_farms_without_a_seed_each_take_a_copy_from_the_hub() -> None:
    assert lower_bound_s(nat_topo(("fa", 4, None), ("fb", 4, None), ("fc", 4, None), seed="none")) == pytest.approx(
        3 * F / HUB
    )


def test_an_empty_seed_gives_no_first_copy() -> None:
    full = lower_bound_s(nat_topo(("fa", 2, None), up=10))
    empty = lower_bound_s(nat_topo(("fa", 2, None), up=10, seed="empty"))
    assert empty == pytest.approx(F / HUB)  # the seed fetches too: the first copy comes from the hub
    assert full < empty


def test_the_loopback_standin_isolates_every_nat_node_and_drops_wan_caps() -> None:
    t = nat_topo(("fa", 4, 50), up=10)
    standin = loopback_standin(t)
    assert standin.wan == ()
    assert len(standin.nat_farms()) == 4
    assert [n.name for n in standin.nodes] == [n.name for n in t.nodes]
    # no farm-mate to share with: each NAT node takes F from the public side (hub + seed)
    assert lower_bound_s(standin) == pytest.approx(4 * F / (HUB + 1000 * MBPS))
    # behind one router, the four share: what enters (50 Mbit/s) plus what they upload to each other (40)
    assert lower_bound_s(t) == pytest.approx(4 * F / (90 * MBPS))


def test_mirrors_from_toml_and_the_hub_outage_scenario(tmp_path: Path) -> None:
    from netsim.scenarios import OUTAGE, Knobs, topology

    path = tmp_path / "t.toml"
    path.write_text(
        "[hub]\nrate_mbps = 100\ndown = [[0, 60]]\n[[mirror]]\nrate_mbps = 50\n[[mirror]]\nrate_mbps = 'none'\n"
        "down = [[10, 20]]\n[image]\nsize_mib = 8\n[nodes]\nn = 2\n"
    )
    t = load_topology(path)
    assert [hub.rate_mbps for hub in t.hubs] == [100, 50, None]
    assert t.hubs_down(5) is False
    assert t.hub_rate_bps(5) == math.inf
    assert t.hub_rate_bps(15) == 50 * 1e6 / 8
    assert t.hub_outages() == []
    path.write_text("[mirror]\nrate_mbps = 1\n[image]\nsize_mib = 8\n[nodes]\nn = 2\n")
    with pytest.raises(BadConfig, match=r"\[\[mirror\]\]"):
        load_topology(path)
    outage = topology("hub-outage", Knobs(deadline_s=300))
    assert outage.hub.down == ((0.0, 300.0),)
    assert len(outage.mirrors) == 1
    assert outage.mirrors[0].down == (OUTAGE,)
    assert outage.hub_outages() == [OUTAGE]
