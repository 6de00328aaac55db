"""The swarm engine: one libtorrent session per agent, one torrent per manifest, stored on the chunk cache.

Owns: the session's settings (profiles ``node`` and ``seed``, strict NAT, private DHT, LSD, rate caps), adding
and removing torrents, and the per-torrent view the fetch job reads (what we have, what peers have, who they are)
and acts on (inject a chunk, set a deadline, read a piece). Alerts come in through ``alerts.pump_alerts`` and are
dispatched to the ``on_event`` callback the agent gives us.

Storage: a torrent is named ``chunks`` and its files are ``chunks/ab/cd/<id>``; with ``save_path`` = the cache
directory libtorrent reads and writes the cache's own files, so there is no second copy that could drift. What
the cache already holds is handed over as ``have_pieces`` (no re-hash, no re-download).

It must not know policy (which chunk from where) nor HTTP.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import libtorrent as lt
import trio

from ..formats.manifest import Manifest
from .alerts import ALERT_MASK, SwarmEvent, pump_alerts
from .peerbytes import ConnectionCount, PeerLedger

Profile = Literal["node", "seed"]


@dataclass(frozen=True)
class SwarmSettings:
    """How the agent's libtorrent session behaves. Defaults suit a node on a real network."""

    listen: str = "0.0.0.0:6881"
    profile: Profile = "node"
    inbound: bool = True
    """False: no inbound connection is accepted, farm-mates' included (DHT, LSD and outgoing stay alive). The loopback
    tests' stand-in for strict NAT; behind a real NAT router inbound stays on (the router blocks the outside)."""
    utp: bool = True
    dht: bool = True
    dht_bootstrap: tuple[tuple[str, int], ...] = ()
    lsd: bool = True
    port_mapping: bool = False
    """Ask the router for a port mapping (UPnP / NAT-PMP); seeds that cannot port-forward by hand."""
    upload_rate_bps: int = 0
    download_rate_bps: int = 0
    limit_local_peers: bool = False
    """Apply the rate caps to peers on the local network too (libtorrent exempts them by default)."""
    connections_limit: int = 200
    trackers: tuple[str, ...] = ()
    unchoke_slots: int = 0
    """0: 8 for a node, 64 for a seed."""

    @property
    def host(self) -> str:
        host, _, _ = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2] or 0)


def session_settings(settings: SwarmSettings) -> dict[str, Any]:
    """The libtorrent settings pack for ``settings`` (pure; tested without a session)."""
    seed = settings.profile == "seed"
    pack: dict[str, Any] = {
        "listen_interfaces": f"{_bracket(settings.host)}:{settings.port}",
        "alert_mask": ALERT_MASK,
        "alert_queue_size": 100_000,
        "enable_dht": settings.dht,
        "dht_bootstrap_nodes": "",
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_ignore_dark_internet": False,
        "dht_prefer_verified_node_ids": False,
        "enable_lsd": settings.lsd,
        "enable_upnp": settings.port_mapping,
        "enable_natpmp": settings.port_mapping,
        "enable_incoming_tcp": settings.inbound,
        "enable_incoming_utp": settings.inbound and settings.utp,
        "enable_outgoing_utp": settings.utp,
        "webtorrent_stun_server": "",
        "upload_rate_limit": settings.upload_rate_bps,
        "download_rate_limit": settings.download_rate_bps,
        "ignore_limits_on_local_network": not settings.limit_local_peers,
        "connections_limit": settings.connections_limit,
        "allow_multiple_connections_per_ip": True,
        "unchoke_slots_limit": settings.unchoke_slots or (64 if seed else 8),
        "max_queued_disk_bytes": 8 * 1024 * 1024,
        "aio_threads": 4,
        "smooth_connects": False,
        "connection_speed": 200,
        "torrent_connect_boost": 50,
        "peer_connect_timeout": 3,
        # Nodes of a farm hear each other on LSD at the same instant and connect both ways at once. With equal
        # listen ports (6881 everywhere) libtorrent resolves the duplicate by a coin flip on each side, so half the
        # time both connections die; the default 60 s before trying that peer again would leave the pair apart for
        # the whole deploy.
        "min_reconnect_time": 1,
        "request_timeout": 10,
        "close_redundant_connections": False,  # a node between its hot chunks and the rest must keep its peers
        "seed_choking_algorithm": 1 if seed else 0,  # fastest_upload for seeds, round robin for nodes
        "active_downloads": -1,
        "active_seeds": -1,
        "active_limit": -1,
        "user_agent": "p2pchunks/0.1",
        # A whole 20-byte peer id of our own: sessions sharing a process otherwise draw the same one and drop
        # each other as "connected to ourselves".
        "peer_fingerprint": "-PC0100-" + secrets.token_hex(6),
    }
    if not _unspecified(settings.host):
        pack["outgoing_interfaces"] = settings.host
    return pack


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


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
    source: str


