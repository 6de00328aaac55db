"""A flow-level (fluid) model of one netsim scenario: when the nodes finish and what the hub sends.

Owns the prediction for 100 to 10,000 nodes from the same ``Topology`` the runners use, cheap enough to sweep
(10,000 identical nodes take well under a second: nodes are aggregated into classes). It must not know agents,
processes or sockets; it does not replace a run, it tells what a run should come close to.

Assumptions (each a simplification of what the agents do; see ``p2pchunks/fetch.py`` for the real policy):

* **Classes.** Nodes with the same role, caps, start and leave time are one class and progress identically
  (their mean); the spread inside a class that a real swarm shows is not modelled.
* **Fluid chunks.** Data are a fluid of bytes; a chunk's piece-level transfer is not modelled, and rarest-first is
  approximated as uniform: every byte present in the swarm is equally available to every node lacking it.
* **Swarm content.** ``A`` is the number of distinct bytes held by active nodes (seeds hold everything). Peers can
  only give a node bytes of ``A`` it lacks, at a total rate ``min(Σ upload, Σ download)`` over active nodes holding
  something. NAT nodes upload only to public nodes (NAT-to-NAT peers cannot connect: the loopback backend's
  stand-in, ``bound.loopback_standin``; farm-mates behind one router and farm WAN caps are not modelled); public
  nodes upload to all. "Seeds" are the nodes that start full.
  Peer bandwidth is shared in proportion to what each node can still take.
* **Hub, swarm mode, one farm (``ModelParams.queue``).** What the fetch policy does at the hub is simulated chunk by
  chunk in ``farmqueue``: the discovery grace and settle time, the farm's queue of ``K`` chunks in flight, the hub's
  latency and processor sharing (requests beyond the pipe only wait), ``K`` learned from measured hub times, and
  takeovers down each chunk's rendezvous order after deadlines from the measured hub time (every copy the hub sends
  is hub bytes). Each chunk that leaves the hub is held by its owner (one node in N; at most as fast as its download
  cap takes it in: the queue itself knows no node caps) and spreads from there as the fluid below; every node holds
  the last chunk ``spread_s`` after it left the hub. Applies to a single farm of public nodes that start together,
  none full and none leaving; other topologies take the ideal below.
* **Hub, swarm mode, ideal (``queue`` None).** The hub sends only bytes no peer has (``F - A``); the nodes split that
  work without duplicates (the rendezvous split of ``fetch.py``), so hub egress adds ``A`` one for one. Hub egress is
  capped at ``u_hub`` and shared max-min fairly; each node's hub rate is also capped by ``hub_slots · chunk /
  latency``. No queueing, no takeovers, the coordination time (``coordination_s``) added at the end.
* **CPU (``cores``, ``cpu_s_per_mib``, ``cpu_s_per_peer_s``).** An agent spends ``cpu_s_per_mib`` on each MiB it
  takes in, and ``cpu_s_per_peer_s`` each second for each farm-mate it is connected to (its looks walk every peer,
  libtorrent keeps every connection). Where N agents share ``cores`` (a loopback run), the connections take
  ``N(N-1) · cpu_s_per_peer_s`` of them and what is left caps the bytes all nodes together take in per second
  (``(cores - that) / cpu_s_per_mib`` MiB/s, never below a tenth of the cores): a farm too big for its machine
  finishes when its CPU allows, not its hub. The agents' CPU seconds: ``N · F · cpu_s_per_mib +
  N(N-1) · cpu_s_per_peer_s · T`` (T: the last node done).
* **Hub, hub-only mode.** Every node fetches everything from the hub, same caps; peers exchange nothing.
* **Per step.** Hub first (it creates swarm content), then peers from what the swarm held at the step's start;
  each node's download cap bounds both together. A node is done at the end of the step in which it holds ``F``
  (times are at most one step, ~0.1 % of the run, pessimistic).
* **Churn.** A node stops at ``leave_s``: its upload is gone, and so are the bytes only it held, estimated with
  independent uniform holdings: ``A ← A · cov(stayers) / cov(all)``, ``cov(S) = 1 - Π_S (1 - b/A)``. The hub then
  sends those bytes again. A node that leaves unfinished has no completion time.
* **Outages.** During a ``hub.down`` window that hub sends nothing (the hubs that are up share their rates; with
  every hub down, peers go on with what the swarm holds).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .bound import lower_bound_s
from .farmqueue import Chunk, QueueParams, QueueRun, image_chunks, run_queue
from .topology import Topology

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ModelParams:
    hub_slots: int = 8
    """Hub requests one node keeps in flight (``FetchSection.hub_slots``)."""
    steps: int = 1000
    """Time steps per horizon; the step doubles each time a horizon passes unfinished."""
    max_steps: int = 50_000
    """Give up after this many steps (unfinished nodes then have no completion time)."""
    curve_points: int = 200
    coordination_s: float = 0.0
    """Ideal swarm runs only: time during which no node asks the hub (the agents' discovery grace + settle time);
    added to every completion time. 0: the ideal."""
    queue: QueueParams | None = None
    """The farm's queue at the hub (``farmqueue``: queueing, the farm window, takeovers); None: the ideal."""
    cpu_s_per_mib: float = 0.0
    """Agent CPU seconds per MiB one node fetches (a run's ``agent_cpu_s`` / (N × image MiB)); 0: not modelled."""
    cpu_s_per_peer_s: float = 0.0
    """Agent CPU seconds per second per connected farm-mate (fitted on loopback runs); 0: not modelled."""
    cores: float = 0.0
    """Cores all agents share (a loopback run on one machine); 0: each agent has its own (a real grid)."""


@dataclass(frozen=True)
class Prediction:
    last_node_done_s: float
    """When the last fetching node that stays to the end is done (``math.inf`` if one never is)."""
    per_node_done_s: tuple[float | None, ...]
    """Fetching nodes in topology order; ``None`` for a node that left (or the model gave up) unfinished."""
    hub_bytes: float
    peer_bytes: float
    quantiles: dict[str, float]
    """``p50``, ``p90``, ``p99``, ``max`` of the completion times of the nodes that finished."""
    curve: tuple[tuple[float, int, float, float], ...]
    """``(t_s, nodes done, hub bytes so far, peer bytes so far)``, at most ``curve_points`` rows."""
    hot_done_s: float | None = None
    """When every node holds the hot chunks (queue model only): the last hot chunk left the hub, and every node has
    taken in as many bytes as the hot set (its pieces go first), plus the spread."""
    agent_cpu_s: float | None = None
    """CPU seconds all agents use (``cpu_s_per_mib`` given)."""
    queue: QueueRun | None = None
    """The farm queue's run (queue model only): takeovers, the window, the first request."""

    def as_result(self, topo: Topology, scenario: str = "model") -> dict[str, Any]:
        """The prediction in the shape of a run's result (``report.REQUIRED_KEYS``, plus ``timeline``)."""
        bound = lower_bound_s(topo)
        last = self.last_node_done_s if math.isfinite(self.last_node_done_s) else None
        return {
            "scenario": scenario,
            "backend": "model",
            "nodes": len(self.per_node_done_s),
            "image_bytes": topo.image.total_bytes,
            "hub_bytes": self.hub_bytes,
            "peer_bytes": self.peer_bytes,
            "per_node_done_s": list(self.per_node_done_s),
            "last_node_done_s": last,
            "lower_bound_s": bound,
            "ratio_to_bound": None if last is None or bound <= 0 else last / bound,
            "hot_done_s": self.hot_done_s,
            "agent_cpu_s": self.agent_cpu_s,
            "takeovers": None if self.queue is None else self.queue.takeovers,
            "hub_peak_inflight": None if self.queue is None else self.queue.peak_inflight,
            "first_request_s": None if self.queue is None else self.queue.first_request_s,
            "errors": [],
            "corrupt_chunks": 0,
            "timeline": [list(row) for row in self.curve],
        }


@dataclass(frozen=True)
class _Classes:
    count: Floats
    up: Floats
    down: Floats
    start: Floats
    leave: Floats
    seed: Bools
    nat: Bools
    of_node: tuple[int, ...]
    """Class index of each fetching node, in topology order."""


def _classes(topo: Topology) -> _Classes:
    index: dict[tuple[bool, bool, float, float, float, float], int] = {}
    counts: list[int] = []
    of_node: list[int] = []
    for node, start in zip(topo.nodes, topo.start_times(), strict=True):
        leave = math.inf if node.leave_s is None else node.leave_s
        key = (not node.fetches, not node.public, node.up_bps, node.down_bps, start, leave)
        k = index.setdefault(key, len(index))
        if k == len(counts):
            counts.append(0)
        counts[k] += 1
        if node.fetches:
            of_node.append(k)
    keys = list(index)

    def column(i: int) -> Floats:
        return np.array([float(key[i]) for key in keys], dtype=np.float64)

    return _Classes(
        count=np.array(counts, dtype=np.float64),
        up=column(2),
        down=column(3),
        start=column(4),
        leave=column(5),
        seed=np.array([key[0] for key in keys], dtype=np.bool_),
        nat=np.array([key[1] for key in keys], dtype=np.bool_),
        of_node=tuple(of_node),
    )


def waterfill(cap: Floats, count: Floats, total: float) -> Floats:
    """Max-min fair shares: per-node amounts ``min(cap_k, level)`` with ``Σ count_k · amount_k ≤ total``."""
    if float((count * cap).sum()) <= total:
        return cap.copy()
    order = np.argsort(cap)
    c, m = cap[order], count[order]
    below = np.concatenate(([0.0], np.cumsum(m * c)[:-1]))
    tail = np.cumsum(m[::-1])[::-1]
    with np.errstate(invalid="ignore"):
        used = below + c * tail
    k = min(int(np.searchsorted(used, total)), len(c) - 1)
    level = (total - below[k]) / tail[k] if tail[k] > 0 else 0.0
    return np.minimum(cap, max(level, 0.0))


def _coverage(count: Floats, held: Floats, swarm: float) -> float:
    """Expected fraction of ``swarm`` bytes held by at least one of the nodes (independent uniform holdings)."""
    if swarm <= 0 or count.size == 0:
        return 0.0
    with np.errstate(divide="ignore"):
        log_missing = float((count * np.log1p(-np.minimum(held / swarm, 1.0))).sum())
    return 1.0 - math.exp(log_missing)


def _peer_shares(want: Floats, cls: _Classes, holders: Bools, dt: float) -> Floats:
    """Bytes each node of each class gets from peers this step (NAT uploaders serve public nodes only)."""
    up = cls.count * np.where(holders, cls.up, 0.0) * dt
    up_nat, up_pub = float(up[cls.nat].sum()), float(up[~cls.nat].sum())
    w = cls.count * want
    w_nat, w_pub = float(w[cls.nat].sum()), float(w[~cls.nat].sum())
    from_nat = min(up_nat, w_pub)
    rest_pub = w_pub - from_nat
    from_pub = min(up_pub, rest_pub + w_nat)
    share = from_pub / (rest_pub + w_nat) if rest_pub + w_nat > 0 else 0.0
    got_pub = from_nat + share * rest_pub
    ratio_pub = got_pub / w_pub if w_pub > 0 else 0.0
    ratio_nat = share
    return want * np.where(cls.nat, ratio_nat, ratio_pub)


def _reachable(cls: _Classes, active: Bools, held: Floats, swarm: float) -> float:
    """Swarm bytes a NAT node can reach: those held by active public nodes (NAT-to-NAT peers cannot connect)."""
    public = active & ~cls.nat
    if not public.any():
        return 0.0
    everyone = _coverage(cls.count[active], held[active], swarm)
    share = _coverage(cls.count[public], held[public], swarm) / everyone if everyone > 0 else 0.0
    return min(swarm, max(swarm * share, float(held[public].max())))


def _hub_swarm(
    cap: Floats, cls: _Classes, held: Floats, swarm: float, reach: float, budget: float, size: float
) -> tuple[Floats, float]:
    """Per-node caps and the total the hub may send in swarm mode.

    Public nodes ask only for bytes nobody holds (``size - swarm``, split without duplicates). A NAT node asks for
    what it cannot reach: bytes no public node holds and it lacks; beyond ``size - swarm`` those are duplicates of
    bytes only other NAT nodes hold (with no public node at all, every NAT node fetches everything: hub-only)."""
    own_unreachable = held * (1 - reach / swarm) if swarm > 0 else held
    nat_cap = np.maximum(size - reach - own_unreachable, 0.0)
    cap = np.minimum(cap, np.where(cls.nat, nat_cap, size - swarm))
    public_total = float((cls.count * cap)[~cls.nat].sum())
    nat_total = float((cls.count * cap)[cls.nat].sum())
    return cap, min(budget, min(public_total, size - swarm) + nat_total)


def queue_applies(topo: Topology) -> bool:
    """The farm-queue model covers one farm of public nodes that start together, none full, none leaving."""
    fetchers = topo.fetchers
    return (
        topo.swarm
        and len({node.farm for node in topo.nodes}) == 1
        and all(node.fetches and node.public and node.leave_s is None for node in topo.nodes)
        and max(topo.start_times(), default=0.0) == 0.0
        and len(fetchers) > 0
    )


def _run_queue(topo: Topology, params: ModelParams) -> tuple[list[Chunk], QueueRun] | None:
    if params.queue is None or not queue_applies(topo):
        return None
    chunks = image_chunks(topo.image.files, topo.image.chunk_bytes)
    run = run_queue(chunks, len(topo.fetchers), topo.hub_rate_bps, topo.hub.latency_ms / 1000, params.queue)
    return chunks, run


class _Arrivals:
    """Distinct bytes that had left the hub by a time (the queue run's chunks, by completion)."""

    def __init__(self, chunks: list[Chunk], run: QueueRun) -> None:
        pairs = sorted((done, chunk.size) for done, chunk in zip(run.done_at, chunks, strict=True))
        self.times = np.array([done for done, _ in pairs], dtype=np.float64)
        self.cumulative = np.cumsum(np.array([size for _, size in pairs], dtype=np.float64))

    def by(self, t: float) -> float:
        index = int(np.searchsorted(self.times, t, side="right"))
        return float(self.cumulative[index - 1]) if index else 0.0


def _initial_step(topo: Topology, params: ModelParams, per_node_hub: float, queued: float = 0.0) -> float:
    size = float(topo.image.total_bytes)
    scale = max(
        lower_bound_s(topo),
        queued,
        size / per_node_hub,
        max(topo.start_times()),
        max((end for _, end in topo.hub_outages()), default=0.0),
        1e-3,
    )
    return scale / params.steps


def predict(topo: Topology, params: ModelParams = ModelParams()) -> Prediction:
    """Simulate ``topo`` as a fluid (see the module header for what that leaves out)."""
    cls = _classes(topo)
    size = float(topo.image.total_bytes)
    latency = topo.hub.latency_ms / 1000
    per_node_hub = params.hub_slots * topo.image.chunk_bytes / latency if latency > 0 else math.inf
    queued = _run_queue(topo, params)
    arrivals = None if queued is None else _Arrivals(*queued)
    last_chunk = 0.0 if queued is None else max(d for d in queued[1].done_at if math.isfinite(d))
    held: Floats = np.zeros_like(cls.count)
    owed: Floats = np.zeros_like(cls.count)  # per node: queue bytes that left the hub and have not come in yet
    intake = _intake_bps(topo, params)
    hot_bytes = float(topo.image.hot_bytes * topo.image.count)
    hot_taken: float | None = None
    done: Floats = np.full_like(cls.count, np.nan)
    seed_done = cls.seed.copy()
    done[seed_done] = cls.start[seed_done]
    swarm = 0.0
    hub_total = peer_total = 0.0
    was_active: Bools = np.zeros_like(cls.seed)
    t, dt = 0.0, _initial_step(topo, params, per_node_hub, last_chunk)
    curve: list[tuple[float, int, float, float]] = [(0.0, 0, 0.0, 0.0)]
    fetch_count = cls.count * ~cls.seed
    for step in range(params.max_steps):
        if step and step % params.steps == 0:
            dt *= 2
        active = (cls.start <= t) & (t < cls.leave)
        held[active & cls.seed] = size
        if topo.swarm:
            left = was_active & ~active
            if left.any():
                before = _coverage(cls.count[was_active], held[was_active], swarm)
                after = _coverage(cls.count[active], held[active], swarm)
                swarm = swarm * after / before if before > 0 else 0.0
            swarm = max(swarm, float(held[active].max(initial=0.0)))
        was_active = active
        pending = ~cls.seed & np.isnan(done) & (t < cls.leave)
        if not pending.any():
            break
        fetching = active & pending
        need = np.where(fetching, size - held, 0.0)
        room = np.minimum(need, cls.down * dt)
        reach = _reachable(cls, active, held, swarm) if topo.swarm else 0.0
        hub: Floats = np.zeros_like(held)
        if arrivals is not None:  # the farm queue: what left the hub this step, one owner in N holding each chunk,
            new = arrivals.by(t + dt) - arrivals.by(t)  # taken in as fast as the owners' links allow
            owed = np.where(fetching, owed + new / float(fetch_count[fetching].sum() or 1), owed)
            hub = np.where(fetching, np.minimum(owed, room), 0.0)
            owed = owed - hub
        elif not topo.hubs_down(t):
            cap = np.minimum(room, per_node_hub * dt)
            budget = topo.hub_rate_bps(t) * dt
            if topo.swarm:
                cap, budget = _hub_swarm(cap, cls, held, swarm, reach, budget, size)
            hub = waterfill(cap, cls.count, budget)
        peer: Floats = np.zeros_like(held)
        if topo.swarm:
            lacks = np.where(cls.nat, reach * (1 - held / max(swarm, 1.0)), swarm - held)
            want = np.where(fetching, np.minimum(room - hub, np.maximum(lacks, 0.0)), 0.0)
            peer = _peer_shares(want, cls, active & (held > 0), dt)
        taken = float((cls.count * (hub + peer)).sum())
        if taken > intake * dt:  # the shared cores cannot take in more this step: everyone slows alike
            scale = intake * dt / taken
            if arrivals is not None:
                owed = owed + hub * (1 - scale)  # what left the hub waits at its owner's door
            hub, peer = hub * scale, peer * scale
        sent_hub = float((cls.count * hub).sum())
        hub_total += sent_hub
        peer_total += float((cls.count * peer).sum())
        swarm = min(size, swarm + sent_hub)  # NAT duplicates included: capped at the image
        held += hub + peer
        t += dt
        finished = fetching & (held >= size * (1 - 1e-12))
        held[finished] = size
        done[finished] = t
        curve.append((t, int((fetch_count * ~np.isnan(done)).sum()), hub_total, peer_total))
        if hot_taken is None and bool(np.all(held[~cls.seed & (cls.count > 0)] >= hot_bytes * (1 - 1e-9))):
            hot_taken = t  # hot pieces go first from peers too: a node's first bytes in are its hot ones
    hot_done = None
    if queued is not None:  # every node holds a chunk spread_s after it left the hub; copies are hub bytes too
        assert params.queue is not None
        chunks, run = queued
        hub_total = run.hub_bytes
        done = np.where(cls.seed, done, done + params.queue.spread_s)
        hot_done = max(run.hot_done_at(chunks), hot_taken or 0.0) + params.queue.spread_s
    elif topo.swarm and params.coordination_s:  # nobody asks the hub during discovery: everything starts later
        shift = params.coordination_s
        done = np.where(cls.seed, done, done + shift)
        curve = [(time + shift, count, hub, peer) for time, count, hub, peer in curve]
    prediction = _prediction(topo, cls, done, hub_total, peer_total, curve, params.curve_points)
    cpu = None
    if params.cpu_s_per_mib or params.cpu_s_per_peer_s:
        nodes = float(cls.count.sum())
        last = prediction.last_node_done_s if math.isfinite(prediction.last_node_done_s) else 0.0
        cpu = float(fetch_count.sum()) * size / 2**20 * params.cpu_s_per_mib
        cpu += nodes * (nodes - 1) * params.cpu_s_per_peer_s * last
    return dataclasses.replace(
        prediction, hot_done_s=hot_done, agent_cpu_s=cpu, queue=None if queued is None else queued[1]
    )


def _intake_bps(topo: Topology, params: ModelParams) -> float:
    """Bytes per second all nodes together can take in on the cores they share (``math.inf``: not CPU-bound)."""
    if params.cores <= 0 or params.cpu_s_per_mib <= 0:
        return math.inf
    nodes = len(topo.nodes)
    free = max(0.1 * params.cores, params.cores - nodes * (nodes - 1) * params.cpu_s_per_peer_s)
    return free / params.cpu_s_per_mib * 2**20


def _prediction(
    topo: Topology,
    cls: _Classes,
    done: Floats,
    hub_total: float,
    peer_total: float,
    curve: list[tuple[float, int, float, float]],
    points: int,
) -> Prediction:
    per_node = tuple(None if math.isnan(done[k]) else float(done[k]) for k in cls.of_node)
    stays = ~cls.seed & np.isinf(cls.leave) & (cls.count > 0)
    last = float(np.nanmax(np.where(stays, done, -np.inf), initial=0.0))
    if np.isnan(done[stays]).any():
        last = math.inf
    finished = np.array(sorted(d for d in per_node if d is not None), dtype=np.float64)
    quantiles = (
        {name: float(np.quantile(finished, q)) for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1))}
        if finished.size
        else {}
    )
    stride = max(1, math.ceil(len(curve) / points))
    kept = curve[::stride] + ([curve[-1]] if (len(curve) - 1) % stride else [])
    return Prediction(
        last_node_done_s=last,
        per_node_done_s=per_node,
        hub_bytes=hub_total,
        peer_bytes=peer_total,
        quantiles=quantiles,
        curve=tuple(kept),
    )
