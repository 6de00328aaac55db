"""The flow model: invariants any fluid of a chunk swarm must keep (never timings of the model itself)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from netsim.bound import lower_bound_s
from netsim.farmqueue import QueueParams
from netsim.model import ModelParams, predict, waterfill
from netsim.topology import HubSpec, ImageSpec, NodeSpec, Topology, farm, with_churn

MIB = 1024 * 1024


def topo(
    nodes: tuple[NodeSpec, ...],
    *,
    swarm: bool = True,
    hub: HubSpec | None = None,
    mib: float = 64,
    stagger_s: float = 0.0,
) -> Topology:
    return Topology(hub=hub or HubSpec(), nodes=nodes, image=ImageSpec(mib), swarm=swarm, stagger_s=stagger_s)


SHAPES = {
    "one": topo(farm(1)),
    "small": topo(farm(10, farms=2)),
    "asymmetric": topo(farm(50, up_mbps=10, down_mbps=1000)),
    "slow-hub": topo(farm(30), hub=HubSpec(rate_mbps=20)),
    "uncapped-hub": topo(farm(30, up_mbps=50), hub=HubSpec(rate_mbps=None, latency_ms=100)),
    "some-nat": topo(farm(40, farms=4, nat=15)),
    "seeded": topo(farm(40, seeds=2, nat=10)),
    "staggered": topo(farm(40), stagger_s=0.3),
    "outage": topo(farm(40), hub=HubSpec(down=((0.5, 4.0),))),
    "churn": topo(with_churn(farm(40), 10, 2.0)),
    "large": topo(farm(3000, farms=30, nat=500), mib=256),
}


@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.parametrize("swarm", [True, False])
@pytest.mark.parametrize("params", [ModelParams(), ModelParams(queue=QueueParams())], ids=["ideal", "queue"])
def test_never_beats_the_lower_bound_and_everyone_finishes(name: str, swarm: bool, params: ModelParams) -> None:
    t = SHAPES[name] if swarm else Topology(SHAPES[name].hub, SHAPES[name].nodes, SHAPES[name].image, swarm=False)
    p = predict(t, params)
    assert math.isfinite(p.last_node_done_s)
    assert p.last_node_done_s >= lower_bound_s(t) * (1 - 1e-9)
    staying = [d for d, n in zip(p.per_node_done_s, t.fetchers, strict=True) if n.leave_s is None]
    assert all(d is not None for d in staying)
    assert max(d for d in staying if d is not None) == pytest.approx(p.last_node_done_s)
    assert len(p.per_node_done_s) == len(t.fetchers)


@pytest.mark.parametrize("n", [1, 10, 100, 1000, 10_000])
def test_swarm_hub_bytes_at_least_one_image_and_hub_only_sends_n_images(n: int) -> None:
    t = topo(farm(n, farms=max(1, n // 100)))
    size = t.image.total_bytes
    swarm = predict(t)
    hub_only = predict(Topology(t.hub, t.nodes, t.image, swarm=False))
    assert swarm.hub_bytes >= size * (1 - 1e-9)
    assert swarm.hub_bytes == pytest.approx(size)  # public nodes split the hub work without duplicates
    assert swarm.hub_bytes + swarm.peer_bytes == pytest.approx(n * size)
    assert hub_only.hub_bytes == pytest.approx(n * size)
    assert hub_only.peer_bytes == 0
    if n > 1:
        assert swarm.last_node_done_s < hub_only.last_node_done_s


def test_hub_only_is_monotone_in_nodes() -> None:
    times = [predict(topo(farm(n), swarm=False)).last_node_done_s for n in (1, 2, 5, 20, 100, 1000)]
    assert times == sorted(times)
    assert times[-1] > times[0]


@pytest.mark.parametrize("nat", [0, 20])
def test_more_peer_upload_is_never_slower(nat: int) -> None:
    times = [
        predict(topo(farm(60, up_mbps=up, down_mbps=500, nat=nat), hub=HubSpec(rate_mbps=50))).last_node_done_s
        for up in (2, 5, 10, 50, 200, None)
    ]
    assert all(later <= earlier * (1 + 1e-9) for earlier, later in itertools.pairwise(times))
    assert times[-1] < times[0]


def test_a_seed_spares_the_hub() -> None:
    p = predict(topo(farm(20, seeds=1)))
    assert p.hub_bytes == 0
    assert p.peer_bytes == pytest.approx(19 * 64 * MIB)


def test_nat_nodes_without_a_public_peer_fall_back_to_the_hub() -> None:
    t = topo(farm(10, nat=10))
    p = predict(t)
    assert p.peer_bytes == 0
    assert p.hub_bytes == pytest.approx(10 * t.image.total_bytes)
    hub_only = predict(Topology(t.hub, t.nodes, t.image, swarm=False))
    assert p.last_node_done_s == pytest.approx(hub_only.last_node_done_s, rel=0.01)


def test_nat_nodes_behind_one_seed_are_limited_by_its_upload() -> None:
    t = topo(farm(11, nat=10, seeds=1, up_mbps=100, down_mbps=1000))
    p = predict(t)
    assert p.hub_bytes == 0
    expected = 10 * t.image.total_bytes / (100 * 1e6 / 8)  # the only public uploader serves ten NAT nodes
    assert p.last_node_done_s == pytest.approx(expected, rel=0.02)


def test_the_hub_sends_nothing_during_an_outage() -> None:
    t = topo(farm(20), hub=HubSpec(rate_mbps=20, down=((1.0, 5.0),)))
    p = predict(t)
    inside = [hub for time, _, hub, _ in p.curve if 1.2 <= time <= 5.0]
    assert len(inside) > 2
    assert inside[0] == inside[-1] > 0
    assert p.last_node_done_s > predict(topo(farm(20), hub=HubSpec(rate_mbps=20))).last_node_done_s + 3


def test_churn_leavers_have_no_time_and_lost_bytes_come_again_from_the_hub() -> None:
    # the hub is fast and peers slow: early on, most bytes are held by one node each; leavers take theirs along
    nodes = farm(20, up_mbps=5, down_mbps=1000)
    hub = HubSpec(rate_mbps=2000, latency_ms=1)
    calm = predict(topo(nodes, hub=hub))
    churned = predict(topo(with_churn(nodes, 10, 0.3), hub=hub))
    assert churned.per_node_done_s[10:] == (None,) * 10
    assert all(d is not None for d in churned.per_node_done_s[:10])
    assert churned.hub_bytes > calm.hub_bytes * 1.05


def test_curve_is_cumulative_and_bounded() -> None:
    p = predict(topo(farm(50)), ModelParams(curve_points=50))
    assert 2 <= len(p.curve) <= 52
    times, done, hub, peer = (list(column) for column in zip(*p.curve, strict=True))
    for column in (times, done, hub, peer):
        assert column == sorted(column)
    assert (done[-1], hub[-1], peer[-1]) == (50, pytest.approx(p.hub_bytes), pytest.approx(p.peer_bytes))
    assert p.quantiles["max"] == pytest.approx(p.last_node_done_s)


def test_as_result_has_the_report_shape() -> None:
    from netsim.report import validate_result

    t = topo(farm(5))
    result = predict(t).as_result(t, "farm-deploy")
    validate_result(result)
    assert result["nodes"] == 5
    assert result["ratio_to_bound"] >= 1 - 1e-9


@pytest.mark.parametrize(
    ("cap", "count", "total", "expected"),
    [
        ([1.0, 2.0, 3.0], [1, 1, 1], 100.0, [1.0, 2.0, 3.0]),  # enough for everyone
        ([1.0, 2.0, 3.0], [1, 1, 1], 4.0, [1.0, 1.5, 1.5]),  # the small one is served, the rest share
        ([5.0, 5.0], [1, 3], 8.0, [2.0, 2.0]),  # counts weigh
        ([0.0, 4.0], [10, 1], 2.0, [0.0, 2.0]),
        ([1.0, 1.0], [1, 1], 0.0, [0.0, 0.0]),
    ],
)
def test_waterfill(cap: list[float], count: list[float], total: float, expected: list[float]) -> None:
    got = waterfill(np.array(cap), np.array(count, dtype=np.float64), total)
    assert got.tolist() == pytest.approx(expected)
    assert float((got * np.array(count)).sum()) <= total + 1e-9


def test_a_mirror_carries_the_deploy_while_the_first_hub_is_down() -> None:
    """hub-outage's shape: the first hub down for the whole run, the mirror as fast as it was: same finish, same
    hub bytes as one healthy hub; both down for a window: nothing from any hub then."""
    healthy = predict(topo(farm(20), hub=HubSpec(rate_mbps=20)))
    dead = HubSpec(rate_mbps=20, down=((0.0, 900.0),))
    t = Topology(dead, farm(20), ImageSpec(64), mirrors=(HubSpec(rate_mbps=20),))
    p = predict(t)
    assert p.last_node_done_s == pytest.approx(healthy.last_node_done_s, rel=0.05)
    assert p.hub_bytes == pytest.approx(t.image.total_bytes)
    both = Topology(HubSpec(rate_mbps=20, down=((1.0, 5.0),)), farm(20), ImageSpec(64), mirrors=(dead,))
    assert both.hub_outages() == [(1.0, 5.0)]
    inside = [hub for time, _, hub, _ in predict(both).curve if 1.2 <= time <= 5.0]
    assert inside[0] == inside[-1] > 0
