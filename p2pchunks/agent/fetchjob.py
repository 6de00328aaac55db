"""The fetch job: applies the fetch policy to one manifest until every chunk of it has been in the cache.

A thin driver in the hypercorn style: read the torrent's state (``SwarmReading``) → feed the pure rules
(``policy.swarmview`` → ``policy.fetch``; ``policy.retry`` for hub failures) → start the hub requests they pick →
wait for arrivals. Chunks from peers arrive through the piece keeper; chunks from the hub are handed to
``deliver``. Every job ends: done, or failed with an error naming the chunks no source can deliver.

Streaming. An image larger than the cache can still be fetched to a file or to the rfs cache: the job then works
through a *window* of the fetch order (``window_bytes`` of chunks not yet consumed): only those are wanted from
peers and the hub and kept from eviction, and each chunk the consumer has written out (``consumed``) makes room
for the next. Without a window every chunk is wanted and kept until the job ends.

A subset. A job may fetch only some chunks of its manifest (``only``: the warm-up's custody share): its fetch
order, window, priorities and report then cover only those. A request for more of the image that finds such a job
running widens it (``widen``) instead of starting a second job on the same torrent.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from ..errors import ChunkCorrupt, ChunkNotFound, HubError, JobFailed
from ..formats.manifest import Manifest
from ..hub.client import first_byte_s, forget_first_byte
from ..policy.fetch import FetchParams, HubPick, fetch_order, pick_hub_chunks
from ..policy.hubwindow import HubWindow
from ..policy.retry import HubRetries, describe_missing
from ..policy.swarmview import PeerReading, SwarmReading, ViewKeeper
from ..swarm.torrent import NORMAL, TOP
from .arrivals import Arrival, Arrivals, Source
from .datapath import ChunkSource

log = logging.getLogger(__name__)

Missing = Callable[[Sequence[str]], Awaitable[list[str]]]
Deliver = Callable[[str, bytes, Source], Awaitable[None]]
Protect = Callable[[Iterable[str]], None]


class TorrentLike(Protocol):
    """What the job reads and sets on its torrent (``swarm.torrent.Torrent``, or a fake in tests)."""

    def piece_of(self, chunk_id: str) -> int: ...
    def peers(self) -> Sequence[PeerLike]: ...
    def availability(self) -> list[int]: ...
    def progress(self) -> tuple[list[bool], int, bool]:
        """(which pieces it holds, payload bytes/s, whether the trackers know a seed): one status query."""

    def set_priorities(self, priorities: list[int]) -> None: ...
    @property
    def pieces(self) -> int: ...


class PeerLike(Protocol):
    @property
    def ip(self) -> str: ...
    @property
    def seed(self) -> bool: ...
    @property
    def pieces(self) -> int: ...


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
    """Every chunk as it became available to the consumer (those found cached first)."""

    @property
    def done(self) -> int:
        return self.from_cache + self.from_peers + self.from_hub


MAX_ERRORS = 50
PEERS_EVERY_S = 0.5
"""How often a job reads its torrent's peer list (availability and possession: every look)."""


