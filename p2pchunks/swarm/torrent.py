"""One manifest in the swarm: a libtorrent torrent whose pieces are the manifest's chunks.

Owns the chunk ↔ piece mapping and the per-torrent view the agent reads (what we have, what peers have, who they
are) and acts on (inject a verified chunk, prioritize pieces, set deadlines), plus what libtorrent does not
remember for us: the priorities we asked for (so the torrent can be added again with them after a chunk left the
cache) and which pieces were handed over as already had when it was added (libtorrent announces each of those
with a ``piece_finished`` alert that is no news). Must not know policy, the cache or HTTP.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import libtorrent as lt

from ..formats.manifest import Manifest
from .peerbytes import ConnectionCount

NORMAL = 4
TOP = 7


class Progress(NamedTuple):
    have: list[bool]
    """Which pieces libtorrent holds (piece order), including those not yet handed to the cache."""
    download_bps: int
    seeded: bool
    """The trackers count at least one seed in this swarm (``num_complete``; -1 while unknown)."""


@dataclass(frozen=True, slots=True)
class PeerView:
    ip: str
    port: int
    seed: bool
    upload_only: bool
    pieces: int
    down_bps: int
    up_bps: int
    local: bool
    """We dialled this connection (libtorrent's ``local_connection``, i.e. outgoing): not "on our LAN"."""
    source: str


def torrent_info(manifest: Manifest) -> Any:
    """libtorrent's view of the manifest's info dict."""
    return lt.torrent_info(b"d4:info" + manifest.info_bytes + b"e")


def add_params(manifest: Manifest, save_path: str, have: Collection[str], priorities: list[int]) -> Any:
    """What ``session.add_torrent`` takes for ``manifest``: started, not auto-managed, ``have`` already held."""
    params = lt.add_torrent_params()
    params.ti = torrent_info(manifest)
    params.save_path = save_path
    params.have_pieces = [chunk_id in have for chunk_id in manifest.piece_ids]
    params.flags &= ~lt.torrent_flags.auto_managed
    params.flags &= ~lt.torrent_flags.paused
    params.piece_priorities = priorities
    return params


@dataclass
class Torrent:
    """The manifest's torrent: its handle (replaced when the swarm adds it again) and the chunk ↔ piece mapping."""

    manifest: Manifest
    handle: Any
    infohash: str
    priorities: list[int]
    echoes: set[int] = field(default_factory=set)
    """Pieces handed over as had when the torrent was (re)added, whose ``piece_finished`` has not come yet."""
    injected: set[int] = field(default_factory=set)
    """Pieces we handed to libtorrent (``inject``), so their ``piece_finished`` means our bytes, not a peer's."""
    chunk_set: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.chunk_set = frozenset(self.manifest.piece_ids)

    def piece_of(self, chunk_id: str) -> int:
        return self.manifest.piece_index(chunk_id)

    def chunk_of(self, piece: int) -> str:
        return self.manifest.piece_ids[piece]

    @property
    def pieces(self) -> int:
        return len(self.manifest.piece_ids)

    def has(self, chunk_id: str) -> bool:
        return bool(self.handle.have_piece(self.piece_of(chunk_id)))

    def have(self) -> list[bool]:
        """Which pieces libtorrent holds (piece order), including those not yet handed to the cache."""
        return list(self.handle.status(lt.torrent_handle.query_pieces).pieces)

    def availability(self) -> list[int]:
        """How many connected peers have each piece (piece order)."""
        return list(self.handle.piece_availability())

    def progress(self) -> Progress:
        """Possession, payload rate and whether a seed is known, from one status query."""
        status = self.handle.status(lt.torrent_handle.query_pieces)
        return Progress(list(status.pieces), int(status.download_payload_rate), int(status.num_complete) > 0)

    def peer_counters(self) -> list[ConnectionCount]:
        """Payload bytes each live connection has carried since it opened (libtorrent's per-peer totals)."""
        out = []
        for peer in self.handle.get_peer_info():
            ip, port = peer.ip
            out.append(ConnectionCount(self.infohash, str(ip), int(port), peer.total_download, peer.total_upload))
        return out

    def peers(self) -> list[PeerView]:
        views = []
        for peer in self.handle.get_peer_info():
            ip, port = peer.ip
            views.append(
                PeerView(
                    ip=str(ip),
                    port=int(port),
                    seed=bool(peer.flags & lt.peer_info.seed),
                    upload_only=bool(peer.flags & lt.peer_info.upload_only),
                    pieces=int(peer.num_pieces),
                    down_bps=int(peer.payload_down_speed),
                    up_bps=int(peer.payload_up_speed),
                    local=bool(peer.flags & lt.peer_info.local_connection),
                    source=_source_name(int(peer.source)),
                )
            )
        return views

    def peer_pieces(self) -> list[tuple[str, list[bool]]]:
        """Each connected peer's address and the pieces it has (its bitfield and haves), piece order."""
        return [(str(peer.ip[0]), list(peer.pieces)) for peer in self.handle.get_peer_info()]

    def local_ips(self) -> set[str]:
        """Our own address as seen on our peer connections."""
        return {str(peer.local_endpoint[0]) for peer in self.handle.get_peer_info()}

    def inject(self, chunk_id: str, data: bytes) -> None:
        """Hand a verified chunk (exact bytes) to libtorrent: it writes the chunk's file and serves it to peers.

        ``overwrite_existing``: blocks of this piece that a peer already sent are replaced too; without it
        libtorrent keeps them, and a liar's blocks would end up in the file.
        """
        piece = self.piece_of(chunk_id)
        self.injected.add(piece)
        self.handle.add_piece(piece, data, lt.torrent_handle.overwrite_existing)

    def flush(self) -> None:
        """Ask libtorrent to write what it completed to the files (``CacheFlushed`` says when it has).

        A ``piece_finished`` alert means the piece passed its hash, not that its bytes are in the file yet:
        libtorrent keeps written blocks in its store buffer and writes them back later.
        """
        self.handle.flush_cache()

    def set_deadline(self, chunk_id: str, milliseconds: int) -> None:
        self.handle.set_piece_deadline(self.piece_of(chunk_id), milliseconds)

    def want_all(self, priority: int = NORMAL) -> None:
        self.set_priorities([priority] * self.pieces)

    def want(self, chunk_ids: Iterable[str], priority: int = TOP) -> None:
        for chunk_id in chunk_ids:
            piece = self.piece_of(chunk_id)
            self.priorities[piece] = priority
            self.handle.piece_priority(piece, priority)

    def set_priorities(self, priorities: list[int]) -> None:
        self.priorities = list(priorities)
        self.handle.prioritize_pieces(self.priorities)

    def connect(self, ip: str, port: int) -> None:
        self.handle.connect_peer((ip, port))

    def status(self) -> Any:
        return self.handle.status()


_SOURCES = (("tracker", 1), ("dht", 2), ("pex", 4), ("lsd", 8), ("resume", 16), ("incoming", 32))


def _source_name(flags: int) -> str:
    return "+".join(name for name, bit in _SOURCES if flags & bit) or "manual"
