"""The fetch policy: for every wanted chunk, cache → peers → hub, and when the hub.

This module owns every rule that decides where a chunk comes from. It is pure: plain data in, decisions out; it
imports no trio, socket, libtorrent or SQLite and reads no clock (elapsed times come in the ``View``).

Theory of operation
-------------------
A chunk already in the cache is never fetched. Every other chunk of a manifest is wanted from the swarm at once
(libtorrent's rarest-first), the hot ones first: until they are in, peers are asked for nothing else (piece
priorities) and the hub picks them first. The hub is the fallback, used
for a chunk only when peers cannot serve it in time:

* **nobody has it** (no connected peer holds the piece). If every node of a farm then asked the hub, the hub
  would send the image N times. So the nodes that still lack a chunk split the hub work between them by
  rendezvous hashing (highest random weight): each computes ``owner_of(chunk, candidates)`` over the same
  set — itself plus its connected peers that are still downloading — and fetches from the hub only the chunks
  it owns. Everything else arrives from its owner over the swarm. Before the first hub request a node waits
  ``discovery_grace_s`` so that peers (LSD, DHT, trackers) have been found, and it takes its share only while its
  candidate set has been stable for ``settle_s``, so that the split it computes is the one its peers compute.
* **its owner stalls or leaves**: a peer that has not completed a piece for ``owner_stall_s`` loses its share,
  and one that disconnects loses it at once; the others take it over.
* **a hot chunk misses its deadline** (no peer has it ``hot_deadline_s`` after the discovery grace): boot-critical
  chunks go to the hub whoever owns them.
* **peers are too slow**: when the torrent's payload rate from peers stays below ``peer_floor_bps`` for
  ``peer_floor_window_s`` while chunks are wanted, chunks peers do have may also come from the hub.

Seeds and strict NAT. Behind a strict NAT router every host of a farm reaches a public seed from the same address,
and the seed keeps one connection per address and port: one farm-mate (the farm's funnel) sees the seed, the
others see only the pieces the funnel already holds. So a node does not judge "nobody has it" by its own
connections alone when a tracker counts a seed in the swarm (``View.seeded``: some peer holds, or a seed is
committed to fetching, the whole image): it waits for peers as if they had it, with the same fallbacks (a hot
chunk past its deadline, peers slower than the floor). A seed (``View.seed``) does the opposite: it is the one
everybody can reach, so it takes from the hub every chunk no connected peer has, alone (``Reason.SEEDING``), and
the farms behind it take about one copy each through their WAN.

The hub is never asked for more than ``hub_slots`` chunks at once by one job, in fetch order (hot first, then
the manifest's file order); an agent-wide hub rate budget is applied by the hub client. When to ask the hub again
after a failure, and when to give up, is ``retry.py``'s; what the swarm looks like, ``swarmview.py``'s.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class Reason(enum.Enum):
    """Why a chunk was sent to the hub (logged and counted)."""

    ALONE = "no peer to share the hub work with"
    OWNED = "ours by rendezvous and no peer has it"
    OWNER_STALLED = "its owner stalled or left"
    HOT_DEADLINE = "hot chunk past its deadline"
    PEERS_TOO_SLOW = "peers slower than the floor"
    SEEDING = "a seed fetches what no connected peer has"
    ON_DEMAND = "asked for now (API, zdb proxy, fill) and no peer delivered in time"


@dataclass(frozen=True)
class FetchParams:
    discovery_grace_s: float = 1.0
    hot_deadline_s: float = 3.0
    owner_stall_s: float = 5.0
    peer_floor_bps: float = 64 * 1024
    peer_floor_window_s: float = 10.0
    hub_slots: int = 8
    settle_s: float = 0.5
    """Owned chunks go to the hub only once the candidate set has not changed for this long: nodes that see the
    same peers compute the same owners, so a set still changing would send some chunks to the hub twice."""


@dataclass(frozen=True, slots=True)
class Wanted:
    """A chunk the job still lacks."""

    chunk_id: str
    rank: int
    """Position in the fetch order: hot chunks first (in hot order), then file order."""
    hot: bool
    availability: int
    """How many connected peers hold it."""
    owner: str
    """``owner_of(chunk_id, view.candidates)``, computed once per candidate set by the caller."""


@dataclass(frozen=True)
class View:
    """What the job knows of the swarm right now."""

    me: str
    candidates: frozenset[str]
    """Rendezvous candidates: ``me`` plus the connected peers still downloading this manifest."""
    elapsed_s: float
    stalled: frozenset[str] = frozenset()
    hub_inflight: frozenset[str] = frozenset()
    """Chunks requested from the hub and not answered yet: each holds one of the job's hub slots."""
    delivering: frozenset[str] = frozenset()
    """Chunks the hub answered, on their way into the cache: not picked again, and holding no slot."""
    slow_for_s: float = 0.0
    """How long the payload rate from peers has been below the floor while chunks were wanted."""
    stable_for_s: float = float("inf")
    """How long the candidate set has been what it is now."""
    seeded: bool = False
    """A tracker counts a seed in this swarm: every chunk is held (or being fetched) by a peer, maybe one this node
    cannot reach directly (behind its farm's NAT router)."""
    seed: bool = False
    """This node is a volunteer seed: it fetches from the hub, alone, whatever no connected peer has."""


