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
* **its owner stalls or leaves**: one that disconnects loses its share at once (the owners are recomputed without
  it). One that has completed no piece for a while hands each of its chunks to the *next* node in that chunk's
  rendezvous order, and only to it: the second in line takes the chunk over once the owner has made no progress
  for one deadline, the third after two, and so on — a late chunk costs the hub one more copy, not N. An owner that
  is still receiving pieces is not stalled, however slow the hub is. The deadline follows the hub time this node
  measures (``stall_hub_factor`` × its smoothed per-chunk hub time, at least ``owner_stall_s``), so a hub that is
  slow because the whole farm shares it does not trip it.
* **a hot chunk is late**: the same, with a shorter deadline (``hot_hub_factor`` × hub time, at least
  ``hot_deadline_s``): boot-critical chunks move down the line first.
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

How many chunks a node asks the hub for at once is its hub window's (``hubwindow.py``: delay-based, so that the
farm as a whole keeps the hub's pipe full and no fuller whatever its size), never more than ``hub_slots``; picks go
in fetch order (hot first, then the manifest's file order). An agent-wide hub rate budget is applied by the hub
client. Until the farm holds every hot chunk, only hot chunks go into the farm's queue at the hub: they have its
pipe to themselves. When to ask the hub again after a failure, and when to give up, is ``retry.py``'s; what the
swarm looks like, ``swarmview.py``'s.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field


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
    discovery_grace_s: float = 0.5
    hot_deadline_s: float = 1.0
    """Least deadline of a hot chunk's owner before the next in line takes it over."""
    owner_stall_s: float = 2.0
    """Least deadline of any other chunk's owner."""
    hot_hub_factor: float = 2.0
    stall_hub_factor: float = 4.0
    """Deadlines are these many times the measured per-chunk hub time, when that is longer than the floors."""
    peer_floor_bps: float = 64 * 1024
    peer_floor_window_s: float = 10.0
    hub_slots: int = 8
    """The most hub requests one job keeps in flight (its hub window may allow fewer)."""
    settle_s: float = 0.3
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
    place: int = 0
    """This node's place in the chunk's rendezvous order over the candidates (0: it is the owner)."""


@dataclass(frozen=True)
class View:
    """What the job knows of the swarm right now."""

    me: str
    candidates: frozenset[str]
    """Rendezvous candidates: ``me`` plus the connected peers still downloading this manifest."""
    elapsed_s: float
    stalled_for: Mapping[str, float] = field(default_factory=dict)
    """Seconds since each candidate last completed a piece (a candidate not listed counts as just progressing)."""
    hub_time_s: float | None = None
    """This node's smoothed per-chunk hub time (None: nothing measured yet)."""
    farm_window: float | None = None
    """``K``: the farm keeps the first K chunks of the fetch order that nobody holds in flight at the hub, and this
    node asks for a chunk only once fewer than K before it are missing (``hubwindow.py``). None: no such limit."""
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


def _weight(candidate: str, chunk_id: str) -> bytes:
    return hashlib.blake2b(f"{candidate}\0{chunk_id}".encode(), digest_size=8).digest()


def _rank(chunk_id: str) -> Callable[[str], tuple[int, str]]:
    """The key of ``chunk_id``'s rendezvous order: highest weight first; equal weights (never seen in practice) in
    name order."""
    return lambda candidate: (-int.from_bytes(_weight(candidate, chunk_id), "big"), candidate)


def owner_of(chunk_id: str, candidates: Iterable[str]) -> str:
    """Rendezvous (highest random weight) hashing: the candidate that fetches ``chunk_id`` from the hub ("" if none).

    Every node computes the same owner from the same candidate set; when a candidate leaves, only its chunks move.
    """
    return min(candidates, key=_rank(chunk_id), default="")


def rendezvous_order(chunk_id: str, candidates: Iterable[str]) -> list[str]:
    """Every candidate in ``chunk_id``'s order: the owner first, then who takes the chunk over if it stalls."""
    return sorted(candidates, key=_rank(chunk_id))


def deadline_s(params: FetchParams, *, hot: bool, hub_time_s: float | None) -> float:
    """How long an owner may make no progress before the next in line takes one of its chunks over."""
    floor, factor = (
        (params.hot_deadline_s, params.hot_hub_factor) if hot else (params.owner_stall_s, params.stall_hub_factor)
    )
    return max(floor, factor * hub_time_s) if hub_time_s is not None else floor


def fetch_order(hot: Sequence[str], files_order: Iterable[str]) -> list[str]:
    """Distinct chunk ids, hot ones first (in hot order), then the rest in file order."""
    seen: dict[str, None] = dict.fromkeys(hot)
    for chunk_id in files_order:
        seen.setdefault(chunk_id, None)
    return list(seen)


def pick_hub_chunks(wanted: Iterable[Wanted], view: View, params: FetchParams) -> list[HubPick]:
    """The chunks to request from the hub now, in fetch order, at most the free hub slots, each only once fewer
    than the farm window of the chunks before it are missing from the farm."""
    free = params.hub_slots - len(view.hub_inflight)
    if free <= 0 or view.elapsed_s < params.discovery_grace_s:
        return []
    alone = view.candidates <= {view.me}
    peers_slow = view.slow_for_s >= params.peer_floor_window_s
    settled = view.stable_for_s >= params.settle_s
    picks: list[HubPick] = []
    missing_before = 0  # chunks earlier in the order that no peer holds (in flight somewhere, or not asked yet)
    ordered = sorted(wanted, key=lambda w: w.rank)
    hot_missing = any(chunk.hot and chunk.availability == 0 for chunk in ordered)
    for chunk in ordered:
        ahead, missing_before = missing_before, missing_before + (chunk.availability == 0)
        if chunk.chunk_id in view.hub_inflight or chunk.chunk_id in view.delivering:
            continue
        if view.farm_window is not None and chunk.availability == 0:
            if ahead >= view.farm_window:
                break  # the farm's queue at the hub is full up to here
            if hot_missing and not chunk.hot:
                break  # boot-critical chunks have the hub to themselves until the farm holds each of them
        reason = _reason(chunk, view, params, alone=alone, peers_slow=peers_slow, settled=settled)
        if reason is not None:
            picks.append(HubPick(chunk.chunk_id, reason))
            if len(picks) >= free:
                break
    return picks


def _reason(
    chunk: Wanted, view: View, params: FetchParams, *, alone: bool, peers_slow: bool, settled: bool
) -> Reason | None:
    if chunk.availability > 0:  # a peer has it: libtorrent is on it (the hot ones first)
        return Reason.PEERS_TOO_SLOW if peers_slow else None
    if view.seed:
        return Reason.SEEDING
    deadline = deadline_s(params, hot=chunk.hot, hub_time_s=view.hub_time_s)
    if view.seeded:  # a peer of the swarm has it, maybe beyond our router: wait, as if a connected peer had it
        if chunk.hot and view.elapsed_s >= params.discovery_grace_s + deadline:
            return Reason.HOT_DEADLINE
        return Reason.PEERS_TOO_SLOW if peers_slow else None
    if alone:
        return Reason.ALONE
    if chunk.place == 0:
        return Reason.OWNED if settled else None
    if chunk.owner in view.candidates:
        # nobody completes a piece before the discovery grace is over: an owner is idle from then on, not before
        idle = min(view.stalled_for.get(chunk.owner, 0.0), view.elapsed_s - params.discovery_grace_s)
    else:
        idle = math.inf  # it left
    if idle >= chunk.place * deadline:  # the next in line after one deadline, the one after it after two, ...
        return Reason.HOT_DEADLINE if chunk.hot else Reason.OWNER_STALLED
    return None


@dataclass
class StallTracker:
    """How long each peer has gone without completing a piece (pure bookkeeping; times are passed in)."""

    _last: dict[str, tuple[int, float]] = field(default_factory=dict)

    def update(self, progress: Mapping[str, int], now: float) -> dict[str, float]:
        """``progress``: pieces held by each candidate now. Returns the seconds since each last had a new one."""
        fresh: dict[str, tuple[int, float]] = {}
        for peer, pieces in progress.items():
            seen = self._last.get(peer)
            fresh[peer] = (pieces, now) if seen is None or pieces > seen[0] else seen
        self._last = fresh
        return {peer: now - since for peer, (_, since) in fresh.items()}


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
