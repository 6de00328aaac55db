"""The farm's queue at the hub, chunk by chunk: when each chunk of the fetch order leaves the hub, and how many times.

Owns the model of the fetch policy's hub side as the agents run it (``p2pchunks/policy/hubwindow.py`` and
``fetch.py``): one farm of N nodes works down the image's fetch order (hot chunks first), keeping the first ``K``
chunks that nobody holds in flight at one hub; ``K`` is learned from measured hub times; a late chunk is taken over
by the next node in its rendezvous order after a deadline derived from the measured hub time. Every parameter of the
mechanism is an input (:class:`QueueParams`), defaults as the agents ship them. It must not know peers, caps or
processes: what happens to a chunk after it left the hub is ``model.py``'s fluid.

Theory of operation (time-stepped, a few dozen steps per chunk transfer):

* **Start.** No node asks the hub before ``grace_s``. An owner asks for its own chunks only once its candidate set
  (the farm's members) has been stable for ``settle_s`` after discovery (``discovery_s``): at
  ``max(grace_s, discovery_s + settle_s)``. A takeover needs no settled set, only the grace.
* **Queue.** A chunk may be requested once fewer than ``K`` chunks before it in the order are still missing from the
  farm (in flight or not asked yet); its owner requests it at its next look, ``notice_s`` later on average (spread
  evenly over twice that: each node looks at its own moments). A request waits ``latency_s`` for the hub's first
  byte and then shares the hub's egress with every request transferring (processor sharing: the reference hub
  serves its connections in turns, a 16 KiB piece each).
* **Window.** Each completed full-size request is a sample: ``t`` = its transfer time / K, ``K* = 2 + (L +
  reaction_s)/t``; the sampling node moves its ``K`` by ``min(1, step · N)`` of the way to ``K*``. Nodes are alike,
  so the model keeps their mean ``K``, moved by ``1/N`` of that per sample. ``K`` stays within [floor, ceiling] and
  under ``N · hub_slots``.
* **Hot first.** Until every hot chunk is in, only hot chunks enter the window (the agents' rule).
* **Takeovers.** A node counts a farm-mate idle from the later of the moment it first sees it (``first_seen_s``)
  and the end of the grace (nobody completes a piece before it) until that mate completes a piece, and again after
  each one: chunks reach every node ``spread_s`` after they leave the hub. A
  chunk in the window whose owner has been idle for ``p`` deadlines is asked for by the p-th next node of its
  rendezvous order (one more request per deadline, never N); deadline = ``max(floor, factor × srtt)``, srtt the
  smoothed hub time of a chunk (hot chunks: their own floor and factor). A taker that goes before the owner has
  asked stands in for it (the owner then sees the chunk on its way and does not ask: the runs show no copy then);
  one that goes after is a second copy. Copies are never cancelled: every copy the hub starts, it sends whole.

What it leaves out: node spacing (a node starts its own requests one ``t`` apart: with N ≥ 2 the farm starts
requests faster than the hub serves them, so it never binds); per-node differences of ``K`` (the mean stands for all);
hub errors (the window halves; not modelled). Hub outages (rate 0) freeze transfers in flight.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class QueueParams:
    """The farm queue's mechanism (defaults: the agents' ``HubWindow`` and ``FetchParams``) and its timings."""

    initial: float = 3.0
    """``HubWindow.initial``: the farm window before anything is measured, in chunks."""
    floor: float = 1.0
    ceiling: float = 256.0
    step: float = 0.05
    """``HubWindow.step``: how far one sample moves the sampling node's K toward K* (times N, at most all the way)."""
    reaction_s: float = 0.05
    """``HubWindow.reaction_s``: the reaction time the agents put into K* (a constant of theirs)."""
    notice_s: float = 0.05
    """The reaction time they really have: from a place freeing in the queue to the request (half a 0.1 s look)."""
    grace_s: float = 0.5
    settle_s: float = 0.3
    discovery_s: float = 0.5
    """From the deploy's start until every node's candidate set is complete (LSD; grows with N on a busy machine)."""
    first_seen_s: float = 0.2
    """When a node first sees its farm-mates (LSD: the first peers connect ~0.1 s after the torrent is added): from
    then on it counts them idle until they complete a piece."""
    spread_s: float = 0.05
    """From a chunk leaving the hub until every node holds it (and so has completed a piece: it is not idle)."""
    hot_deadline_s: float = 1.0
    owner_stall_s: float = 2.0
    hot_hub_factor: float = 2.0
    stall_hub_factor: float = 4.0
    hub_slots: int = 8
    weight: float = 0.25
    """EWMA weight of the smoothed hub time (``HubWindow.weight``)."""

    @property
    def first_request_s(self) -> float:
        return max(self.grace_s, self.discovery_s + self.settle_s)

    @classmethod
    def from_policy(cls, **timings: Any) -> QueueParams:
        """The mechanism's parameters as the agents ship them (``HubWindow()``, ``FetchParams()``), ``timings`` over."""
        from p2pchunks.policy.fetch import FetchParams
        from p2pchunks.policy.hubwindow import HubWindow

        window, fetch = HubWindow(), FetchParams()
        shipped = cls(
            initial=window.initial, floor=window.floor, ceiling=window.ceiling, step=window.step,
            reaction_s=window.reaction_s, weight=window.weight, grace_s=fetch.discovery_grace_s,
            settle_s=fetch.settle_s, hot_deadline_s=fetch.hot_deadline_s, owner_stall_s=fetch.owner_stall_s,
            hot_hub_factor=fetch.hot_hub_factor, stall_hub_factor=fetch.stall_hub_factor, hub_slots=fetch.hub_slots,
        )  # fmt: skip
        return dataclasses.replace(shipped, **timings)


