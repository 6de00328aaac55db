"""The farm window as plain data: its rules in tables, and N simulated nodes sharing one simulated hub."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from p2pchunks.policy.fetch import owner_of
from p2pchunks.policy.hubwindow import HubWindow

# ---- the rules --------------------------------------------------------------------------------------------------


def test_it_converges_to_one_chunk_more_than_the_bandwidth_delay_product_from_above_and_below() -> None:
    latency, alone = 0.05, 0.02  # the hub's latency; one chunk's transfer at its full rate
    for start in (1.0, 3.0, 40.0):
        window = HubWindow(initial=start, members=8, reaction_s=0.0)
        for _ in range(200):
            k = window.farm  # the farm keeps K in flight: each transfer shares the hub with K - 1 others
            window.done(latency + k * alone, latency, full_size=True)
        assert window.farm == pytest.approx(2 + latency / alone, rel=0.05)
        assert window.target == pytest.approx(2 + latency / alone, rel=0.05)


def test_small_chunks_unknown_first_bytes_and_errors() -> None:
    window = HubWindow(initial=4.0)
    window.done(5.0, 0.1, full_size=False)  # a 100-byte tail chunk: all latency, no sample
    assert window.srtt is None
    window.done(0.5, None, full_size=True)  # zdb: no first-byte time, only the hub time for the deadlines
    assert window.srtt == 0.5
    assert window.farm == 4.0
    window.failed()
    assert window.farm == 2.0
    window.failed()
    window.failed()
    assert window.farm == 1.0  # the floor: one chunk in flight


def test_a_hub_that_does_not_share_its_egress_gets_more_requests_the_longer_its_latency() -> None:
    for latency, settles in ((0.05, 4.0), (0.08, 10.0)):
        window = HubWindow(initial=2.0, members=4, reaction_s=0.0)
        for _ in range(300):
            window.done(latency + 0.1, latency, full_size=True)  # every transfer 0.1 s, however many run at once
        assert window.farm == pytest.approx(settles, rel=0.05)  # K = 2 / (1 - latency / transfer)


# ---- a farm sharing one hub -------------------------------------------------------------------------------------


@dataclass
class _Request:
    node: int
    chunk: int
    started: float
    remaining: float


@dataclass
class SimulatedHub:
    """Latency, then the egress cap shared equally by every transfer under way (what the reference hub does)."""

    rate: float
    latency: float
    active: list[_Request] = field(default_factory=list)
    busy_s: float = 0.0

    def step(self, now: float, dt: float) -> list[_Request]:
        sending = [r for r in self.active if now >= r.started + self.latency]
        if sending:
            self.busy_s += dt
            share = self.rate * dt / len(sending)
            for request in sending:
                request.remaining -= share
        done = [r for r in self.active if r.remaining <= 0]
        self.active = [r for r in self.active if r.remaining > 0]
        return done


def simulate(nodes: int, rate_mbps: float, latency: float, chunks: int) -> tuple[float, float, float, float]:
    """Every node runs the farm queue (a chunk it owns goes to the hub once fewer than its K chunks before it are
    missing) and learns K from its own hub times. As a fetch job does, a node looks once a tick (each at its own
    phase) and at once when one of its own requests completes; a chunk is seen by all as soon as it arrives.

    Returns (mean requests in flight, hub busy share, BDP in chunks, finish time / ideal)."""
    size = 512 * 1024
    rate = rate_mbps * 1e6 / 8
    hub = SimulatedHub(rate, latency)
    rng = random.Random(nodes)
    names = [f"10.0.0.{i}" for i in range(nodes)]
    owner = [names.index(owner_of(str(c), names)) for c in range(chunks)]
    tick = 0.1
    windows = [HubWindow(members=nodes, reaction_s=tick / 2) for _ in range(nodes)]
    phases = [rng.uniform(0, tick) for _ in range(nodes)]
    held = [False] * chunks
    asked = [False] * chunks
    dt, now = 0.002, 0.0
    samples: list[int] = []
    looking = set(range(nodes))
    last_start = [-1.0] * nodes
    while not all(held) and now < 600:
        looking |= {i for i in range(nodes) if (now - phases[i]) % tick < dt}
        for c in range(chunks):
            if held[c] or asked[c] or owner[c] not in looking:
                continue
            missing_before = sum(1 for d in range(c) if not held[d])
            node = owner[c]
            if missing_before + 1 > windows[node].farm or now < last_start[node] + windows[node].spacing_s:
                continue
            last_start[node] = now
            asked[c] = True
            hub.active.append(_Request(owner[c], c, now, size))
        looking = {i for i in range(nodes) if 0 <= now - (last_start[i] + windows[i].spacing_s) < dt}
        for request in hub.step(now, dt):
            held[request.chunk] = True
            windows[request.node].done(now - request.started, latency, full_size=True)
            looking.add(request.node)
        samples.append(len(hub.active))
        now += dt
    transfer = size / rate
    ideal = latency + chunks * transfer
    bdp = 1 + (latency + tick / 2) / transfer  # the queue's round trip: the hub's latency and a node's notice
    return sum(samples) / len(samples), hub.busy_s / now, bdp, now / ideal


@pytest.mark.parametrize("nodes", [1, 8, 64])
@pytest.mark.parametrize(("rate_mbps", "latency", "chunks"), [(25.0, 0.05, 64), (200.0, 0.05, 256)])
def test_a_farm_keeps_the_hubs_pipe_full_and_no_fuller_whatever_its_size(
    nodes: int, rate_mbps: float, latency: float, chunks: int
) -> None:
    mean_inflight, busy, bdp, slowdown = simulate(nodes, rate_mbps, latency, chunks)
    assert mean_inflight <= 2 * bdp, (mean_inflight, bdp)
    assert busy >= 0.8, f"the hub idles {1 - busy:.0%} of the time"
    assert slowdown <= 1.3, f"{slowdown:.2f} times the time of a hub that never idles"
