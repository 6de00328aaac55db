"""The fetch job: applies the fetch policy (``fetch.py``) to one manifest until every chunk is in the cache.

A thin driver in the hypercorn style: read the swarm's state → feed the pure policy → start the hub requests it
picks → wait for arrivals. Chunks from peers arrive through the agent (libtorrent piece → verified → cache),
which announces them on ``Arrivals``; chunks from the hub are handed to ``deliver`` (verified → cache → injected
into every torrent that has them, so peers get them from us).
"""

from __future__ import annotations

import enum
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio

from ..errors import ChunkCorrupt, ChunkNotFound, HubError
from ..formats.manifest import Manifest
from ..hub.client import HubClient
from ..policy.eviction import Pin
from ..policy.fetch import FetchParams, HubPick, StallTracker, View, Wanted, owner_of, pick_hub_chunks
from ..swarm.session import Torrent

log = logging.getLogger(__name__)


class Source(enum.Enum):
    CACHE = "cache"
    PEERS = "peers"
    HUB = "hub"


@dataclass(frozen=True, slots=True)
class Arrival:
    chunk_id: str
    source: Source
    size: int


class Arrivals:
    """Tells whoever waits that a chunk is now in the cache."""

    def __init__(self) -> None:
        self._events: dict[str, trio.Event] = {}
        self._listeners: set[trio.MemorySendChannel[Arrival]] = set()

    def event_for(self, chunk_id: str) -> trio.Event:
        return self._events.setdefault(chunk_id, trio.Event())

    def arrived(self, arrival: Arrival) -> None:
        event = self._events.pop(arrival.chunk_id, None)
        if event is not None:
            event.set()
        for listener in self._listeners:
            listener.send_nowait(arrival)

    @contextmanager
    def subscribe(self) -> Iterator[trio.MemoryReceiveChannel[Arrival]]:
        send, receive = trio.open_memory_channel[Arrival](math.inf)
        self._listeners.add(send)
        try:
            yield receive
        finally:
            self._listeners.discard(send)
            send.close()
            receive.close()


@dataclass
class FetchReport:
    manifest_id: str
    name: str
    chunks: int
    image_bytes: int
    from_cache: int = 0
    from_peers: int = 0
    from_hub: int = 0
    bytes_from_peers: int = 0
    bytes_from_hub: int = 0
    seconds: float = 0.0
    hot_seconds: float | None = None
    hub_reasons: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    arrival_order: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.from_cache + self.from_peers + self.from_hub


Missing = Callable[[Sequence[str]], Awaitable[list[str]]]
Deliver = Callable[[str, bytes, Source], Awaitable[None]]