DISCOVERY_S_SHARED = 0.75
"""Loopback on a 2-core machine: every node's candidate set is complete about 0.75 s after the deploy starts at 16 to
64 nodes, within half a second at 8 (measured: ``first_hub_chunk_s`` - settle; docs/netsim.md)."""
DISCOVERY_S = 0.5
"""Nodes on machines of their own: LSD finds the farm within half a second (an assumption, not a measurement)."""


def discovery_s(nodes: int, shared_machine: bool) -> float:
    """When every node's candidate set is complete (``DISCOVERY_S_SHARED``, ``DISCOVERY_S``; a farm of a few nodes
    sooner: 60 ms a node, as measured at 8)."""
    return min(DISCOVERY_S_SHARED if shared_machine else DISCOVERY_S, 0.06 * nodes)


@dataclass(frozen=True)
class Chunk:
    size: int
    hot: bool = False


def image_chunks(file_sizes: Sequence[tuple[int, bool]], chunk_bytes: int) -> list[Chunk]:
    """The fetch order of an image whose files are ``(size, hot)``: each file cut into ``chunk_bytes`` pieces, the
    hot files' chunks first (as ``hub.publish`` cuts files and ``fetch.fetch_order`` orders chunks)."""
    out: list[Chunk] = []
    for hot_first in (True, False):
        for size, hot in file_sizes:
            if hot != hot_first:
                continue
            full, rest = divmod(size, chunk_bytes)
            out += [Chunk(chunk_bytes, hot)] * full + ([Chunk(rest, hot)] if rest else [])
    return out


_GOLDEN = (math.sqrt(5) - 1) / 2


def _notice(index: int, mean_s: float) -> float:
    """How long the owner of the ``index``-th chunk takes to notice its place: spread evenly over [0, 2 × mean)
    (each node looks at its own moment; a low-discrepancy sequence rather than a random draw keeps it deterministic,
    and keeps chunks that enter the window together from starting, and so finishing, together)."""
    return 2 * mean_s * ((index * _GOLDEN) % 1.0)


@dataclass
class _Request:
    chunk: int
    transfer_at: float
    """When the first byte comes (request sent + hub latency)."""
    remaining: float
    k: float
    """The farm window when it was sent (its sample divides by it)."""


@dataclass
class QueueRun:
    """What the farm queue did."""

    done_at: list[float]
    """When each chunk (fetch order) first left the hub whole; ``inf`` if never."""
    hub_bytes: float
    requests: int
    takeovers: int
    """Requests made by takers (the agents' HOT_DEADLINE and OWNER_STALLED), whether they stood in or were copies."""
    first_request_s: float
    window: list[tuple[float, float]] = field(default_factory=list)
    """``(t, K)`` at each sample."""
    peak_inflight: int = 0

    @property
    def copies(self) -> int:
        """Requests beyond one per chunk: the chunks the hub sent twice or more."""
        return self.requests - len(self.done_at)

    def hot_done_at(self, chunks: Sequence[Chunk]) -> float:
        hot = [t for t, chunk in zip(self.done_at, chunks, strict=True) if chunk.hot]
        return max(hot) if hot else self.first_request_s

    def distinct_by(self, chunks: Sequence[Chunk], t: float) -> float:
        """Distinct bytes that had left the hub by ``t``."""
        return float(sum(chunk.size for chunk, done in zip(chunks, self.done_at, strict=True) if done <= t))


