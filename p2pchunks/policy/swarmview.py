"""What a fetch job makes of the swarm: from one look at libtorrent (plain data) to the policy's ``View``.

Owns the rules that turn raw observations into the fetch policy's inputs, each with its memory across looks:

* **candidates** for the rendezvous split: this node plus the peers it is connected to that are not seeds (seeds
  hold everything and fetch nothing). A peer that disconnects stops being a candidate at once, so its share moves
  to the others at the next look, not after a stall timeout. libtorrent's upload-only flag lags behind a peer
  that just started fetching, so it is not trusted here: an idle holder is caught by the stall rule instead.
* **idle time** of each candidate (seconds since it last completed a piece), for the takeover rule, and this
  node's **place** in each chunk's rendezvous order (0: the owner; 1: first to take it over...).
* **slow peers**: how long the payload rate from peers has stayed below ``peer_floor_bps`` while some peer held
  a chunk we want (or a tracker counted a seed in the swarm: ``seeded``, see ``fetch.py`` on strict NAT).
* **stability** of the candidate set, and each chunk's owner and this node's place computed once per candidate set.
* which pending chunks libtorrent already holds (on their way into the cache: not wanted again).

Pure: no trio, no libtorrent, no clock (``now`` is passed in); ``SwarmReading`` is filled by the job's driver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from .fetch import FetchParams, StallTracker, View, Wanted, rendezvous_order


@dataclass(frozen=True, slots=True)
class PeerReading:
    ip: str
    seed: bool
    pieces: int


@dataclass(frozen=True)
class SwarmReading:
    """One look at a torrent: its connected peers, per-piece availability and possession, the payload rate."""

    peers: tuple[PeerReading, ...] = ()
    availability: tuple[int, ...] = ()
    have: tuple[bool, ...] = ()
    download_bps: int = 0
    seeded: bool = False
    """The trackers count at least one seed in this swarm (libtorrent's ``num_complete``)."""


@dataclass
class ViewKeeper:
    me: str
    params: FetchParams
    seed: bool = False
    """This node is a volunteer seed."""
    _stall: StallTracker = field(default_factory=StallTracker)
    _slow_since: float | None = None
    _candidates: frozenset[str] = frozenset()
    _stable_since: float = 0.0
    _places: dict[str, tuple[str, int]] = field(default_factory=dict)

    def look(
        self,
        reading: SwarmReading | None,
        pending: Iterable[str],
        *,
        piece_of: Callable[[str], int],
        rank: Mapping[str, int],
        hot: frozenset[str] | set[str],
        now: float,
        elapsed_s: float,
        hub_inflight: frozenset[str],
        delivering: frozenset[str] = frozenset(),
        hub_time_s: float | None = None,
        farm_window: float | None = None,
    ) -> tuple[View, list[Wanted]]:
        """The policy's view and the chunks still wanted (``reading`` None: no torrent, the hub alone)."""
        candidates = {self.me}
        stalled_for: dict[str, float] = {}
        availability: tuple[int, ...] = ()
        have: tuple[bool, ...] = ()
        seeded = False
        if reading is not None:
            seeded = reading.seeded
            availability, have = reading.availability, reading.have
            fetching = [peer for peer in reading.peers if not peer.seed]
            candidates.update(peer.ip for peer in fetching)
            stalled_for = self._stall.update({peer.ip: peer.pieces for peer in fetching}, now)
            slow = reading.download_bps < self.params.peer_floor_bps and (any(availability) or seeded)
            self._slow_since = (self._slow_since if self._slow_since is not None else now) if slow else None
        frozen = frozenset(candidates)
        if frozen != self._candidates:
            self._candidates, self._places, self._stable_since = frozen, {}, now
        wanted = []
        for chunk_id in pending:
            piece = piece_of(chunk_id) if have or availability else -1
            if have and have[piece]:
                continue  # libtorrent has it: it is on its way into the cache
            owner, place = self._place(chunk_id, frozen)
            held = availability[piece] if availability else 0
            wanted.append(Wanted(chunk_id, rank[chunk_id], chunk_id in hot, held, owner, place))
        view = View(
            me=self.me,
            candidates=frozen,
            elapsed_s=elapsed_s,
            stalled_for=stalled_for,
            hub_time_s=hub_time_s,
            farm_window=farm_window,
            hub_inflight=hub_inflight,
            delivering=delivering,
            slow_for_s=0.0 if self._slow_since is None else now - self._slow_since,
            stable_for_s=now - self._stable_since,
            seeded=seeded,
            seed=self.seed,
        )
        return view, wanted

    def _place(self, chunk_id: str, candidates: frozenset[str]) -> tuple[str, int]:
        """The chunk's owner and this node's place in its rendezvous order (once per candidate set)."""
        known = self._places.get(chunk_id)
        if known is None:
            order = rendezvous_order(chunk_id, candidates)
            known = self._places[chunk_id] = (order[0], order.index(self.me))
        return known
