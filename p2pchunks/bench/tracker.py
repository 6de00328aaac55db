"""``p2pchunks bench tracker``: how many announces a seed's tracker sustains, and what floods cost it.

Everything goes over the real HTTP server on loopback, from distinct source addresses in 127.0.0.0/8:

1. throughput: keep-alive clients, each from its own address, re-announcing into a swarm of honest peers;
2. three floods of 100,000 announces each, against a fresh tracker holding 20 honest peers (two public addresses
   in each of ten /24s): random unknown infohashes from one address; fresh peer ids and ports into the honest
   torrent from one address (claiming the honest farm); the same from the 254 addresses of one /24. For each:
   the tracker's memory growth (tracemalloc: what the flood left allocated), its table size, and the share of the
   peers handed to honest nodes afterwards that belong to the stranger (goal: at most 10 %).

:class:`Announcer` (a keep-alive HTTP/1.1 client bound to one source address) is also what the flood tests use.
"""

from __future__ import annotations

import ipaddress
import os
import random
import time
import tracemalloc
import urllib.parse
from collections.abc import Callable
from types import TracebackType
from typing import Any

import h11
import trio

from ..formats.bencoding import bdecode
from ..http.server import serve_http
from ..swarm.tracker import Tracker

HONEST_FARM = "farm-7"


def announce_query(
    info_hash: bytes, peer_id: bytes, port: int, *, left: int = 1, numwant: int = 50, event: str = "", farm: str = ""
) -> str:
    fields: list[tuple[str, str]] = [
        ("info_hash", urllib.parse.quote_from_bytes(info_hash)),
        ("peer_id", urllib.parse.quote_from_bytes(peer_id)),
        ("port", str(port)),
        ("left", str(left)),
        ("numwant", str(numwant)),
    ]
    if event:
        fields.append(("event", event))
    if farm:
        fields.append(("farm", urllib.parse.quote(farm)))
    return "&".join(f"{name}={value}" for name, value in fields)


