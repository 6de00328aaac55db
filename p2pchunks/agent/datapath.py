"""The data path: one chunk, on demand (cache → peers → hub), and every chunk that arrives, into the cache.

Owns ``chunk()`` — the verified bytes of one chunk for whoever asks now (the local API, the zdb proxy, the rfs
fill), fetched if needed and never twice at once — and ``deliver()``, where a chunk verified on arrival from the
hub goes: into every torrent that lacks it (libtorrent writes the chunk's file, which is the cache's file, and
serves it to peers; the piece keeper indexes it once libtorrent confirms), or straight into the cache when no
torrent holds it. ``arrived()`` is where every new chunk is counted and announced, whichever way it came.
Must not decide whole-manifest policy (the fetch job's) nor know HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import trio

from ..cache.store import ChunkCache
from ..errors import ChunkCorrupt, ChunkNotFound, ChunkUnavailable, HubError
from ..ids import validate_chunk_id
from ..policy.fetch import Reason, plan_on_demand
from ..swarm.session import Swarm
from .arrivals import Arrival, Arrivals, Source
from .metrics import AgentStats

log = logging.getLogger(__name__)


class ChunkSource(Protocol):
    """The hub, as the data path uses it."""

    async def get_chunk(self, chunk_id: str) -> bytes: ...


class DataPath:
    def __init__(
        self,
        cache: ChunkCache,
        hub: ChunkSource,
        swarm: Swarm | None,
        arrivals: Arrivals,
        stats: AgentStats,
        *,
        peer_wait_s: float,
        disk: trio.CapacityLimiter,
        inject_wait_s: float = 10.0,
    ) -> None:
        self._cache = cache
        self._hub = hub
        self._swarm = swarm
        self._arrivals = arrivals
        self._stats = stats
        self._peer_wait_s = peer_wait_s
        self._disk = disk
        self._inject_wait_s = inject_wait_s
        self._inflight: dict[str, trio.Event] = {}

    # ---- reading ------------------------------------------------------------------------------------------------

    async def chunk(self, chunk_id: str) -> bytes:
        """The verified bytes of ``chunk_id``: from the cache, else fetched (peers → hub) into it first.

        A cached file that rotted is dropped by the read and fetched again. ChunkNotFound when the hub has no such
        chunk and no peer holds it, ChunkUnavailable when no source can deliver it now.
        """
        validate_chunk_id(chunk_id)
        data = await self.cached(chunk_id)
        if data is not None:
            return data
        pending = self._inflight.get(chunk_id)
        if pending is None:
            pending = self._inflight[chunk_id] = trio.Event()
            try:
                await self._obtain(chunk_id)
            finally:
                del self._inflight[chunk_id]
                pending.set()
        else:
            await pending.wait()
        data = await self.cached(chunk_id)
        if data is None:
            raise ChunkUnavailable(chunk_id, "no peer has it and the hub could not serve it")
        return data

    async def cached(self, chunk_id: str) -> bytes | None:
        """The verified bytes if the cache holds the chunk intact; None if not (a damaged file is dropped)."""
        async with self._disk:
            try:
                return await trio.to_thread.run_sync(self._cache.get, chunk_id)
            except (ChunkNotFound, ChunkCorrupt):
                return None

    async def holds(self, chunk_id: str) -> bool:
        return bool(await trio.to_thread.run_sync(self._cache.has, chunk_id))

    async def size_of(self, chunk_id: str) -> int | None:
        """The size of a cached chunk (None: not cached); nothing is read, so nothing is verified or fetched."""
        try:
            _, size = await trio.to_thread.run_sync(self._cache.locate, chunk_id)
        except ChunkNotFound:
            return None
        return size

    async def missing(self, chunk_ids: Sequence[str]) -> list[str]:
        """Those of ``chunk_ids`` the cache does not hold, in order."""
        held = await trio.to_thread.run_sync(self._cache.held, chunk_ids)
        return [chunk_id for chunk_id in chunk_ids if chunk_id not in held]

    async def _obtain(self, chunk_id: str) -> None:
        torrents = self._swarm.torrents_with(chunk_id) if self._swarm is not None else []
        with self._arrivals.watch(chunk_id) as arrived:
            held_by_peers = False
            for torrent in torrents:
                torrent.want([chunk_id])
                torrent.set_deadline(chunk_id, 0)
                availability = torrent.availability()  # empty while libtorrent has no picker (e.g. as a seed)
                held_by_peers |= bool(availability) and availability[torrent.piece_of(chunk_id)] > 0
            plan = plan_on_demand(held_by_peers, self._peer_wait_s)
            if plan.wait_for_peers_s:
                with trio.move_on_after(plan.wait_for_peers_s):
                    await arrived.wait()
                    return
            try:
                data = await self._hub.get_chunk(chunk_id)
            except ChunkNotFound:
                if not plan.wait_after_hub_s:
                    raise
                data = None
                failure: Exception = ChunkNotFound(chunk_id, "the hub has no such chunk")
            except (HubError, ChunkCorrupt) as error:
                data, failure = None, error
            if data is None:
                with trio.move_on_after(plan.wait_after_hub_s):
                    await arrived.wait()
                    return
                raise ChunkUnavailable(chunk_id, f"no peer delivered it and the hub failed: {failure}") from failure
            self._stats.hub_reasons[Reason.ON_DEMAND.name] += 1
            await self.deliver(chunk_id, data, Source.HUB)

    # ---- writing ------------------------------------------------------------------------------------------------

    async def deliver(self, chunk_id: str, data: bytes, source: Source, manifest_id: str | None = None) -> None:
        """Bytes verified on arrival: into the cache (through libtorrent where a torrent holds the chunk) and out.

        Returns once the chunk is cached (or was already).
        """
        torrents = self._swarm.torrents_with(chunk_id) if self._swarm is not None else []
        if torrents:
            with self._arrivals.watch(chunk_id) as arrived:
                if await self.holds(chunk_id):
                    return
                for torrent in torrents:
                    if not torrent.has(chunk_id):
                        torrent.inject(chunk_id, data)
                with trio.move_on_after(self._inject_wait_s):
                    await arrived.wait()
                    return
                log.warning(
                    "chunk %s: libtorrent did not confirm it in %.0f s: cached directly", chunk_id, self._inject_wait_s
                )
        async with self._disk:
            fresh = await trio.to_thread.run_sync(lambda: self._cache.put(chunk_id, data, manifest_id=manifest_id))
        self.arrived(chunk_id, source, len(data), fresh=fresh)

    def arrived(self, chunk_id: str, source: Source, size: int, *, fresh: bool) -> None:
        """A chunk is in the cache now: count it (once: ``fresh``) and tell whoever waits."""
        if fresh:
            if source is Source.HUB:
                self._stats.chunks_from_hub += 1
                self._stats.bytes_from_hub += size
            elif source is Source.PEERS:
                self._stats.chunks_from_peers += 1
                self._stats.bytes_from_peers += size
        self._arrivals.arrived(Arrival(chunk_id, source, size))
