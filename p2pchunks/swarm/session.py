"""The swarm engine: one libtorrent session per agent, one torrent per manifest, stored on the chunk cache.

Owns: the session's settings (profiles ``node`` and ``seed``, strict NAT, private DHT and its guards, LSD, rate
caps), adding, re-adding and removing torrents (each a :class:`p2pchunks.swarm.torrent.Torrent`), and the
addresses it refuses: those the agent names (``block``) and those the flood guard (``floodguard``) blocks, in one
ip_filter. Alerts come in through ``alerts.pump_alerts`` and are handed, as our own events, to the ``on_event``
callback the agent gives us, except the connection news only the flood guard needs.

Storage: a torrent is named ``chunks`` and its files are ``chunks/ab/cd/<id>``; with ``save_path`` = the cache
directory libtorrent reads and writes the cache's own files, so there is no second copy that could drift. What
the cache already holds is handed over as ``have_pieces`` (no re-hash, no re-download).

It must not know policy (which chunk from where) nor HTTP.
"""

from __future__ import annotations

import ipaddress
import math
import secrets
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import libtorrent as lt
import trio

from ..config.schema import SwarmSection, join_hostport
from ..formats.manifest import Manifest
from .alerts import ALERT_MASK, AlertsDropped, InboundConnection, PeerDisconnected, SwarmEvent, pump_alerts
from .floodguard import FloodGuard, share_of
from .peerbytes import PeerLedger
from .torrent import NORMAL, Torrent, add_params

BLOCKED = 1
"""libtorrent's ``ip_filter`` flag for a refused address range."""

Profile = Literal["node", "seed"]


@dataclass(frozen=True)
class SwarmSettings:
    """How the agent's libtorrent session behaves. Defaults (the config's ``[swarm]``) suit a node on a real network."""

    listen: str = SwarmSection.listen
    profile: Profile = "node"
    inbound: bool = SwarmSection.inbound
    """False: no inbound connection is accepted, farm-mates' included (DHT, LSD and outgoing stay alive). The loopback
    tests' stand-in for strict NAT; behind a real NAT router inbound stays on (the router blocks the outside)."""
    utp: bool = SwarmSection.utp
    dht: bool = SwarmSection.dht
    dht_bootstrap: tuple[tuple[str, int], ...] = ()
    relaxed_dht: bool = SwarmSection.relaxed_dht
    """Lab only: lift libtorrent's DHT sybil guards (one routing-table entry and one search result per /24, no
    reserved networks, verified node ids), which would otherwise keep a DHT of many nodes on 127.0.0.x (or a lab's
    few /24s) from finding one another. Never on the internet."""
    lsd: bool = SwarmSection.lsd
    port_mapping: bool = SwarmSection.port_mapping
    """Ask the router for a port mapping (UPnP / NAT-PMP); seeds that cannot port-forward by hand."""
    upload_rate_bps: int = SwarmSection.upload_rate_bps
    download_rate_bps: int = SwarmSection.download_rate_bps
    limit_local_peers: bool = SwarmSection.limit_local_peers
    """Apply the rate caps to peers on the local network too (libtorrent exempts them by default)."""
    connections_limit: int = SwarmSection.connections_limit
    """0: 200 for a node, 1,000 for a seed (a quarter of it is one address's share: a farm behind one NAT)."""
    trackers: tuple[str, ...] = ()
    unchoke_slots: int = 0
    """0: 8 for a node, 64 for a seed."""

    @property
    def connections(self) -> int:
        return self.connections_limit or (1000 if self.profile == "seed" else 200)

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
        "listen_interfaces": join_hostport(settings.host, settings.port),
        "alert_mask": ALERT_MASK,
        "alert_queue_size": 100_000,
        "enable_dht": settings.dht,
        "dht_bootstrap_nodes": "",
        # libtorrent's defaults (all True) unless a lab relaxes them: see SwarmSettings.relaxed_dht
        "dht_restrict_routing_ips": not settings.relaxed_dht,
        "dht_restrict_search_ips": not settings.relaxed_dht,
        "dht_ignore_dark_internet": not settings.relaxed_dht,
        "dht_prefer_verified_node_ids": not settings.relaxed_dht,
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
        "connections_limit": settings.connections,
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


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


