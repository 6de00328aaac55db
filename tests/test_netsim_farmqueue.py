"""The farm queue at the hub (netsim.farmqueue) and the flow model that uses it: invariants of the mechanism as the
model sees it, never timings of the model itself."""

from __future__ import annotations

import dataclasses
import math

import pytest

from netsim.bound import lower_bound_s
from netsim.farmqueue import Chunk, QueueParams, image_chunks, run_queue
from netsim.model import ModelParams, predict, queue_applies
from netsim.topology import HubSpec, ImageSpec, Topology, farm, with_churn

MIB = 1024 * 1024
KIB = 1024
RATE = 25e6 / 8  # 25 Mbit/s
IMAGE = image_chunks([(838_860, True), (16 * MIB - 838_860, False)], 512 * KIB)


def test_the_shipped_mechanism_is_the_policys() -> None:
    # QueueParams() holds the agents' defaults; from_policy reads them from the policy itself: a drift shows here
    shipped = QueueParams.from_policy()
    assert shipped == QueueParams()
    assert QueueParams.from_policy(discovery_s=3.0).discovery_s == 3.0


@pytest.mark.parametrize(
    ("files", "chunk", "sizes"),
    [
        ([(10, False)], 4, [(4, False), (4, False), (2, False)]),
        ([(8, False), (3, True)], 4, [(3, True), (4, False), (4, False)]),  # hot files first, whatever their place
        ([(4, True), (5, True)], 4, [(4, True), (4, True), (1, True)]),  # each file cut on its own
        ([], 4, []),
    ],
)
def test_image_chunks_table(files: list[tuple[int, bool]], chunk: int, sizes: list[tuple[int, bool]]) -> None:
    assert image_chunks(files, chunk) == [Chunk(size, hot) for size, hot in sizes]


@pytest.mark.parametrize("nodes", [1, 2, 8, 64, 1000, 10_000])
@pytest.mark.parametrize("latency", [0.0, 0.05, 0.2])
def test_every_chunk_leaves_the_hub_and_never_faster_than_the_hub_allows(nodes: int, latency: float) -> None:
    params = QueueParams(discovery_s=0.0)
    run = run_queue(IMAGE, nodes, lambda t: RATE, latency, params)
    size = sum(chunk.size for chunk in IMAGE)
    assert all(math.isfinite(done) for done in run.done_at)
    assert run.hub_bytes >= size * (1 - 1e-9)
    assert run.hub_bytes == pytest.approx(size * run.requests / len(IMAGE), rel=0.1)
    assert max(run.done_at) >= params.first_request_s + latency + size / RATE * (1 - 1e-6)
    assert run.requests == len(IMAGE) + run.copies
    assert 0 <= run.copies <= run.takeovers


def test_the_farm_keeps_the_hubs_pipe_full_and_no_fuller_whatever_its_size() -> None:
    # no takeovers (the owners count as idle only from the first request): the window alone
    params = QueueParams(discovery_s=0.0, first_seen_s=1.0)
    size = sum(chunk.size for chunk in IMAGE)
    peaks = []
    for nodes in (8, 64, 1000, 10_000):
        run = run_queue(IMAGE, nodes, lambda t: RATE, 0.05, params)
        assert run.takeovers == 0
        # full: the image leaves the hub within 10 % of its time at the hub's rate (plus a latency and the last
        # chunk's notice); no fuller: the hub holds a handful of requests, not N (nor 8 per node)
        assert max(run.done_at) - params.first_request_s <= size / RATE * 1.1 + 0.05 + 2 * params.notice_s
        peaks.append(run.peak_inflight)
        t = 512 * KIB / RATE
        assert run.window[-1][1] == pytest.approx(2 + (0.05 + params.reaction_s) / t, rel=0.25)
    assert max(peaks) <= 6
    assert len(set(peaks)) == 1  # the same queue at 8 nodes as at 10,000