@dataclass
class Torrent:
    """One manifest in the swarm: its handle and the chunk ↔ piece mapping."""

    manifest: Manifest
    handle: Any
    infohash: str
    injected: set[int] = field(default_factory=set)
    chunk_set: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.chunk_set = frozenset(self.manifest.piece_ids)

    def piece_of(self, chunk_id: str) -> int:
        return self.manifest.piece_index(chunk_id)

    def chunk_of(self, piece: int) -> str:
        return self.manifest.piece_ids[piece]

    def has(self, chunk_id: str) -> bool:
        return bool(self.handle.have_piece(self.piece_of(chunk_id)))

    def have(self) -> list[bool]:
        """Which pieces libtorrent holds (piece order), including those not yet handed to the cache."""
        return list(self.handle.status(lt.torrent_handle.query_pieces).pieces)

    def availability(self) -> list[int]:
        """How many connected peers have each piece (piece order)."""
        return list(self.handle.piece_availability())

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

    def peer_counters(self) -> list[ConnectionCount]:
        """Payload bytes each live connection has carried since it opened (libtorrent's per-peer totals)."""
        out = []
        for peer in self.handle.get_peer_info():
            ip, port = peer.ip
            out.append(ConnectionCount(self.infohash, str(ip), int(port), peer.total_download, peer.total_upload))
        return out

    def local_ips(self) -> set[str]:
        """Our own address as seen on our peer connections."""
        return {str(peer.local_endpoint[0]) for peer in self.handle.get_peer_info()}

    def inject(self, chunk_id: str, data: bytes) -> None:
        """Hand a verified chunk (exact bytes) to libtorrent so peers can get it from us.

        ``overwrite_existing``: blocks of this piece that a peer already sent are replaced too; without it
        libtorrent keeps them, and a liar's blocks would end up in the file the cache just verified.
        """
        piece = self.piece_of(chunk_id)
        self.injected.add(piece)
        self.handle.add_piece(piece, data, lt.torrent_handle.overwrite_existing)

    def set_deadline(self, chunk_id: str, milliseconds: int) -> None:
        self.handle.set_piece_deadline(self.piece_of(chunk_id), milliseconds)

    def want_all(self, priority: int = 4) -> None:
        self.handle.prioritize_pieces([priority] * self.manifest_pieces)

    def want_none(self) -> None:
        self.handle.prioritize_pieces([0] * self.manifest_pieces)

    def want(self, chunk_ids: Iterable[str], priority: int = 7) -> None:
        for chunk_id in chunk_ids:
            self.handle.piece_priority(self.piece_of(chunk_id), priority)

    def read(self, chunk_id: str) -> None:
        """Ask for the bytes of a piece; they arrive as a ``PieceRead`` event."""
        self.handle.read_piece(self.piece_of(chunk_id))

    def connect(self, ip: str, port: int) -> None:
        self.handle.connect_peer((ip, port))

    @property
    def manifest_pieces(self) -> int:
        return len(self.manifest.piece_ids)

    def status(self) -> Any:
        return self.handle.status()


_SOURCES = (("tracker", 1), ("dht", 2), ("pex", 4), ("lsd", 8), ("resume", 16), ("incoming", 32))


