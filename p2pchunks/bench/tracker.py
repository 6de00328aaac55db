"""``p2pchunks bench tracker``: how many announces a seed's tracker sustains, and what floods cost it.

Everything goes over the real HTTP server on loopback, from distinct source addresses in 127.0.0.0/8:

1. throughput: a tracker alone in its process, keep-alive clients (each from its own address) re-announcing the
   peers of a 200-peer swarm;
2. three floods of 100,000 announces each, against a fresh tracker holding 20 honest peers (two public addresses
   in each of ten /24s): random unknown infohashes from one address; fresh peer ids and ports into the honest
   torrent from one address (claiming the honest farm); the same from the 254 addresses of one /24. The honest
   peers keep re-announcing meanwhile. For each: the tracker's memory growth (tracemalloc: what the flood left
   allocated; tracing slows the flood, hence ``announces_per_s_traced``), its table size, and the share of the
   peers handed to honest nodes afterwards that belong to the stranger (goal: at most 10 %).

:class:`Announcer` (a keep-alive HTTP/1.1 client bound to one source address) is also what the flood tests use.
It must not know the agent's internals: it runs the tracker alone.
"""

from __future__ import annotations

import ipaddress
import itertools
import multiprocessing
import os
import random
import time
import tracemalloc
import urllib.parse
from collections.abc import Callable
from multiprocessing.connection import Connection
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
    """``count`` announces spread over ``sources`` (keep-alive connections, at least 8 in all): (answers with peers,
    seconds)."""
    answered = 0
    connections = sources * max(1, -(-8 // len(sources)))
    per_connection = -(-count // len(connections))
    started = time.perf_counter()

    async def one(k: int, source: str) -> None:
        nonlocal answered
        async with Announcer(source, host, port) as client:
            for i in range(k * per_connection, min(count, (k + 1) * per_connection)):
                _, reply = await client.announce(query(i))
                answered += b"peers" in reply

    async with trio.open_nursery() as nursery:
        for k, source in enumerate(connections):
            nursery.start_soon(one, k, source)
    return answered, time.perf_counter() - started


async def bench_tracker(flood: int = 100_000, seconds: float = 5.0, clients: int = 8) -> dict[str, Any]:
    """All the figures of the module docstring, as one dict."""
    known = bytes(range(20))
    figures: dict[str, Any] = {"flood_announces": flood}
    figures["throughput"] = await trio.to_thread.run_sync(_throughput, known, seconds, clients)
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


def _serve(known: bytes, ready: Connection) -> None:
    """The tracker of the throughput run, alone in its process (the clients' own work would eat its CPU)."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            tracker = Tracker({known}.__contains__, rng=random.Random(1))
            ready.send(await nursery.start(serve_http, tracker.handle, "127.0.0.1", 0))

    trio.run(main)


def _throughput(known: bytes, seconds: float, clients: int) -> dict[str, Any]:
    """Announces per second of a tracker in its own process, ``clients`` keep-alive clients from their own addresses
    re-announcing the peers of a 200-peer swarm (50 /24s of four)."""
    parent, child = multiprocessing.get_context("spawn").Pipe()
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(known, child), daemon=True)
    server.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the tracker process did not start")
        port = int(parent.recv())
        honest = honest_addresses(200, per_prefix=4)
        counts = [0] * clients

        async def run() -> None:
            async def client(k: int) -> None:
                async with Announcer(f"127.{100 + k}.0.1", "127.0.0.1", port) as announcer:
                    for i in itertools.count(k, clients):
                        peer = honest[i % len(honest)].encode()
                        status, reply = await announcer.announce(announce_query(known, peer, 6881 + k))
                        if status != 200 or b"peers" not in reply:
                            raise RuntimeError(f"announce refused: {status} {reply!r}")
                        counts[k] += 1

            with trio.move_on_after(seconds):
                async with trio.open_nursery() as nursery:
                    for k in range(clients):
                        nursery.start_soon(client, k)

        trio.run(run)
    finally:
        server.terminate()
        server.join(10)
    return {"clients": clients, "seconds": seconds, "announces_per_s": round(sum(counts) / seconds)}


async def _flood_case(
    known: bytes, flood: int, sources: list[str], query: Callable[[int], str], is_stranger: Callable[[str], bool]
) -> dict[str, Any]:
    tracker = Tracker({known}.__contains__, rng=random.Random(2))
    honest = honest_addresses()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, tracker.handle, "127.0.0.1", 0)

        async def honest_swarm(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            """The honest peers re-announce every half interval (libtorrent: every interval), as long as it runs."""
            while True:
                for ip in honest:
                    async with Announcer(ip, "127.0.0.1", port) as client:
                        await client.announce(announce_query(known, ip.encode(), 6881, farm=HONEST_FARM))
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                await trio.sleep(tracker.interval / 2)

        await nursery.start(honest_swarm)
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
        "announces_per_s_traced": round(flood / took),
        "memory_growth_KiB": round(grown / 1024),
        "torrents": tracker.torrents,
        "entries": len(tracker.peers_of(known)),
        "handed_to_honest": handed,
        "stranger_share": round(share, 4),
    }