def test_hot_chunks_leave_first() -> None:
    run = run_queue(IMAGE, 16, lambda t: RATE, 0.05, QueueParams(discovery_s=0.0))
    hot = [done for done, chunk in zip(run.done_at, IMAGE, strict=True) if chunk.hot]
    rest = [done for done, chunk in zip(run.done_at, IMAGE, strict=True) if not chunk.hot]
    assert run.hot_done_at(IMAGE) == max(hot) < sorted(rest)[len(rest) // 4]


def test_owners_idle_past_a_deadline_are_taken_over_one_node_per_deadline() -> None:
    size = sum(chunk.size for chunk in IMAGE)
    calm = run_queue(IMAGE, 64, lambda t: RATE, 0.05, QueueParams(discovery_s=0.0, first_seen_s=1.0))
    assert (calm.takeovers, calm.copies) == (0, 0)
    # mates seen at 0.2 s, owners ask at the grace (1 s): an owner counts as idle from the grace on, not from first
    # sight, so a hot chunk asked for at the grace is not taken over as soon as it starts
    early = run_queue(IMAGE, 64, lambda t: RATE, 0.05, QueueParams(discovery_s=0.0, first_seen_s=0.2))
    assert early.copies == 0
    assert early.hub_bytes == pytest.approx(size)
    # owners that have not settled long after the grace (slow discovery): the takers go first and stand in for them
    late = run_queue(IMAGE, 64, lambda t: RATE, 0.05, QueueParams(discovery_s=3.0, first_seen_s=0.2))
    assert late.takeovers > 0
    assert late.copies < late.takeovers
    # a few requests for the chunks at the head of the queue, never one per node
    for run in (early, late):
        assert run.takeovers <= 3 * (run.peak_inflight + 2)


def test_an_outage_freezes_the_queue_for_its_length() -> None:
    def down(t: float) -> float:
        return 0.0 if 2.0 <= t < 5.0 else RATE

    calm = run_queue(IMAGE, 8, lambda t: RATE, 0.05, QueueParams(discovery_s=0.0, first_seen_s=1.0))
    cut = run_queue(IMAGE, 8, down, 0.05, QueueParams(discovery_s=0.0, first_seen_s=1.0))
    assert max(cut.done_at) == pytest.approx(max(calm.done_at) + 3.0, abs=0.6)  # and a restart


# ---- the flow model with the farm queue ------------------------------------------------------------------------


def deploy(nodes: int, **hub: float) -> Topology:
    return Topology(HubSpec(latency_ms=50, rate_mbps=25, **hub), farm(nodes, up_mbps=None, down_mbps=None),
                    ImageSpec(16))  # fmt: skip


QUEUE = QueueParams(discovery_s=0.5)
QUEUED = ModelParams(queue=QUEUE)


@pytest.mark.parametrize("nodes", [1, 8, 64, 1000])
def test_the_model_takes_the_queues_hub_bytes_and_times(nodes: int) -> None:
    topo = deploy(nodes)
    assert queue_applies(topo)
    p = predict(topo, QUEUED)
    assert p.queue is not None
    assert p.hub_bytes == pytest.approx(p.queue.hub_bytes)
    assert p.last_node_done_s >= max(p.queue.done_at) + QUEUE.spread_s * (1 - 1e-9)
    assert p.last_node_done_s >= lower_bound_s(topo)
    assert p.hot_done_s is not None
    assert p.hot_done_s < p.last_node_done_s
    result = p.as_result(topo)
    assert result["hot_done_s"] == p.hot_done_s
    assert result["takeovers"] == p.queue.takeovers


def test_the_model_without_the_queue_is_the_ideal() -> None:
    topo = deploy(16)
    ideal, queued = predict(topo), predict(topo, QUEUED)
    assert ideal.queue is None
    assert ideal.hub_bytes == pytest.approx(topo.image.total_bytes)
    assert queued.last_node_done_s > ideal.last_node_done_s  # grace, latency, a window: never better than ideal


@pytest.mark.parametrize(
    "topo",
    [
        Topology(HubSpec(), farm(10, farms=2), ImageSpec(16)),  # two farms: two queues, not modelled
        Topology(HubSpec(), farm(10, nat=3), ImageSpec(16)),
        Topology(HubSpec(), farm(10, seeds=1), ImageSpec(16)),
        Topology(HubSpec(), with_churn(farm(10), 2, 1.0), ImageSpec(16)),
        Topology(HubSpec(), farm(10), ImageSpec(16), stagger_s=0.5),
        Topology(HubSpec(), farm(10), ImageSpec(16), swarm=False),
    ],
)
def test_topologies_the_queue_does_not_cover_take_the_ideal(topo: Topology) -> None:
    assert not queue_applies(topo)
    p = predict(topo, QUEUED)
    assert p.queue is None
    assert p.last_node_done_s >= lower_bound_s(topo) * (1 - 1e-9)


def test_shared_cores_hold_the_farm_back_by_the_cpu_its_agents_need() -> None:
    topo = deploy(64)
    free = predict(topo, QUEUED)
    params = dataclasses.replace(QUEUED, cpu_s_per_mib=0.02, cores=2.0)
    shared = predict(topo, params)
    work = 64 * 16 * 0.02  # CPU seconds to take the image in at 64 nodes: 20 s on 2 cores at least
    assert shared.agent_cpu_s == pytest.approx(work)
    assert shared.last_node_done_s >= work / 2.0
    assert shared.last_node_done_s > free.last_node_done_s
    # connections cost CPU too: what they take is not left for the bytes
    busy = predict(topo, dataclasses.replace(params, cpu_s_per_peer_s=2e-4))
    assert busy.last_node_done_s >= work / (2.0 - 64 * 63 * 2e-4)
    assert busy.agent_cpu_s == pytest.approx(work + 64 * 63 * 2e-4 * busy.last_node_done_s)
    assert predict(topo, dataclasses.replace(params, cores=0.0)).last_node_done_s == free.last_node_done_s
    # a farm that fits its machine is not held back at all
    small = deploy(4)
    assert predict(small, params).last_node_done_s == pytest.approx(predict(small, QUEUED).last_node_done_s, rel=0.01)
