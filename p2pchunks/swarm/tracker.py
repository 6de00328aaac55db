"""A BitTorrent HTTP tracker (BEP 3, compact peers BEP 23/7) run by seed-mode agents.

Owns the announce protocol and the peer table: who announced which infohash, expiry, and the order peers are
handed out in — nearest first (longest common address prefix with the asking peer, so nodes of one farm meet
each other before anyone across the grid), seeds of other networks after, then the rest. A fresh node finds
peers in one round trip without a public tracker or the DHT.

Agents name their farm in the announce URL (``/announce?farm=<id>``, libtorrent appends its own parameters).
``Tracker.announce`` is pure (clock passed in); ``Tracker.handle`` adapts it to the HTTP server.
"""

from __future__ import annotations

import ipaddress
import random
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from ..formats.bencoding import bencode
from ..http.server import Request, Response

MAX_PEERS_PER_TORRENT = 2000
MAX_TORRENTS = 10_000
DEFAULT_NUMWANT = 50


class AnnounceError(ValueError):
    """A malformed announce; answered with a bencoded ``failure reason``."""


@dataclass(frozen=True, slots=True)
class Announce:
    info_hash: bytes
    peer_id: bytes
    ip: str
    port: int
    left: int
    event: str
    numwant: int
    farm: str = ""


@dataclass
class _Peer:
    ip: str
    port: int
    left: int
    seen: float
    farm: str = ""


@dataclass
class Tracker:
    interval: int = 60
    clock: Callable[[], float] | None = None
    rng: random.Random = field(default_factory=random.Random)
    committed: Callable[[bytes], bool] | None = None
    """Whether the seed running this tracker is fetching an infohash right now: it then counts as ``complete``
    (a seed fetches every chunk of an image it takes on), so nodes behind NAT routers, which may reach it only
    through a farm-mate, wait for it rather than ask the hub."""
    _torrents: dict[bytes, dict[bytes, _Peer]] = field(default_factory=dict)

    def announce(self, request: Announce, now: float) -> dict[bytes, object]:
        """Record ``request`` and return the tracker response dict."""
        peers = self._torrents.get(request.info_hash)
        if peers is None:
            if len(self._torrents) >= MAX_TORRENTS:
                self._expire(now)
                if len(self._torrents) >= MAX_TORRENTS:
                    raise AnnounceError("tracker full")
            peers = self._torrents[request.info_hash] = {}
        self._expire_torrent(peers, now)
        key = request.peer_id
        if request.event == "stopped":
            peers.pop(key, None)
        elif key in peers or len(peers) < MAX_PEERS_PER_TORRENT:
            peers[key] = _Peer(request.ip, request.port, request.left, now, request.farm)
        # Behind a NAT router every host of a farm announces from the router's address, most with the same port:
        # one endpoint, listed once (peers are kept by peer id, so hosts sharing an address with distinct ports —
        # port mappings — are all listed).
        endpoints = {(p.ip, p.port): p for k, p in peers.items() if k != key}
        endpoints.pop((request.ip, request.port), None)
        others = list(endpoints.values())
        chosen = nearest_first(request.ip, others, self.rng, farm=request.farm)[: request.numwant]
        v4 = b"".join(ipaddress.ip_address(p.ip).packed + p.port.to_bytes(2, "big") for p in chosen if ":" not in p.ip)
        v6 = b"".join(ipaddress.ip_address(p.ip).packed + p.port.to_bytes(2, "big") for p in chosen if ":" in p.ip)
        seeds = sum(1 for p in peers.values() if p.left == 0)
        committed = bool(self.committed and self.committed(request.info_hash))
        response: dict[bytes, object] = {
            b"interval": self.interval,
            b"min interval": max(1, self.interval // 4),
            b"complete": seeds + committed,
            b"incomplete": len(peers) - seeds,
            b"peers": v4,
        }
        if v6:
            response[b"peers6"] = v6
        return response

    def peers_of(self, info_hash: bytes) -> list[tuple[str, int]]:
        return [(p.ip, p.port) for p in self._torrents.get(info_hash, {}).values()]

    def _expire(self, now: float) -> None:
        for info_hash in list(self._torrents):
            self._expire_torrent(self._torrents[info_hash], now)
            if not self._torrents[info_hash]:
                del self._torrents[info_hash]

    def _expire_torrent(self, peers: dict[bytes, _Peer], now: float) -> None:
        limit = 2.5 * self.interval
        for key in [k for k, p in peers.items() if now - p.seen > limit]:
            del peers[key]

    async def handle(self, request: Request) -> Response:
        import trio

        if request.path != "/announce" or request.method != "GET":
            return _failure("only GET /announce is served here", 404)
        try:
            announce = parse_announce(request.raw_query, request.client[0])
            body = bencode(self.announce(announce, (self.clock or trio.current_time)()))
        except AnnounceError as error:
            return _failure(str(error), 400)
        return Response(200, [("content-type", "text/plain")], body)


def _failure(reason: str, status: int) -> Response:
    return Response(status, [("content-type", "text/plain")], bencode({b"failure reason": reason.encode()}))


def nearest_first(ip: str, peers: list[_Peer], rng: random.Random, farm: str = "") -> list[_Peer]:
    """Peers of the same farm first, then by the length of the address prefix shared with ``ip`` (ties shuffled)."""
    mine = _bits(ip)
    shuffled = list(peers)
    rng.shuffle(shuffled)
    return sorted(shuffled, key=lambda p: (not (farm and p.farm == farm), -_common_prefix(mine, _bits(p.ip))))


def _bits(ip: str) -> str:
    address = ipaddress.ip_address(ip)
    return format(int(address), f"0{address.max_prefixlen}b")


def _common_prefix(a: str, b: str) -> int:
    if len(a) != len(b):
        return -1
    n = 0
    for x, y in zip(a, b, strict=True):
        if x != y:
            break
        n += 1
    return n


def parse_announce(raw_query: str, client_ip: str) -> Announce:
    """Parse the query string of an announce (binary ``info_hash``/``peer_id`` stay bytes)."""
    if len(raw_query) > 4096:
        raise AnnounceError("query too long")
    fields: dict[str, bytes] = {}
    for part in raw_query.split("&"):
        name, _, value = part.partition("=")
        fields[urllib.parse.unquote(name)] = urllib.parse.unquote_to_bytes(value)
    info_hash = fields.get("info_hash", b"")
    peer_id = fields.get("peer_id", b"")
    if len(info_hash) not in (20, 32):
        raise AnnounceError("info_hash must be 20 or 32 bytes")
    if not 1 <= len(peer_id) <= 64:
        raise AnnounceError("peer_id must be 1 to 64 bytes")
    port = _int(fields, "port", None)
    if port is None or not 1 <= port <= 65535:
        raise AnnounceError("port must be 1..65535")
    event = fields.get("event", b"").decode("ascii", "replace")
    if event not in ("", "started", "stopped", "completed", "paused"):
        raise AnnounceError(f"unknown event {event!r}")
    numwant = min(max(_int(fields, "numwant", DEFAULT_NUMWANT) or 0, 0), 200)
    farm = fields.get("farm", b"")[:64].decode("utf-8", "replace")
    return Announce(info_hash[:20], peer_id, client_ip, port, _int(fields, "left", 0) or 0, event, numwant, farm)


def _int(fields: dict[str, bytes], name: str, default: int | None) -> int | None:
    raw = fields.get(name)
    if raw is None or raw == b"":
        return default
    if not raw.isdigit() or len(raw) > 20:
        raise AnnounceError(f"{name} must be a non-negative integer")
    return int(raw)
