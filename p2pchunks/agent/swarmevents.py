"""What the agent does with libtorrent's news: pieces from peers into the cache, damage repaired, liars counted.

Owns: the channel that carries :mod:`p2pchunks.alerts` events from the alert pump into trio, and the reactions:
a piece finished by peers is read and delivered through the agent's data path (verified against its chunk id,
cached, announced); a piece the agent injected is re-checked on disk once libtorrent is done with it; hash
failures and bans are counted. Must not decide where chunks come from: that is the fetch policy's job.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import trio

from ..errors import ChunkCorrupt, ChunkNotFound, P2PChunksError
from ..swarm import alerts
from .fetchjob import Source

if TYPE_CHECKING:
    from ..swarm.session import Torrent
    from .node import Agent

log = logging.getLogger(__name__)


class SwarmEvents:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._send, self._receive = trio.open_memory_channel[alerts.SwarmEvent](math.inf)

    def send(self, event: alerts.SwarmEvent) -> None:
        """Called by the alert pump (in trio): never blocks."""
        self._send.send_nowait(event)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            async for event in self._receive:
                self._handle(event, nursery)

    def _handle(self, event: alerts.SwarmEvent, nursery: trio.Nursery) -> None:
        swarm, stats = self.agent.swarm, self.agent.stats
        if swarm is None:
            return
        if isinstance(event, alerts.PieceFinished):
            torrent = swarm.torrents.get(event.infohash)
            if torrent is None:
                return
            if event.piece in torrent.injected:
                nursery.start_soon(self._recheck, torrent, event.piece)
            else:
                torrent.handle.read_piece(event.piece)
        elif isinstance(event, alerts.PieceRead):
            torrent = swarm.torrents.get(event.infohash)
            if torrent is None or event.piece in torrent.injected:
                return
            if event.data is None:
                log.warning("reading piece %d of %s failed: %s", event.piece, event.infohash, event.error)
                return
            nursery.start_soon(self._from_peer, torrent, torrent.chunk_of(event.piece), event.data)
        elif isinstance(event, alerts.HashFailed):
            stats.corrupt_from_peers += 1
            torrent = swarm.torrents.get(event.infohash)
            if torrent is not None and event.piece in torrent.injected:
                nursery.start_soon(self._recheck, torrent, event.piece)
        elif isinstance(event, alerts.PeerBanned):
            stats.peers_banned += 1
            log.warning("banned peer %s (corrupt data) on %s", event.ip, event.infohash)
        elif isinstance(event, alerts.TorrentFailed):
            log.warning("torrent %s: %s", event.infohash, event.message)

    async def _recheck(self, torrent: Torrent, piece: int) -> None:
        """Re-hash the cached file of a chunk we injected once libtorrent is done with the piece.

        The cache and libtorrent share one file per chunk. A peer's blocks for a piece that was in flight when the
        hub's copy arrived can still reach that file after the cache verified it (libtorrent's disk threads do not
        order them after our injection). Such a chunk is dropped and fetched again, so the damage never outlives
        the piece's own hash check.
        """
        agent = self.agent
        chunk_id = torrent.chunk_of(piece)
        try:
            intact = await trio.to_thread.run_sync(agent.cache.verify, chunk_id)
        except ChunkNotFound:
            return
        if intact:
            return
        agent.stats.cache_repairs += 1
        torrent.injected.discard(piece)
        log.warning("chunk %s: its file was damaged by a peer's in-flight blocks: fetching it again", chunk_id)
        try:
            await agent.chunk(chunk_id)
        except P2PChunksError as error:
            log.warning("chunk %s could not be fetched again: %s", chunk_id, error)

    async def _from_peer(self, torrent: Torrent, chunk_id: str, data: bytes) -> None:
        torrent.injected.add(torrent.piece_of(chunk_id))
        try:
            await self.agent.deliver(chunk_id, data, Source.PEERS, torrent.manifest.manifest_id)
        except ChunkCorrupt:
            self.agent.stats.corrupt_from_peers += 1
            log.error(
                "piece for %s passed libtorrent's hash but not its chunk id: manifest %s is inconsistent",
                chunk_id,
                torrent.manifest.name,
            )
