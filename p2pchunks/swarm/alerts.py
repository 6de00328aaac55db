"""The libtorrent boundary: alerts in, our own frozen events out, and the pump that carries them into trio.

Owns: the translation of every libtorrent alert p2pchunks cares about into a frozen dataclass (the only place
that touches alert objects), and ``pump_alerts``, which wakes on the session's alert fd.

Two libtorrent traps shape this module (docs/libtorrent.md):
- ``set_alert_notify`` deadlocks against the GIL, so the session writes a byte to one end of a non-blocking
  socketpair (``set_alert_fd``) and trio waits on the other end;
- an alert object dies at the next ``pop_alerts()``: every field we need is copied into an event right away,
  with no ``await`` between popping and translating.
It must not know what the events mean: reacting to them is the agent's job (``agent/pieces.py``).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libtorrent as lt
import trio

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PieceFinished:
    infohash: str
    piece: int


@dataclass(frozen=True, slots=True)
class CacheFlushed:
    """What libtorrent had completed of this torrent is in its files now (after ``flush_cache``)."""

    infohash: str


@dataclass(frozen=True, slots=True)
class HashFailed:
    infohash: str
    piece: int


@dataclass(frozen=True, slots=True)
class TorrentFailed:
    infohash: str
    message: str


@dataclass(frozen=True, slots=True)
class PeerBanned:
    infohash: str
    ip: str


@dataclass(frozen=True, slots=True)
class InboundConnection:
    """A peer connected to our swarm port (before any handshake)."""

    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    """A connection to or from ``ip:port`` ended (also one refused at accept)."""

    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class ListenSucceeded:
    address: str
    port: int
    tcp: bool


@dataclass(frozen=True, slots=True)
class ListenFailed:
    address: str
    port: int
    message: str


@dataclass(frozen=True, slots=True)
class AlertsDropped:
    count: int


SwarmEvent = (
    PieceFinished
    | CacheFlushed
    | HashFailed
    | TorrentFailed
    | PeerBanned
    | InboundConnection
    | PeerDisconnected
    | ListenSucceeded
    | ListenFailed
    | AlertsDropped
)

ALERT_MASK = (
    lt.alert_category.error
    | lt.alert_category.status
    | lt.alert_category.storage
    | lt.alert_category.piece_progress
    | lt.alert_category.ip_block
    | lt.alert_category.peer
    | lt.alert_category.connect
)
"""``peer`` carries bans and accepted connections, ``connect`` their ends (a few alerts per connection: the flood
guard counts them); never the peer/torrent/picker *log* categories: they overflow the queue within a second."""


def _infohash(alert: Any) -> str:
    return str(alert.handle.info_hashes().v2)


def translate(alert: Any) -> SwarmEvent | None:
    """Copy what we need out of one alert (call before the next ``pop_alerts``)."""
    if isinstance(alert, lt.piece_finished_alert):
        return PieceFinished(_infohash(alert), int(alert.piece_index))
    if isinstance(alert, lt.cache_flushed_alert):
        return CacheFlushed(_infohash(alert))
    if isinstance(alert, lt.hash_failed_alert):
        return HashFailed(_infohash(alert), int(alert.piece_index))
    if isinstance(alert, lt.file_error_alert | lt.torrent_error_alert):
        return TorrentFailed(_infohash(alert), alert.message())
    if isinstance(alert, lt.peer_ban_alert):
        return PeerBanned(_infohash(alert), str(alert.ip[0]))
    if isinstance(alert, lt.listen_succeeded_alert):
        return ListenSucceeded(str(alert.address), int(alert.port), alert.socket_type == lt.socket_type_t.tcp)
    if isinstance(alert, lt.listen_failed_alert):
        return ListenFailed(str(alert.address), int(alert.port), alert.message())
    if isinstance(alert, lt.incoming_connection_alert):
        ip, port = alert.endpoint
        return InboundConnection(str(ip), int(port))
    if isinstance(alert, lt.peer_disconnected_alert):
        ip, port = alert.endpoint
        return PeerDisconnected(str(ip), int(port))
    if isinstance(alert, lt.peer_error_alert):
        log.debug("%s", alert.message())
        return None
    if isinstance(alert, lt.alerts_dropped_alert):
        return AlertsDropped(sum(1 for dropped in alert.dropped_alerts if dropped))
    return None


async def pump_alerts(session: Any, dispatch: Callable[[SwarmEvent], None]) -> None:
    """Forever: wait for the session's alert fd, translate every pending alert, hand each event to ``dispatch``.

    ``dispatch`` is called synchronously (it must not block); it may start trio work through a nursery it owns.
    """
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    session.set_alert_fd(writer.fileno())
    try:
        while True:
            await trio.lowlevel.wait_readable(reader)
            try:
                while reader.recv(4096):
                    pass
            except BlockingIOError:
                pass
            while True:
                alerts = session.pop_alerts()
                if not alerts:
                    break
                events = [event for event in map(translate, alerts) if event is not None]
                del alerts
                for event in events:
                    dispatch(event)
    finally:
        session.set_alert_fd(-1)
        reader.close()
        writer.close()