@dataclass(frozen=True, slots=True)
class HubPick:
    chunk_id: str
    reason: Reason


def owner_of(chunk_id: str, candidates: Iterable[str]) -> str:
    """Rendezvous (highest random weight) hashing: the candidate that fetches ``chunk_id`` from the hub.

    Every node computes the same owner from the same candidate set; when a candidate leaves, only its chunks move.
    """
    best, best_weight = "", b""
    for candidate in candidates:
        weight = hashlib.blake2b(f"{candidate}\0{chunk_id}".encode(), digest_size=8).digest()
        if weight > best_weight or (weight == best_weight and candidate < best):
            best, best_weight = candidate, weight
    return best


def fetch_order(hot: Sequence[str], files_order: Iterable[str]) -> list[str]:
    """Distinct chunk ids, hot ones first (in hot order), then the rest in file order."""
    seen: dict[str, None] = dict.fromkeys(hot)
    for chunk_id in files_order:
        seen.setdefault(chunk_id, None)
    return list(seen)


def pick_hub_chunks(wanted: Iterable[Wanted], view: View, params: FetchParams) -> list[HubPick]:
    """The chunks to request from the hub now, in order, at most the free hub slots."""
    free = params.hub_slots - len(view.hub_inflight)
    if free <= 0 or view.elapsed_s < params.discovery_grace_s:
        return []
    alone = view.candidates <= {view.me}
    peers_slow = view.slow_for_s >= params.peer_floor_window_s
    hot_late = view.elapsed_s >= params.discovery_grace_s + params.hot_deadline_s
    settled = view.stable_for_s >= params.settle_s
    picks: list[HubPick] = []
    for chunk in sorted(wanted, key=lambda w: w.rank):
        if chunk.chunk_id in view.hub_inflight or chunk.chunk_id in view.delivering:
            continue
        reason = _reason(chunk, view, alone=alone, peers_slow=peers_slow, hot_late=hot_late, settled=settled)
        if reason is not None:
            picks.append(HubPick(chunk.chunk_id, reason))
            if len(picks) >= free:
                break
    return picks


def _reason(
    chunk: Wanted, view: View, *, alone: bool, peers_slow: bool, hot_late: bool, settled: bool
) -> Reason | None:
    if chunk.availability > 0:  # a peer has it: libtorrent is on it (the hot ones first)
        return Reason.PEERS_TOO_SLOW if peers_slow else None
    if view.seed:
        return Reason.SEEDING
    if view.seeded:  # a peer of the swarm has it, maybe beyond our router: wait, as if a connected peer had it
        if chunk.hot and hot_late:
            return Reason.HOT_DEADLINE
        return Reason.PEERS_TOO_SLOW if peers_slow else None
    if alone:
        return Reason.ALONE
    if chunk.owner == view.me:
        return Reason.OWNED if settled else None
    if chunk.owner in view.stalled or chunk.owner not in view.candidates:
        return Reason.OWNER_STALLED
    if chunk.hot and hot_late:
        return Reason.HOT_DEADLINE
    return None


@dataclass
class StallTracker:
    """Which peers have stopped making progress (pure bookkeeping; times are passed in)."""

    stall_s: float
    _last: dict[str, tuple[int, float]] | None = None

    def update(self, progress: dict[str, int], now: float) -> frozenset[str]:
        """``progress``: pieces held by each downloading peer. Returns the peers stalled for ``stall_s``."""
        last = self._last or {}
        fresh: dict[str, tuple[int, float]] = {}
        for peer, pieces in progress.items():
            seen = last.get(peer)
            fresh[peer] = (pieces, now) if seen is None or pieces > seen[0] else seen
        self._last = fresh
        return frozenset(peer for peer, (_, since) in fresh.items() if now - since >= self.stall_s)


@dataclass(frozen=True)
class OnDemand:
    """How an on-demand read (API, zdb proxy, fill) gets a chunk that is not cached."""

    wait_for_peers_s: float
    """First wait this long for the swarm to deliver it (0: go to the hub at once)."""
    wait_after_hub_s: float
    """If the hub fails, wait this long more for the swarm before giving up (0: give up at once)."""


def plan_on_demand(held_by_peers: bool, peer_wait_s: float) -> OnDemand:
    """Someone waits for this chunk now: a connected peer that holds it gets ``peer_wait_s`` (its piece gets a
    deadline of now), before and again after the hub; nobody holds it: straight to the hub, no second chance."""
    return OnDemand(peer_wait_s, peer_wait_s) if held_by_peers else OnDemand(0.0, 0.0)