class FetchJob:
    """Fetch every chunk of ``manifest`` into the cache."""

    def __init__(
        self,
        manifest: Manifest,
        *,
        hub: ChunkSource,
        torrent: TorrentLike | None,
        arrivals: Arrivals,
        missing: Missing,
        deliver: Deliver,
        me: str,
        seed: bool = False,
        params: FetchParams | None = None,
        retries: HubRetries | None = None,
        hub_window: HubWindow | None = None,
        window_bytes: int | None = None,
        only: Collection[str] | None = None,
        protect: Protect = lambda ids: None,
        release: Protect = lambda ids: None,
        tick_s: float = 0.1,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.manifest = manifest
        self._hub = hub
        self._torrent = torrent
        self._arrivals = arrivals
        self._missing = missing
        self._deliver = deliver
        self._params = params or FetchParams()
        self._retries = retries or HubRetries()
        self._hub_window = hub_window or HubWindow()
        self._keeper = ViewKeeper(me, self._params, seed=seed)
        self._window_bytes = window_bytes
        self._protect, self._release = protect, release
        self._tick = tick_s
        self._clock = clock
        self._inflight: set[str] = set()
        self._order: list[str] = []
        self._rank: dict[str, int] = {}
        self._hot: frozenset[str] = frozenset()
        self._consumed_before = 0
        """Every chunk of the order before this position has been consumed: ``_slide`` walks on from there."""
        self._set_order(only)
        self._widening: list[str] = []
        self._closing = False
        """The run left its loop: nothing can be added to it any more."""
        self._consumed: set[str] = set()
        self._kept: set[str] = set()
        self._window: list[str] = []
        self._pushed: tuple[bool, int, str] | None = None
        self._dirty = False
        """The window or the hot phase may have changed since ``_slide`` last ran."""
        self._delivering: set[str] = set()
        self._hub_freed = False
        self._next_start = -math.inf
        self._peers: tuple[PeerReading, ...] = ()
        self._peers_read_at = -math.inf
        self._last: SwarmReading | None = None
        """The torrent at the last look (None: no torrent, or no look yet)."""
        size = manifest.image_bytes if only is None else sum(map(manifest.chunk_size_of, self._order))
        self.report = FetchReport(manifest.manifest_id, manifest.name, len(self._order), size)

    # ---- the consumer's side (streaming) --------------------------------------------------------------------------

    def consumed(self, chunk_id: str) -> None:
        """The consumer wrote ``chunk_id`` out: with a window, it may leave the cache now."""
        if chunk_id in self._kept and chunk_id not in self._consumed:
            self._consumed.add(chunk_id)
            if self._window_bytes is not None:
                self._kept.discard(chunk_id)
                self._release([chunk_id])
                self._dirty = True

    def widen(self, chunk_ids: Collection[str] | None) -> bool:
        """Fetch these chunks of the manifest too (None: every chunk), from the job's next turn on. False if the job
        is already ending: the caller waits for it and starts another."""
        if self._closing:
            return False
        queued = set(self._widening)
        self._widening.extend(
            c for c in self.manifest.chunk_ids
            if c not in self._rank and c not in queued and (chunk_ids is None or c in chunk_ids)
        )  # fmt: skip
        return True

    async def _grow(self, pending: dict[str, None]) -> None:
        """Take the chunks ``widen`` queued into the fetch order (those already cached count as from the cache)."""
        new, self._widening = self._widening, []
        self._set_order(self._rank.keys() | set(new))
        missing = set(await self._missing(new))
        report = self.report
        report.chunks = len(self._order)
        report.image_bytes += sum(map(self.manifest.chunk_size_of, new))
        for chunk_id in new:
            if chunk_id in missing:
                pending[chunk_id] = None
            else:
                report.from_cache += 1
                report.arrival_order.append(chunk_id)
        self._pushed = None  # the torrent's priorities change with the order
        self._slide(pending)

    def _set_order(self, only: Collection[str] | None) -> None:
        """The fetch order over ``only`` (None: every chunk of the manifest), and what is derived from it."""
        full = fetch_order(self.manifest.hot, self.manifest.chunk_ids)
        self._order = full if only is None else [c for c in full if c in only]
        self._rank = {chunk_id: i for i, chunk_id in enumerate(self._order)}
        self._hot = frozenset(self.manifest.hot).intersection(self._order)
        self._consumed_before = 0  # chunks may have joined the order anywhere

    # ---- the run --------------------------------------------------------------------------------------------------

    async def run(self) -> FetchReport:
        report = self.report
        start = self._clock()
        try:
            with self._arrivals.subscribe() as arrivals:
                pending = dict.fromkeys(await self._missing(self._order))
                report.from_cache = len(self._order) - len(pending)
                report.arrival_order.extend(c for c in self._order if c not in pending)
                self._slide(pending)
                failure: JobFailed | None = None
                next_look = self._clock()
                async with trio.open_nursery() as nursery:
                    while pending or self._widening:
                        if self._widening:
                            await self._grow(pending)
                            continue
                        now = self._clock()
                        if now >= next_look or self._hub_freed:
                            # The look reads libtorrent and walks every pending chunk: once a tick, or as soon as a
                            # hub slot frees up, not once per arrival.
                            next_look, self._hub_freed = now + self._tick, False
                            self._pick(pending, now - start, now, nursery)
                            failure = self._hopeless(pending, now)
                            if failure is not None:
                                break
                        with trio.move_on_at(next_look):
                            self._note(await arrivals.receive(), pending)
                        while True:
                            try:
                                self._note(arrivals.receive_nowait(), pending)
                            except trio.WouldBlock:
                                break
                        if self._dirty:
                            self._slide(pending)
                        if report.hot_seconds is None and self._hot.isdisjoint(pending):
                            report.hot_seconds = self._clock() - start
                    self._closing = True
                    nursery.cancel_scope.cancel()
                if failure is not None:
                    raise failure
        finally:
            self._closing = True
            self._release(list(self._kept))
            self._kept.clear()
            if self._torrent is not None:  # nothing is wanted any more: a piece evicted later is not fetched again
                self._torrent.set_priorities([0] * self._torrent.pieces)
            report.seconds = self._clock() - start
        if report.hot_seconds is None:
            report.hot_seconds = report.seconds
        return report

    def _hopeless(self, pending: dict[str, None], now: float) -> JobFailed | None:
        hopeless = self._retries.hopeless(pending, now, self._held_by_peers)
        if not hopeless:
            return None
        message = (
            f"fetch of {self.manifest.name} failed with {len(pending)} of {len(self._order)} chunks missing: "
            f"{describe_missing(hopeless)}"
        )
        return JobFailed(message, tuple(pending))

    def _slide(self, pending: dict[str, None]) -> None:
        """Recompute the chunks being fetched now (the window), keep them from eviction, tell libtorrent.

        Hot chunks first: until they are in, peers are asked for nothing else (libtorrent's priorities only bias
        its picker and it requests a whole pipeline at once, so the rest waits at priority 0).
        """
        self._dirty = False
        budget = self._window_bytes
        window: list[str] = []
        order, start = self._order, self._consumed_before
        while start < len(order) and order[start] in self._consumed:
            start += 1
        self._consumed_before = start  # a stream's consumed chunks are not walked again at every slide
        for position in range(start, len(order)):
            chunk_id = order[position]
            if chunk_id in self._consumed:
                continue
            size = self.manifest.chunk_size_of(chunk_id)
            if budget is not None and window and size > budget:
                break
            window.append(chunk_id)
            if budget is not None:
                budget -= size
        entering = [chunk_id for chunk_id in window if chunk_id not in self._kept]
        if entering:
            self._kept.update(entering)
            self._protect(entering)
        self._window = window
        hot_phase = any(chunk_id in self._hot and chunk_id in pending for chunk_id in window)
        key = (hot_phase, len(window), window[-1] if window else "")
        if self._torrent is not None and key != self._pushed:
            self._pushed = key
            priorities = [0] * self._torrent.pieces
            for chunk_id in window:
                if chunk_id in self._hot:
                    priorities[self._torrent.piece_of(chunk_id)] = TOP
                elif not hot_phase:
                    priorities[self._torrent.piece_of(chunk_id)] = NORMAL
            self._torrent.set_priorities(priorities)

    def _reading(self, now: float) -> SwarmReading | None:
        torrent = self._torrent
        if torrent is None:
            return None
        if now >= self._peers_read_at + PEERS_EVERY_S:  # walking every connection is the look's dearest part
            self._peers_read_at = now
            self._peers = tuple(PeerReading(p.ip, p.seed, p.pieces) for p in torrent.peers())
        have, download_bps, seeded = torrent.progress()
        return SwarmReading(self._peers, tuple(torrent.availability()), tuple(have), download_bps, seeded)

    def _held_by_peers(self, chunk_id: str) -> bool:
        """Some connected peer held the chunk at the last look."""
        availability = self._last.availability if self._last is not None else ()
        return bool(availability) and self._torrent is not None and availability[self._torrent.piece_of(chunk_id)] > 0

    def _pick(self, pending: dict[str, None], elapsed: float, now: float, nursery: trio.Nursery) -> None:
        self._last = self._reading(now)
        scope: Iterable[str] = pending if self._window_bytes is None else (c for c in self._window if c in pending)
        candidates = [c for c in scope if self._retries.ready(c, now)]
        hub = self._hub_window
        view, wanted = self._keeper.look(
            self._last,
            candidates,
            piece_of=self._torrent.piece_of if self._torrent is not None else _no_piece,
            rank=self._rank,
            hot=self._hot,
            now=now,
            elapsed_s=elapsed,
            hub_inflight=frozenset(self._inflight),
            delivering=frozenset(self._delivering),
            hub_time_s=hub.srtt,
            farm_window=hub.farm,
        )
        if self._last is not None:
            hub.join(len(view.candidates))  # the nodes that share the hub work: the rendezvous candidates
        for pick in pick_hub_chunks(wanted, view, self._params):
            log.debug("%s: hub %s (%s) elapsed %.2f", view.me, pick.chunk_id[:8], pick.reason.name, elapsed)
            self._inflight.add(pick.chunk_id)
            self.report.hub_reasons[pick.reason.name] += 1
            # this node's requests start no closer together than one chunk's transfer (``hubwindow.py``)
            at = max(now, self._next_start)
            self._next_start = at + hub.spacing_s
            nursery.start_soon(self._from_hub, pick, at)

    def _note(self, arrival: Arrival, pending: dict[str, None]) -> None:
        if arrival.chunk_id not in pending:
            return
        del pending[arrival.chunk_id]
        self._retries.succeeded(arrival.chunk_id)
        if arrival.chunk_id in self._hot:
            self._dirty = True
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

    async def _from_hub(self, pick: HubPick, at: float) -> None:
        chunk_id = pick.chunk_id
        try:
            await trio.sleep(max(0.0, at - self._clock()))
            started = self._clock()
            forget_first_byte()
            data = await self._hub.get_chunk(chunk_id)
        except ChunkNotFound as error:
            self._failed(chunk_id, f"hub has no {chunk_id}: {error}", definitive=True)
            return
        except (HubError, ChunkCorrupt) as error:
            self._hub_window.failed()
            self._failed(chunk_id, f"hub failed for {chunk_id}: {error}", definitive=False)
            return
        finally:
            self._inflight.discard(chunk_id)
            self._hub_freed = True
        full = len(data) * 2 >= self.manifest.chunk_size
        self._hub_window.done(self._clock() - started, first_byte_s(), full_size=full)
        self._delivering.add(chunk_id)  # the slot is free; the chunk is not picked again while it goes in
        try:
            await self._deliver(chunk_id, data, Source.HUB)
        finally:
            self._delivering.discard(chunk_id)

    def _failed(self, chunk_id: str, message: str, *, definitive: bool) -> None:
        log.warning("%s: %s", self.manifest.name, message)
        errors = self.report.errors
        errors.append(message)
        del errors[:-MAX_ERRORS]
        self._retries.failed(chunk_id, self._clock(), message, definitive=definitive)


def _no_piece(chunk_id: str) -> int:
    return -1