class Swarm:
    """The agent's libtorrent session. Create with :func:`open_swarm`."""

    def __init__(self, session: Any, settings: SwarmSettings, save_path: Path) -> None:
        self._session = session
        self.settings = settings
        self.save_path = save_path
        self.torrents: dict[str, Torrent] = {}
        self._blocked: frozenset[str] = frozenset()
        self.peer_ledger = PeerLedger()
        limit = settings.connections
        per_address, per_prefix = share_of(limit)
        self.guard = FloodGuard(per_address, per_prefix, crowded=per_prefix, max_tracked=8 * (limit + 64))
        self.guard_blocks = 0
        """Sources the flood guard blocked so far."""
        self._guard_changed = trio.Event()

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
            priorities = [NORMAL if download else 0] * len(manifest.piece_ids)
            handle = self._add(manifest, have, priorities)
            torrent = Torrent(manifest, handle, infohash, priorities, echoes=_pieces(manifest, have))
            self.torrents[infohash] = torrent
        elif download:
            torrent.want_all()
        return torrent

    def reload(self, torrent: Torrent, have: Collection[str]) -> None:
        """Add ``torrent`` again with ``have`` as what it holds (and the priorities it had).

        libtorrent has no way to forget a piece it completed: when a chunk leaves the cache (evicted, found
        damaged) the torrent must be added again, or it keeps offering the chunk to peers from a file that is
        gone. Its peers are disconnected; they find us again as any peer does (LSD, tracker, DHT).
        """
        self.refresh_peer_bytes()  # the torrent's connections close with it: count them first
        self._session.remove_torrent(torrent.handle)
        torrent.handle = self._add(torrent.manifest, have, torrent.priorities)
        torrent.echoes = _pieces(torrent.manifest, have)
        torrent.injected.clear()

    def _add(self, manifest: Manifest, have: Collection[str], priorities: list[int]) -> Any:
        params = add_params(manifest, str(self.save_path), have, priorities)
        params.trackers = list(self.settings.trackers)
        return self._session.add_torrent(params)

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

    def block(self, ips: Collection[str]) -> None:
        """Refuse every connection to and from ``ips`` (the whole set: it replaces the previous one)."""
        blocked = frozenset(ips)
        if blocked == self._blocked:
            return
        self._blocked = blocked
        self._filter()

    @property
    def blocked(self) -> frozenset[str]:
        """The addresses the agent refuses (``block``); the flood guard's are in ``guard.blocked``."""
        return self._blocked

    def note(self, event: SwarmEvent) -> bool:
        """Feed the flood guard; True when the event concerns nobody else (connection news)."""
        if isinstance(event, InboundConnection):
            if self.guard.opened(event.ip, event.port, trio.current_time()):
                self.guard_blocks += 1
                self._filter()
                self._guard_changed.set()
            return True
        if isinstance(event, PeerDisconnected):
            self.guard.closed(event.ip, event.port)
            return True
        if isinstance(event, AlertsDropped):
            self.guard.forget_connections()
        return False

    def _filter(self) -> None:
        """One ip_filter for libtorrent: the agent's refused addresses and the guard's blocked ranges (refused at
        accept, their peers dropped, no outgoing connection to them either)."""
        rules = lt.ip_filter()
        for ip in self._blocked:
            rules.add_rule(ip, ip, BLOCKED)
        for first, last in self.guard.blocked:
            rules.add_rule(first, last, BLOCKED)
        self._session.set_ip_filter(rules)

    async def lift_guard_blocks(self) -> None:
        """Forever: unblock each source of the flood guard when its time is up."""
        while True:
            with trio.move_on_at(self.guard.next_lift() or math.inf):
                await self._guard_changed.wait()
            self._guard_changed = trio.Event()
            if self.guard.lift(trio.current_time()):
                self._filter()

    def add_dht_node(self, host: str, port: int) -> None:
        self._session.add_dht_node((host, port))

    def dht_announce(self, torrent: Torrent) -> None:
        torrent.handle.force_dht_announce()


def _pieces(manifest: Manifest, chunk_ids: Collection[str]) -> set[int]:
    return {manifest.piece_index(chunk_id) for chunk_id in chunk_ids if manifest.has_chunk(chunk_id)}


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
        if not swarm.note(event):
            on_event(event)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump_alerts, session, dispatch)
            nursery.start_soon(swarm.lift_guard_blocks)
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