def run_queue(
    chunks: Sequence[Chunk],
    nodes: int,
    rate_bps: Callable[[float], float],
    latency_s: float,
    params: QueueParams = QueueParams(),
    *,
    dt: float | None = None,
    horizon_s: float = 3600.0,
) -> QueueRun:
    """Simulate one farm of ``nodes`` fetching ``chunks`` (in fetch order) from one hub of ``rate_bps(t)``."""
    p = params
    full = max((c.size for c in chunks), default=1)
    typical_rate = max(rate_bps(p.first_request_s), 1.0)
    owners_from = p.first_request_s  # owners ask once settled; takers from the grace on
    dt = dt or max(1e-4, min(full / typical_rate, latency_s or 1.0, p.notice_s or 1.0) / 20)
    n = max(1, nodes)
    done_at = [math.inf] * len(chunks)
    asked_at = [math.inf] * len(chunks)  # when each chunk entered the farm's window
    copies = [0] * len(chunks)  # requests sent for each chunk
    inflight: list[_Request] = []
    k = min(p.initial, n * p.hub_slots)
    srtt: float | None = None
    last_received = max(p.first_seen_s, p.grace_s)  # when owners last completed a piece (or the grace ended)
    taken_at = [math.inf] * len(chunks)  # when a taker first asked for each chunk
    arrivals: list[float] = []  # when chunks that left the hub reach every node
    sent = 0.0
    run = QueueRun(done_at, 0.0, 0, 0, p.first_request_s)
    t = min(p.grace_s, owners_from)
    head = 0  # first chunk not yet done
    while head < len(chunks) and t < horizon_s:
        # the window: the first K chunks still missing (rounded: K is a mean over nodes)
        limit = max(1, math.floor(k + 0.5))
        missing = 0
        hot_missing = any(c.hot and done_at[i] == math.inf for i, c in enumerate(chunks[head:], head))
        for index in range(head, len(chunks)):
            if missing >= limit:
                break
            if done_at[index] < math.inf:
                continue
            if hot_missing and not chunks[index].hot:
                break  # hot chunks have the hub to themselves until each is in
            missing += 1
            if asked_at[index] == math.inf:
                asked_at[index] = t
            owner_at = max(owners_from, asked_at[index] + _notice(index, p.notice_s))
            hot = chunks[index].hot
            floor, factor = (p.hot_deadline_s, p.hot_hub_factor) if hot else (p.owner_stall_s, p.stall_hub_factor)
            deadline = max(floor, factor * srtt) if srtt is not None else floor
            takers = min(n - 1, math.floor(max(0.0, t - last_received) / deadline))  # one more per deadline
            if takers and taken_at[index] == math.inf:
                taken_at[index] = t
            owner = t >= owner_at and owner_at <= taken_at[index]  # a taker that went first stands in for it
            while copies[index] < takers + owner:
                copies[index] += 1
                run.requests += 1
                run.takeovers += copies[index] > 1 or not owner
                inflight.append(_Request(index, t + latency_s, float(chunks[index].size), k))
        run.peak_inflight = max(run.peak_inflight, len(inflight))
        # processor sharing among the transfers that have their first byte
        moving = [r for r in inflight if r.transfer_at <= t]
        share = rate_bps(t) * dt / len(moving) if moving else 0.0
        t += dt
        for request in moving:
            taken = min(share, request.remaining)
            request.remaining -= taken
            sent += taken
        for request in [r for r in moving if r.remaining <= 0]:
            inflight.remove(request)
            chunk = chunks[request.chunk]
            if done_at[request.chunk] == math.inf:
                done_at[request.chunk] = t
                arrivals.append(t + p.spread_s)
            if chunk.size * 2 >= full:  # a sample (full-size chunks only, as the agents take them)
                seconds = t - (request.transfer_at - latency_s)
                srtt = seconds if srtt is None else (1 - p.weight) * srtt + p.weight * seconds
                per_chunk = max(t - request.transfer_at, 1e-6) / request.k
                target = 2 + (latency_s + p.reaction_s) / per_chunk
                k += min(1.0, p.step * n) / n * (target - k)
                k = min(p.ceiling, n * p.hub_slots, max(p.floor, k))
                run.window.append((round(t, 4), round(k, 3)))
        # a chunk that left the hub reaches every owner spread_s later: from then on they are not idle
        if arrivals and arrivals[0] <= t:
            last_received = max(last_received, *(a for a in arrivals if a <= t))
            arrivals = [a for a in arrivals if a > t]
        while head < len(chunks) and done_at[head] < math.inf:
            head += 1
    # the copies still in flight when the last chunk is done are sent whole, as the agents never cancel them
    run.hub_bytes = sent + sum(r.remaining for r in inflight)
    return run
