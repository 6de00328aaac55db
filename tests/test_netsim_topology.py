"""Topologies: the farm generator, TOML loading (and its errors), and the lower bound, as tables of cases."""

from __future__ import annotations

import ipaddress
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsim.topology import (
    MBPS,
    MIB,
    HubSpec,
    ImageSpec,
    NodeSpec,
    Topology,
    farm,
    load_topology,
    lower_bound_s,
    topology_from_dict,
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
    ],
)
def test_specs_validate(spec: object, message: str) -> None:
    with pytest.raises(BadConfig, match=message):
        spec()  # type: ignore[operator]


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
"""


def test_load_full_topology(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(FULL)
    t = load_topology(path)
    assert t.hub == HubSpec(latency_ms=20, rate_mbps=None, protocol="zdb", down=((1.0, 2.5),))
    assert t.image == ImageSpec(64, chunk_kib=256, hot_fraction=0.1, count=2)
    assert (t.swarm, t.stagger_s) == (False, 0.5)
    assert len(t.nodes) == 7
    edge = t.nodes[-1]
    assert (edge.name, edge.farm, edge.role, edge.up_mbps, edge.down_mbps) == ("edge", "far", "nat", 5, None)
    assert edge.address not in {n.address for n in t.nodes[:-1]}
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


def test_mirrors_from_toml_and_the_hub_outage_scenario(tmp_path: Path) -> None:
    from netsim.scenarios import Knobs, topology

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
    assert outage.mirrors[0].down == ()
