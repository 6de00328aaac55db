"""The piece keeper: keeps libtorrent's view of every torrent and the cache's index in step.

Owns the reactions to libtorrent's news and the cache's changes, in both directions:

* a piece libtorrent completed (from a peer, or bytes we injected from the hub) becomes a file at its chunk path
  once libtorrent wrote it back (``piece_finished`` only says the piece passed its hash: the keeper asks for a
  flush, one per torrent at a time, covering every piece finished meanwhile); then it is hashed against its chunk
  id, made durable and indexed (``adopt``) — never read into memory whole, never written twice. A piece the
  cache already held is re-hashed instead (a peer's in-flight blocks can land in a file after the piece was handed
  over): damage is dropped and fetched again. The ``piece_finished`` alerts that libtorrent sends for every piece
  handed over as already had when a torrent is added are no news and ignored;
* a chunk that leaves the cache (evicted, or found damaged) leaves its torrents: they are added again with what
  the cache holds now (libtorrent cannot forget a piece otherwise), after a short pause that batches a burst;
* after libtorrent dropped alerts, every torrent is compared with the cache and what libtorrent completed
  unseen is adopted (through a flush); after a failed job, the partial files of its torrent are swept away;
* a peer libtorrent bans for corrupt data is refused by address for a while (``policy/bans.py``), so it is not
  banned again every second from a new port;
* joining a manifest to the swarm, with what the cache holds as its have set (one query, in a worker thread).

Must not decide where chunks come from: the fetch policy does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

from ..cache.store import Adopted, ChunkCache
from ..errors import ChunkNotFound, P2PChunksError
from ..formats.manifest import Manifest
from ..policy.bans import BanBook
from ..swarm import alerts
from ..swarm.session import Swarm
from ..swarm.torrent import Torrent
from .arrivals import Source
from .metrics import AgentStats

log = logging.getLogger(__name__)

Arrived = Callable[..., None]
Refetch = Callable[[str], Awaitable[object]]
RELOAD_PAUSE_S = 0.2
FLUSH_RETRY_S = 2.0
BATCH = 16
"""Pieces adopted together: one worker-thread hop and one index transaction for all of them."""


class PieceKeeper:
    def __init__(
        self,
        swarm: Swarm,
        cache: ChunkCache,
        events: trio.MemoryReceiveChannel[alerts.SwarmEvent],
        *,
        arrived: Arrived,
        refetch: Refetch,
        stats: AgentStats,
        disk: trio.CapacityLimiter,
        bans: BanBook | None = None,
    ) -> None:
        self._swarm = swarm
        self._cache = cache
        self._events = events
        self._arrived = arrived
        self._refetch = refetch
        self._stats = stats
        self._disk = disk
        self._bans = bans or BanBook()
        self._left_send, self._left = trio.open_memory_channel[Sequence[str]](1000)
        self._token: trio.lowlevel.TrioToken | None = None
        self._finished: dict[str, set[int]] = {}
        """Pieces libtorrent completed, waiting for the next flush of their torrent."""
        self._flushing: dict[str, tuple[set[int], float]] = {}
        """Per torrent: the pieces the flush in flight covers, and when it was asked for."""

    # ---- joining ------------------------------------------------------------------------------------------------

    async def join(self, manifest: Manifest) -> Torrent | None:
        """The manifest's torrent, added with what the cache holds (None: nothing to share, e.g. no chunks)."""
        if manifest.infohash is None:
            return None
        torrent = self._swarm.torrents.get(manifest.infohash)
        if torrent is not None:
            return torrent
        have = await trio.to_thread.run_sync(self._cache.held, manifest.piece_ids)
        return self._swarm.add(manifest, have, download=False)

    # ---- the cache's side ---------------------------------------------------------------------------------------

    def left_cache(self, chunk_ids: Sequence[str]) -> None:
        """Cache listener (any thread): these chunks left the cache."""
        token = self._token
        if token is None:
            return
        # shutting down, or so many at once that the batch already queued covers the torrents
        with contextlib.suppress(trio.RunFinishedError, trio.WouldBlock):
            token.run_sync_soon(self._left_send.send_nowait, list(chunk_ids))

    async def _reload_loop(self) -> None:
        async for first in self._left:
            gone = set(first)
            await trio.sleep(RELOAD_PAUSE_S)
            while True:
                try:
                    gone.update(self._left.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._reload_torrents_holding(gone)

    async def _reload_torrents_holding(self, gone: set[str]) -> None:
        for torrent in list(self._swarm.torrents.values()):
            if torrent.chunk_set.isdisjoint(gone):
                continue
            have = await trio.to_thread.run_sync(self._cache.held, torrent.manifest.piece_ids)
            self._swarm.reload(torrent, have)
            log.info(
                "torrent %s: %d chunks left the cache, added again",
                torrent.manifest.name,
                len(gone & torrent.chunk_set),
            )

    # ---- libtorrent's side --------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reload_loop)
            nursery.start_soon(self._unban_loop)
            nursery.start_soon(self._flush_watchdog)
            task_status.started()
            async for event in self._events:
                self._handle(event, nursery)

    def _handle(self, event: alerts.SwarmEvent, nursery: trio.Nursery) -> None:
        if isinstance(event, alerts.PieceFinished):
            torrent = self._swarm.torrents.get(event.infohash)
            if torrent is None:
                return
            if event.piece in torrent.echoes:
                torrent.echoes.discard(event.piece)
                return
            self._finished.setdefault(event.infohash, set()).add(event.piece)
            self._flush(torrent)
        elif isinstance(event, alerts.CacheFlushed):
            pieces, _ = self._flushing.pop(event.infohash, (set(), 0.0))
            torrent = self._swarm.torrents.get(event.infohash)
            if torrent is None:
                return
            ordered = sorted(pieces)
            for start in range(0, len(ordered), BATCH):
                nursery.start_soon(self._take, torrent, ordered[start : start + BATCH])
            self._flush(torrent)
        elif isinstance(event, alerts.HashFailed):
            self._stats.corrupt_from_peers += 1
        elif isinstance(event, alerts.PeerBanned):
            self._stats.peers_banned += 1
            until = self._bans.strike(event.ip, trio.current_time())
            self._swarm.block(self._bans.refused(trio.current_time()))
            log.warning(
                "peer %s sent corrupt data on %s: refused for %.0f s",
                event.ip,
                event.infohash,
                until - trio.current_time(),
            )
        elif isinstance(event, alerts.AlertsDropped):
            log.warning("libtorrent dropped %d kinds of alerts: comparing every torrent with the cache", event.count)
            nursery.start_soon(self.resync)
        elif isinstance(event, alerts.TorrentFailed):
            log.warning("torrent %s: %s", event.infohash, event.message)

    def _flush(self, torrent: Torrent) -> None:
        """Ask for a flush of ``torrent`` if pieces wait for one and none is in flight."""
        infohash = torrent.infohash
        if infohash in self._flushing or not self._finished.get(infohash):
            return
        self._flushing[infohash] = (self._finished.pop(infohash), trio.current_time())
        torrent.flush()

    async def _flush_watchdog(self) -> None:
        """A flush whose answer never came (the torrent was added again meanwhile) is asked for again."""
        while True:
            await trio.sleep(FLUSH_RETRY_S)
            now = trio.current_time()
            for infohash, (pieces, asked) in list(self._flushing.items()):
                torrent = self._swarm.torrents.get(infohash)
                if now - asked < FLUSH_RETRY_S:
                    continue
                del self._flushing[infohash]
                if torrent is not None:
                    self._finished.setdefault(infohash, set()).update(pieces)
                    self._flush(torrent)

    async def _take(self, torrent: Torrent, pieces: list[int]) -> None:
        """libtorrent completed and wrote back ``pieces``: index their files (re-check those the cache had)."""
        ids = [torrent.chunk_of(piece) for piece in pieces]
        manifest = torrent.manifest
        async with self._disk:
            outcome, damaged = await trio.to_thread.run_sync(self._adopt, ids, manifest.manifest_id)
        for chunk_id in damaged:
            self._stats.cache_repairs += 1
            log.warning("chunk %s: its file was damaged by a peer's in-flight blocks: fetching it again", chunk_id)
            with contextlib.suppress(P2PChunksError):
                await self._refetch(chunk_id)
        for piece, chunk_id in zip(pieces, ids, strict=True):
            result = outcome.get(chunk_id)
            if result in ("fresh", "held"):
                source = Source.HUB if piece in torrent.injected else Source.PEERS
                self._arrived(chunk_id, source, manifest.chunk_size_of(chunk_id), fresh=result == "fresh")
            elif result == "corrupt":
                self._stats.corrupt_from_peers += 1
                log.error(
                    "piece for %s passed libtorrent's hash but not its chunk id: manifest %s is inconsistent",
                    chunk_id,
                    manifest.name,
                )

    def _adopt(self, ids: list[str], manifest_id: str) -> tuple[dict[str, Adopted], list[str]]:
        """(A worker thread.) Index the files of those of ``ids`` the cache lacks; re-hash those it held: the
        outcome of each adopted one, and the held ones found damaged (dropped)."""
        held = self._cache.held(ids)
        outcome = self._cache.adopt_many([c for c in ids if c not in held], manifest_id=manifest_id)
        return outcome, [c for c in held if not self._still_intact(c)]

    def _still_intact(self, chunk_id: str) -> bool:
        try:
            return self._cache.verify(chunk_id)
        except ChunkNotFound:  # evicted meanwhile
            return True

    async def resync(self) -> None:
        """Adopt what libtorrent completed without telling us (its alerts were dropped): through a flush."""
        for torrent in list(self._swarm.torrents.values()):
            have = torrent.have()
            held = await trio.to_thread.run_sync(self._cache.held, torrent.manifest.piece_ids)
            unseen = {piece for piece, done in enumerate(have) if done and torrent.chunk_of(piece) not in held}
            if unseen:
                log.info("torrent %s: %d pieces completed unseen: adopting them", torrent.manifest.name, len(unseen))
                self._finished.setdefault(torrent.infohash, set()).update(unseen)
                self._flush(torrent)

    async def sweep(self, torrent: Torrent) -> int:
        """Delete the files of this torrent's chunks that neither the cache nor libtorrent holds (what failed pieces
        and abandoned downloads leave behind); the number deleted."""
        have = torrent.have()
        held = await trio.to_thread.run_sync(self._cache.held, torrent.manifest.piece_ids)
        ids = torrent.manifest.piece_ids
        loose = [chunk for piece, chunk in enumerate(ids) if not have[piece] and chunk not in held]
        removed = await trio.to_thread.run_sync(lambda: sum(map(self._cache.remove_stray, loose)))
        if removed:
            log.info("torrent %s: %d partial chunk files removed", torrent.manifest.name, removed)
        return int(removed)

    async def _unban_loop(self) -> None:
        while True:
            when = self._bans.next_change()
            await trio.sleep_until(when if when is not None else trio.current_time() + 60.0)
            self._swarm.block(self._bans.refused(trio.current_time()))