class FetchJob:
    """Fetch every chunk of ``manifest`` into the cache."""

    def __init__(
        self,
        manifest: Manifest,
        *,
        hub: HubClient,
        torrent: Torrent | None,
        arrivals: Arrivals,
        missing: Missing,
        deliver: Deliver,
        me: str,
        seed: bool = False,
        params: FetchParams | None = None,
        tick_s: float = 0.1,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.manifest = manifest
        self._hub = hub
        self._torrent = torrent
        self._arrivals = arrivals
        self._missing = missing
        self._deliver = deliver
        self._me = me
        self._seed = seed
        self._params = params or FetchParams()
        self._tick = tick_s
        self._clock = clock
        self._inflight: set[str] = set()
        self._hub_retry_at = 0.0
        self._hub_failures = 0
        self._owners: dict[str, str] = {}
        self._seen: dict[str, float] = {}
        self._stable_since = 0.0
        self._owners_for: frozenset[str] = frozenset()
        self.report = FetchReport(manifest.manifest_id, manifest.name, len(manifest.chunk_ids), manifest.image_bytes)

    async def run(self) -> FetchReport:
        manifest, report = self.manifest, self.report
        order = list(manifest.chunk_ids)
        rank = {chunk_id: i for i, chunk_id in enumerate(order)}
        hot = set(manifest.hot)
        start = self._clock()
        with self._arrivals.subscribe() as arrivals:
            pending = dict.fromkeys(await self._missing(order))
            report.from_cache = len(order) - len(pending)
            self._start_torrent(pending)
            stall = StallTracker(self._params.owner_stall_s)
            slow_since: float | None = None
            async with trio.open_nursery() as nursery:
                while pending:
                    now = self._clock()
                    if not (hot & pending.keys()) and report.hot_seconds is None:
                        report.hot_seconds = now - start
                        if self._torrent is not None:
                            self._torrent.want_all()  # boot-critical chunks are in: now the rest
                    view, wanted, slow_since = self._look(pending, rank, hot, now - start, stall, slow_since)
                    if now >= self._hub_retry_at:
                        for pick in pick_hub_chunks(wanted, view, self._params):
                            log.debug(
                                "%s: hub %s (%s) elapsed %.2f candidates %s",
                                self._me,
                                pick.chunk_id[:8],
                                pick.reason.name,
                                view.elapsed_s,
                                sorted(view.candidates),
                            )
                            self._inflight.add(pick.chunk_id)
                            report.hub_reasons[pick.reason.name] += 1
                            nursery.start_soon(self._from_hub, pick)
                    with trio.move_on_after(self._tick):
                        self._note(await arrivals.receive(), pending)
                    while True:
                        try:
                            self._note(arrivals.receive_nowait(), pending)
                        except trio.WouldBlock:
                            break
                nursery.cancel_scope.cancel()
        report.seconds = self._clock() - start
        if report.hot_seconds is None:
            report.hot_seconds = report.seconds
        return report

    def _start_torrent(self, pending: dict[str, None]) -> None:
        """Hot chunks first: peers are asked for nothing else until they are in (the hub picks them first too).

        libtorrent's piece priorities only bias its picker, and it requests a whole pipeline at once, so the rest
        waits at priority 0. The torrent is then briefly "finished" between the hot chunks and ``want_all``; the
        swarm keeps such connections open (``close_redundant_connections`` off), so no peer is lost.
        """
        if self._torrent is None:
            return
        hot_missing = [chunk_id for chunk_id in self.manifest.hot if chunk_id in pending]
        if not hot_missing:
            self._torrent.want_all()
            return
        self._torrent.want_none()
        self._torrent.want(hot_missing, 7)

    def _note(self, arrival: Arrival, pending: dict[str, None]) -> None:
        if arrival.chunk_id not in pending:
            return
        del pending[arrival.chunk_id]
        report = self.report
        report.arrival_order.append(arrival.chunk_id)
        if arrival.source is Source.HUB:
            report.from_hub += 1
            report.bytes_from_hub += arrival.size
        elif arrival.source is Source.PEERS:
            report.from_peers += 1
            report.bytes_from_peers += arrival.size
        else:
            report.from_cache += 1

    def _look(
        self,
        pending: dict[str, None],
        rank: dict[str, int],
        hot: set[str],
        elapsed: float,
        stall: StallTracker,
        slow_since: float | None,
    ) -> tuple[View, list[Wanted], float | None]:
        """Read the torrent's state into the policy's plain data."""
        torrent = self._torrent
        availability: list[int] = []
        candidates = {self._me}
        stalled: frozenset[str] = frozenset()
        seeded = False
        now = self._clock()
        if torrent is not None:
            availability = torrent.availability()
            # Seeds have everything and fetch nothing. Every other peer is a candidate: libtorrent's upload-only
            # flag lags (a peer that just started fetching still shows it), so an idle holder is caught by the
            # stall rule instead.
            peers = [peer for peer in torrent.peers() if not peer.seed]
            for peer in torrent.peers():
                if peer.seed:
                    self._seen.pop(peer.ip, None)
            self._seen.update((peer.ip, now) for peer in peers)
            # A peer stays a candidate for a while after its connection drops (connections churn, ownership
            # should not): only once it has been gone for ``owner_stall_s`` do its chunks move to the others.
            recent = {ip for ip, seen in self._seen.items() if now - seen < self._params.owner_stall_s}
            candidates |= recent
            stalled = stall.update({peer.ip: peer.pieces for peer in peers}, now)
            status = torrent.status()
            seeded = status.num_complete > 0  # the trackers' count (-1: unknown)
            rate = status.download_payload_rate
            slow = rate < self._params.peer_floor_bps and (any(availability) or seeded)
            slow_since = (slow_since if slow_since is not None else now) if slow else None
        frozen = frozenset(candidates)
        if frozen != self._owners_for:
            self._owners_for, self._owners, self._stable_since = frozen, {}, now
        have = torrent.have() if torrent is not None else []
        wanted = []
        for chunk_id in pending:
            if have and have[torrent.piece_of(chunk_id)]:  # type: ignore[union-attr]
                continue  # libtorrent has it; it is on its way into the cache
            owner = self._owners.get(chunk_id)
            if owner is None:
                owner = self._owners[chunk_id] = owner_of(chunk_id, frozen)
            avail = availability[torrent.piece_of(chunk_id)] if torrent is not None and availability else 0
            wanted.append(Wanted(chunk_id, rank[chunk_id], chunk_id in hot, avail, owner))
        view = View(
            me=self._me,
            candidates=frozen,
            elapsed_s=elapsed,
            stalled=stalled,
            hub_inflight=frozenset(self._inflight),
            slow_for_s=0.0 if slow_since is None else now - slow_since,
            stable_for_s=now - self._stable_since,
            seeded=seeded,
            seed=self._seed,
        )
        return view, wanted, slow_since

    async def _from_hub(self, pick: HubPick) -> None:
        try:
            data = await self._hub.get_chunk(pick.chunk_id)
            await self._deliver(pick.chunk_id, data, Source.HUB)
            self._hub_failures = 0
        except ChunkNotFound as error:
            self._fail(f"hub has no {pick.chunk_id}: {error}")
        except (HubError, ChunkCorrupt) as error:
            self._fail(f"hub failed for {pick.chunk_id}: {error}")
        finally:
            self._inflight.discard(pick.chunk_id)

    def _fail(self, message: str) -> None:
        log.warning("%s: %s", self.manifest.name, message)
        self.report.errors.append(message)
        self._hub_failures += 1
        backoff = min(5.0, 0.25 * 2 ** min(self._hub_failures, 5))
        self._hub_retry_at = self._clock() + backoff


@dataclass
class Job:
    id: int
    manifest: Manifest
    pin: Pin
    state: str = "running"
    report: FetchReport | None = None
    error: str = ""
    done: trio.Event = field(default_factory=trio.Event)
    job: FetchJob | None = None
