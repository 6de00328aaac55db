"""Scenarios as topologies: the knobs' defaults per scenario, and the NAT scenarios' shape (no run)."""

from __future__ import annotations

import pytest

from netsim.__main__ import main
from netsim.bound import loopback_standin, lower_bound_s
from netsim.scenarios import SCENARIOS, Knobs, knobs_for, topology
from netsim.topology import WanSpec
from p2pchunks.policy.fetch import FetchParams


def test_knobs_given_beat_scenario_defaults_which_beat_knobs_defaults() -> None:
    assert knobs_for("farm-deploy") == Knobs()
    nat = knobs_for("nat-behind-seed")
    assert (nat.up_mbps, nat.down_mbps, nat.wan_mbps, nat.nodes) == (1000.0, 1000.0, 100.0, 4)
    farms = knobs_for("nat-farms")
    assert (farms.farms, farms.nodes, farms.wan_mbps) == (3, 12, 50.0)
    assert knobs_for("nat-farms", farms=5).nodes == 20
    assert knobs_for("nat-farms", farms=2, nodes=3).nodes == 3
    assert knobs_for("nat-behind-seed", up_mbps=None).up_mbps is None


def test_nat_behind_seed_is_one_router_and_a_full_seed() -> None:
    t = topology("nat-behind-seed", knobs_for("nat-behind-seed", nodes=8))
    seed, *nat = t.nodes
    assert (seed.role, seed.farm, seed.fetches, seed.public) == ("seed", "seeds", False, True)
    assert {n.role for n in nat} == {"nat"}
    assert len(nat) == 8
    assert list(t.nat_farms()) == ["farm0"]
    assert t.wan == (WanSpec("farm0", 100.0, 100.0),)
    assert len(t.fetchers) == 8


def test_nat_farms_are_capped_routers_and_a_seed_that_fetches_too() -> None:
    t = topology("nat-farms", knobs_for("nat-farms"))
    seed = t.nodes[0]
    assert (seed.role, seed.fetches) == ("seed", True)
    assert {farm: len(nodes) for farm, nodes in t.nat_farms().items()} == {"farm0": 4, "farm1": 4, "farm2": 4}
    assert t.wan == tuple(WanSpec(f"farm{i}", 50.0, 50.0) for i in range(3))
    assert len(t.fetchers) == 13
    # the netns lab enforces the routers (a farm shares on its LAN what crosses its WAN); loopback cannot
    assert lower_bound_s(t) > lower_bound_s(loopback_standin(t))


def test_nat_farms_without_a_seed() -> None:
    t = topology("nat-farms", knobs_for("nat-farms", farms=2, seeds=0))
    assert {n.role for n in t.nodes} == {"nat"}
    assert len(t.nat_farms()) == 2


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_scenario_has_a_topology_and_a_finite_bound(name: str) -> None:
    t = topology(name, knobs_for(name))
    assert t.fetchers
    assert lower_bound_s(t) >= 0


def test_the_command_line_reads_zero_as_uncapped(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "--sizes", "10", "--image-mib", "1", "--up-mbps", "0", "--hub-mbps", "0"]) == 0
    assert '"nodes": 10' in capsys.readouterr().out


def test_the_model_command_takes_several_sizes_and_the_farm_queue(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["model", "--nodes", "8", "1000", "--image-mib", "2", "--hub-mbps", "25"]) == 0
    rows = json.loads(capsys.readouterr().out)
    swarm = [row for row in rows if row["scenario"] == "farm-deploy"]
    assert [row["nodes"] for row in swarm] == [8, 1000]
    assert all(row["hub_ratio"] >= 1.0 and row["takeovers"] is not None for row in swarm)
    assert all(row["first_request_s"] >= FetchParams().discovery_grace_s for row in swarm)
    assert main(["model", "--sizes", "8", "--image-mib", "2", "--ideal"]) == 0
    (ideal,) = [row for row in json.loads(capsys.readouterr().out) if row["scenario"] == "farm-deploy"]
    assert ideal["takeovers"] is None