class Announcer:
    """One keep-alive HTTP/1.1 connection to a tracker from ``source`` (an address of this host)."""

    def __init__(self, source: str, host: str, port: int) -> None:
        self.source, self.host, self.port = source, host, port
        self._sock: trio.socket.SocketType | None = None
        self._conn = h11.Connection(h11.CLIENT)

    async def __aenter__(self) -> Announcer:
        sock = trio.socket.socket()
        await sock.bind((self.source, 0))
        await sock.connect((self.host, self.port))
        self._sock = sock
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._sock is not None:
            self._sock.close()

    async def announce(self, query: str) -> tuple[int, dict[bytes, Any]]:
        """GET /announce?``query``: (status, the decoded body)."""
        assert self._sock is not None, "use Announcer as an async context manager"
        if self._conn.our_state is h11.DONE:
            self._conn.start_next_cycle()
        head = h11.Request(method="GET", target=f"/announce?{query}", headers=[("host", self.host)])
        await self._sock.send(self._conn.send(head) + (self._conn.send(h11.EndOfMessage()) or b""))
        status, body = 0, b""
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                self._conn.receive_data(await self._sock.recv(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the tracker closed the connection")
        decoded = bdecode(body)
        assert isinstance(decoded, dict)
        return status, decoded


def compact_ips(peers: bytes) -> list[str]:
    return [str(ipaddress.ip_address(peers[i : i + 4])) for i in range(0, len(peers), 6)]


def honest_addresses(count: int = 20, per_prefix: int = 2) -> list[str]:
    """``count`` honest public addresses, ``per_prefix`` in each /24: 127.1.0.1, 127.1.0.2, 127.2.0.1, ..."""
    return [f"127.{1 + i // per_prefix}.0.{1 + i % per_prefix}" for i in range(count)]


async def stranger_share(
    host: str, port: int, info_hash: bytes, honest: list[str], is_stranger: Callable[[str], bool]
) -> tuple[float, int]:
    """Every honest peer re-announces; (share of the peers handed to them that are the stranger's, peers handed)."""
    handed = strangers = 0
    for ip in honest:
        async with Announcer(ip, host, port) as client:
            status, reply = await client.announce(announce_query(info_hash, ip.encode(), 6881, farm=HONEST_FARM))
        if status != 200 or b"peers" not in reply:
            raise RuntimeError(f"an honest announce from {ip} was refused: {status} {reply!r}")
        ips = compact_ips(reply[b"peers"])
        handed += len(ips)
        strangers += sum(1 for ip_ in ips if is_stranger(ip_))
    return strangers / max(1, handed), handed


async def _flood(
    host: str, port: int, sources: list[str], count: int, query: Callable[[int], str]
) -> tuple[int, float]:
    """``count`` announces spread over ``sources`` (one keep-alive connection each): (answers with peers, seconds)."""
    answered = 0
    per_source = -(-count // len(sources))
    started = time.perf_counter()

    async def one(k: int, source: str) -> None:
        nonlocal answered
        async with Announcer(source, host, port) as client:
            for i in range(k * per_source, min(count, (k + 1) * per_source)):
                _, reply = await client.announce(query(i))
                answered += b"peers" in reply

    async with trio.open_nursery() as nursery:
        for k, source in enumerate(sources):
            nursery.start_soon(one, k, source)
    return answered, time.perf_counter() - started


async def bench_tracker(flood: int = 100_000, seconds: float = 5.0, clients: int = 8) -> dict[str, Any]:
    """All the figures of the module docstring, as one dict."""
    known = bytes(range(20))
    figures: dict[str, Any] = {"flood_announces": flood}
    figures["throughput"] = await _throughput(known, seconds, clients)
    rng = random.Random(16)
    cases: dict[str, tuple[list[str], Callable[[int], str], Callable[[str], bool]]] = {
        "unknown_infohashes_one_address": (
            ["127.66.0.1"],
            lambda i: announce_query(os.urandom(20), os.urandom(20), 6881),
            lambda ip: ip.startswith("127.66."),
        ),
        "one_address": (
            ["127.66.0.1"],
            lambda i: announce_query(known, os.urandom(20), rng.randrange(1, 65536), farm=HONEST_FARM),
            lambda ip: ip.startswith("127.66."),
        ),
        "one_slash24": (
            [f"127.77.0.{k}" for k in range(1, 255)],
            lambda i: announce_query(known, os.urandom(20), rng.randrange(1, 65536), farm=HONEST_FARM),
            lambda ip: ip.startswith("127.77.0."),
        ),
    }
    for name, (sources, query, is_stranger) in cases.items():
        figures[name] = await _flood_case(known, flood, sources, query, is_stranger)
    return figures


async def _throughput(known: bytes, seconds: float, clients: int) -> dict[str, Any]:
    tracker = Tracker({known}.__contains__, rng=random.Random(1))
    honest = honest_addresses(200, per_prefix=4)
    counts = [0] * clients
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, tracker.handle, "127.0.0.1", 0)

        async def client(k: int) -> None:
            async with Announcer(f"127.{100 + k}.0.1", "127.0.0.1", port) as announcer:
                i = k
                while True:
                    ip = honest[i % len(honest)]  # peer ids of a 200-peer swarm; the address is the client's
                    status, _ = await announcer.announce(announce_query(known, ip.encode(), 6881))
                    assert status == 200
                    counts[k] += 1
                    i += clients

        with trio.move_on_after(seconds):
            async with trio.open_nursery() as clients_nursery:
                for k in range(clients):
                    clients_nursery.start_soon(client, k)
        nursery.cancel_scope.cancel()
    return {"clients": clients, "seconds": seconds, "announces_per_s": round(sum(counts) / seconds)}


async def _flood_case(
    known: bytes, flood: int, sources: list[str], query: Callable[[int], str], is_stranger: Callable[[str], bool]
) -> dict[str, Any]:
    tracker = Tracker({known}.__contains__, rng=random.Random(2))
    honest = honest_addresses()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, tracker.handle, "127.0.0.1", 0)
        for ip in honest:
            async with Announcer(ip, "127.0.0.1", port) as client:
                await client.announce(announce_query(known, ip.encode(), 6881, farm=HONEST_FARM))
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        answered, took = await _flood("127.0.0.1", port, sources, flood, query)
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        share, handed = await stranger_share("127.0.0.1", port, known, honest, is_stranger)
        nursery.cancel_scope.cancel()
    return {
        "sources": len(sources),
        "answered_with_peers": answered,
        "announces_per_s": round(flood / took),
        "memory_growth_KiB": round(grown / 1024),
        "torrents": tracker.torrents,
        "entries": len(tracker.peers_of(known)),
        "handed_to_honest": handed,
        "stranger_share": round(share, 4),
    }
