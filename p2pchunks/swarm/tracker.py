"""A BitTorrent HTTP tracker (BEP 3, compact peers BEP 23/7) run by seed-mode agents.

Owns the announce protocol: parsing an announce, deciding whether this tracker serves its infohash, and the
bencoded answer. Who may hold how many entries lives in :mod:`peertable`, which peers an answer holds in
:mod:`peermix` (the asker's own address and prefix first, then mixed so no single source dominates).

It tracks only infohashes it has reason to know: ``known`` (a seam given by the agent) says which, typically the
torrents of the manifests the agent holds, the official images among them. Any other infohash gets a bencoded
``failure reason`` and costs nothing: no table is created for it. Agents name their farm in the announce URL
(``/announce?farm=<id>``, libtorrent appends its own parameters); the claim is not checked and only breaks ties.
``Tracker.announce`` is pure (clock passed in); ``Tracker.handle`` adapts it to the HTTP server. It must not
know libtorrent.
"""

from __future__ import annotations

import random
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..config.schema import TrackerSection
from ..formats.bencoding import bencode
from ..http.server import Request, Response
from .peermix import mix
from .peertable import PeerTable, packed

MAX_TORRENTS = 10_000
"""Torrents with entries at once; past it the torrent announced least recently is forgotten (``known`` bounds
them first: only torrents of manifests the agent holds get a table)."""
DEFAULT_NUMWANT = 50


class AnnounceError(ValueError):
    """A malformed announce; answered with a bencoded ``failure reason`` and status 400."""


class UnknownTorrent(AnnounceError):
    """A well-formed announce for an infohash this tracker does not serve; answered 200 with ``failure reason``
    (libtorrent shows a 200's reason to its user, and drops the body of any other status)."""


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
class Tracker:
    known: Callable[[bytes], bool]
    """Whether an announced (20-byte) infohash is one this tracker serves; see :func:`known_among`."""
    interval: int = TrackerSection.interval_s
    clock: Callable[[], float] | None = None
    rng: random.Random = field(default_factory=random.Random)
    committed: Callable[[bytes], bool] | None = None
    """Whether the seed running this tracker is fetching an infohash right now: it then counts as ``complete``
    (a seed fetches every chunk of an image it takes on), so nodes behind NAT routers, which may reach it only
    through a farm-mate, wait for it rather than ask the hub."""
    _torrents: OrderedDict[bytes, PeerTable] = field(default_factory=OrderedDict)

    def announce(self, request: Announce, now: float) -> dict[bytes, object]:
        """Record ``request`` and return the tracker response dict; ``UnknownTorrent`` for an infohash not served."""
        if not self.known(request.info_hash):
            raise UnknownTorrent("unknown torrent: this tracker serves only the torrents of the grid's images")
        table = self._torrents.get(request.info_hash)
        if table is None:
            if len(self._torrents) >= MAX_TORRENTS:
                self._torrents.popitem(last=False)
            table = self._torrents[request.info_hash] = PeerTable()
        else:
            self._torrents.move_to_end(request.info_hash)
        table.expire(now - 2.5 * self.interval)
        address = packed(request.ip)
        if request.event == "stopped":
            table.drop(address, request.peer_id)
        else:
            table.put(address, request.peer_id, request.port, request.left, request.farm, now)
        # Behind a NAT router every host of a farm announces from the router's address, most with the same port:
        # the mix lists one endpoint once (entries are kept by peer id, so hosts sharing an address with distinct
        # ports, port mappings, are all listed).
        chosen = mix(table, address, request.peer_id, request.port, request.numwant, self.rng, request.farm)
        committed = bool(self.committed and self.committed(request.info_hash))
        response: dict[bytes, object] = {
            b"interval": self.interval,
            b"min interval": max(1, self.interval // 4),
            b"complete": table.seeds + committed,
            b"incomplete": len(table) - table.seeds,
            b"peers": b"".join(p.compact for p in chosen if len(p.address) == 4),
        }
        v6 = b"".join(p.compact for p in chosen if len(p.address) == 16)
        if v6:
            response[b"peers6"] = v6
        if not table:
            del self._torrents[request.info_hash]
        return response

    def peers_of(self, info_hash: bytes) -> list[tuple[str, int]]:
        table = self._torrents.get(info_hash)
        return [(p.ip, p.port) for p in table.entries()] if table is not None else []

    @property
    def torrents(self) -> int:
        """Torrents with a table (what an unknown infohash must never add to)."""
        return len(self._torrents)

    async def handle(self, request: Request) -> Response:
        import trio

        if request.path != "/announce" or request.method != "GET":
            return _failure("only GET /announce is served here", 404)
        try:
            announce = parse_announce(request.raw_query, request.client[0])
            body = bencode(self.announce(announce, (self.clock or trio.current_time)()))
        except UnknownTorrent as error:
            return _failure(str(error), 200)
        except AnnounceError as error:
            return _failure(str(error), 400)
        return Response(200, [("content-type", "text/plain")], body)


def known_among(infohashes: Callable[[], Iterable[str | None]]) -> Callable[[bytes], bool]:
    """A ``known`` seam over the hex infohashes ``infohashes()`` yields (``None`` items are skipped).

    A v2 infohash is announced truncated to 20 bytes, so an announced hash is known when one of them starts with
    it. The iterable is read at each announce (the agent's manifests change while it runs).
    """

    def known(info_hash: bytes) -> bool:
        wanted = info_hash.hex()
        return any(h is not None and h.startswith(wanted) for h in infohashes())

    return known


def _failure(reason: str, status: int) -> Response:
    return Response(status, [("content-type", "text/plain")], bencode({b"failure reason": reason.encode()}))


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