def _source_name(flags: int) -> str:
    return "+".join(name for name, bit in _SOURCES if flags & bit) or "manual"


def torrent_info(manifest: Manifest) -> Any:
    """libtorrent's view of the manifest's info dict."""
    info: Any = manifest.info
    return lt.torrent_info(lt.bencode({b"info": info}))


class Swarm:
    """The agent's libtorrent session. Create with :func:`open_swarm`."""

    def __init__(self, session: Any, settings: SwarmSettings, save_path: Path) -> None:
        self._session = session
        self.settings = settings
        self.save_path = save_path
        self.torrents: dict[str, Torrent] = {}
        self.banned: list[tuple[str, str]] = []
        self.peer_ledger = PeerLedger()

    @property
    def listen_port(self) -> int:
        return int(self._session.listen_port())

    @property
    def dht_port(self) -> int:
        return self.listen_port

    def add(self, manifest: Manifest, have: Collection[str], *, download: bool) -> Torrent:
        """Add (or update) the torrent of ``manifest``; ``have``: chunk ids the cache already holds."""
        infohash = manifest.infohash
        if infohash is None:
            raise ValueError(f"manifest {manifest.name} has no chunks to share")
        torrent = self.torrents.get(infohash)
        if torrent is None:
            params = lt.add_torrent_params()
            params.ti = torrent_info(manifest)
            params.save_path = str(self.save_path)
            params.have_pieces = [chunk_id in have for chunk_id in manifest.piece_ids]
            params.flags &= ~lt.torrent_flags.auto_managed
            params.flags &= ~lt.torrent_flags.paused
            params.trackers = list(self.settings.trackers)
            if not download:
                params.piece_priorities = [0] * len(manifest.piece_ids)
            handle = self._session.add_torrent(params)
            torrent = Torrent(manifest, handle, infohash)
            self.torrents[infohash] = torrent
        if download:
            torrent.want_all()
        return torrent

    def remove(self, infohash: str) -> None:
        self.refresh_peer_bytes()  # the torrent's connections close with it: count them first
        torrent = self.torrents.pop(infohash, None)
        if torrent is not None:
            self._session.remove_torrent(torrent.handle)

    def refresh_peer_bytes(self) -> PeerLedger:
        """Read every connection's payload counters into the ledger (call it often: see ``peerbytes``)."""
        self.peer_ledger.update(count for torrent in self.torrents.values() for count in torrent.peer_counters())
        return self.peer_ledger

    def torrents_with(self, chunk_id: str) -> list[Torrent]:
        return [t for t in self.torrents.values() if chunk_id in t.chunk_set]

    def add_dht_node(self, host: str, port: int) -> None:
        self._session.add_dht_node((host, port))

    def dht_announce(self, torrent: Torrent) -> None:
        torrent.handle.force_dht_announce()

    def note(self, event: SwarmEvent) -> None:
        from .alerts import PeerBanned

        if isinstance(event, PeerBanned):
            self.banned.append((event.infohash, event.ip))


@asynccontextmanager
async def open_swarm(
    settings: SwarmSettings, save_path: Path, on_event: Callable[[SwarmEvent], None]
) -> AsyncIterator[Swarm]:
    """Start a session, pump its alerts into ``on_event`` for as long as the block runs, then stop it cleanly."""
    params = lt.session_params()
    pack: Any = session_settings(settings)  # the bindings convert a dict; their stubs want a settings_pack
    params.settings = pack
    session = lt.session(params)
    swarm = Swarm(session, settings, save_path)
    for host, port in settings.dht_bootstrap:
        session.add_dht_node((host, port))

    def dispatch(event: SwarmEvent) -> None:
        swarm.note(event)
        on_event(event)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump_alerts, session, dispatch)
            try:
                yield swarm
            finally:
                nursery.cancel_scope.cancel()
    finally:
        # Destroying a live session holds the GIL for up to ~0.7 s; a paused one goes in a few ms.
        session.pause()
        with trio.CancelScope(shield=True):
            await trio.sleep(0.3)
        swarm.torrents.clear()
        del session
