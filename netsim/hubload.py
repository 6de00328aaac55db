"""Load on the reference hub: many keep-alive clients at once, how fairly it shares its egress cap among them, and
whether its control route (``GET /_stats``) answers meanwhile.

Owns the load generator (``measure``: one ``p2pchunks hub serve`` process, ``connections`` clients in this process,
each on its own keep-alive connection asking for the same chunk over and over) and what it reports
(:class:`HubLoad`: bytes each connection received during a measurement window that opens once every connection
has its first byte, and the latency of ``_stats`` probes sent on fresh connections during the window). It must not
know agents or netsim runs; it measures the hub alone, as a farm of many nodes would load it.

Clients speak HTTP/1.1 through h11 over trio sockets (no connection pool: one socket per client, as each agent's
hub client holds its own). A connection that never gets a byte during the window is *starving*; the fairness
figure is the ratio of the fastest connection's rate to the slowest's.
"""

from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import trio

from p2pchunks.hub.server import raise_open_files
from p2pchunks.ids import chunk_id_of, chunk_relpath

from .backends import LoopbackBackend, free_port

HOST = "127.0.0.1"
RECV_BYTES = 64 * 1024
PROBE_EVERY_S = 0.2
PROBE_TIMEOUT_S = 5.0


@dataclass
class HubLoad:
    """What ``measure`` saw. Rates are bytes per second during the window."""

    connections: int
    window_s: float
    cap_bps: float | None
    rates: list[float] = field(default_factory=list)
    """One per connection that was opened (a connection that could not be opened is in ``failed``)."""
    failed: list[str] = field(default_factory=list)
    stats_latency_s: list[float] = field(default_factory=list)
    stats_failures: list[str] = field(default_factory=list)
    all_started: bool = False
    """Every connection had received its first byte when the window opened (else ``start_timeout_s`` ran out)."""
    started_s: float = 0.0
    """From the first connection attempt until the window opened."""
    hub_inflight: int = 0
    """The hub's own count of data requests in flight, from the last ``_stats`` answer of the window."""

    @property
    def starving(self) -> int:
        return sum(1 for rate in self.rates if rate <= 0)

    @property
    def fairness(self) -> float:
        """Fastest over slowest connection (1.0: perfectly even; infinite when one starved)."""
        slowest = min(self.rates, default=0.0)
        return max(self.rates, default=0.0) / slowest if slowest > 0 else math.inf

    @property
    def jain(self) -> float:
        """Jain's fairness index of the rates: 1.0 when even, 1/n when one connection takes everything."""
        total = sum(self.rates)
        squares = sum(rate * rate for rate in self.rates)
        return total * total / (len(self.rates) * squares) if squares > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        rates = sorted(self.rates)
        latencies = sorted(self.stats_latency_s)
        return {
            "connections": self.connections,
            "opened": len(self.rates),
            "failed": self.failed[:10],
            "all_started": self.all_started,
            "started_s": round(self.started_s, 2),
            "window_s": self.window_s,
            "cap_bps": self.cap_bps,
            "total_bps": round(sum(rates), 1),
            "min_bps": round(rates[0], 1) if rates else None,
            "median_bps": round(statistics.median(rates), 1) if rates else None,
            "max_bps": round(rates[-1], 1) if rates else None,
            "max_over_min": None if not math.isfinite(self.fairness) else round(self.fairness, 3),
            "jain": round(self.jain, 4),
            "starving": self.starving,
            "hub_inflight": self.hub_inflight,
            "stats_probes": len(latencies) + len(self.stats_failures),
            "stats_failures": self.stats_failures[:10],
            "stats_latency_ms": {
                "median": round(statistics.median(latencies) * 1000, 1) if latencies else None,
                "max": round(latencies[-1] * 1000, 1) if latencies else None,
            },
        }


class _Window:
    """The measurement window: bytes count only between ``start`` and ``end`` (trio clock)."""

    def __init__(self) -> None:
        self.start = math.inf
        self.end = math.inf
        self.first_byte = 0
        """Connections that have received their first byte (the window opens when all have)."""
        self.all_started = trio.Event()
        self.probe_sent: float | None = None
        """When the probe now waiting for its answer was sent (None: none waits)."""


async def _client(target: str, port: int, index: int, got: list[int], window: _Window, connections: int) -> None:
    stream = await trio.open_tcp_stream(HOST, port)
    conn = h11.Connection(h11.CLIENT)
    first = True
    async with stream:
        while True:
            request = h11.Request(method="GET", target=target, headers=[("host", HOST)])
            await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(RECV_BYTES)
                    if not data:
                        raise OSError("the hub closed the connection")
                    conn.receive_data(data)
                elif isinstance(event, h11.Response) and event.status_code != 200:
                    raise OSError(f"the hub answered {event.status_code}")
                elif isinstance(event, h11.Data):
                    now = trio.current_time()
                    if window.start <= now < window.end:
                        got[index] += len(event.data)
                    if first:
                        first = False
                        window.first_byte += 1
                        if window.first_byte == connections:
                            window.all_started.set()
                elif isinstance(event, h11.EndOfMessage):
                    break
            conn.start_next_cycle()


async def _probe_stats(port: int) -> dict[str, Any]:
    import json

    stream = await trio.open_tcp_stream(HOST, port)
    conn = h11.Connection(h11.CLIENT)
    body = bytearray()
    async with stream:
        request = h11.Request(method="GET", target="/_stats", headers=[("host", HOST), ("connection", "close")])
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(RECV_BYTES))
            elif isinstance(event, h11.Response) and event.status_code != 200:
                raise OSError(f"_stats answered {event.status_code}")
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    stats: dict[str, Any] = json.loads(bytes(body))
    return stats


async def _prober(port: int, load: HubLoad, window: _Window) -> None:
    while True:
        sent = window.probe_sent = trio.current_time()
        try:
            with trio.fail_after(PROBE_TIMEOUT_S):
                stats = await _probe_stats(port)
        except (OSError, trio.TooSlowError, ValueError, h11.ProtocolError) as error:
            if window.start <= sent < window.end:
                load.stats_failures.append(f"{sent - window.start:.2f} s: {error!r}")
            window.probe_sent = None
            await trio.sleep(PROBE_EVERY_S)
            continue
        window.probe_sent = None
        if window.start <= sent < window.end:
            load.stats_latency_s.append(trio.current_time() - sent)
            load.hub_inflight = int(stats.get("inflight", 0))
        await trio.sleep(max(0.0, sent + PROBE_EVERY_S - trio.current_time()))


async def load_hub(
    port: int, target: str, connections: int, window_s: float, cap_bps: float | None, start_timeout_s: float = 60.0
) -> HubLoad:
    """Open ``connections`` keep-alive clients of the hub on ``port``, all asking for ``target``; once every one has
    its first byte (or ``start_timeout_s`` passed), count what each receives for ``window_s``."""
    load = HubLoad(connections=connections, window_s=window_s, cap_bps=cap_bps)
    got = [0] * connections
    opened = [False] * connections
    window = _Window()

    async def one(index: int) -> None:
        try:
            opened[index] = True
            await _client(target, port, index, got, window, connections)
        except (OSError, h11.ProtocolError) as error:
            load.failed.append(f"connection {index}: {error!r}")
            opened[index] = False

    async with trio.open_nursery() as nursery:
        for index in range(connections):
            nursery.start_soon(one, index)
        nursery.start_soon(_prober, port, load, window)
        begun = trio.current_time()
        with trio.move_on_after(start_timeout_s):
            await window.all_started.wait()
        window.start = trio.current_time()
        load.started_s = window.start - begun
        load.all_started = window.all_started.is_set()
        window.end = window.start + window_s
        await trio.sleep_until(window.end)
        nursery.cancel_scope.cancel()
    if window.probe_sent is not None and window.probe_sent >= window.start:
        load.stats_failures.append(f"{window.probe_sent - window.start:.2f} s: no answer by the end of the window")
    load.rates = [got[i] / window_s for i in range(connections) if opened[i]]
    return load


def _chunk(root: Path, size: int) -> str:
    data = os.urandom(size)
    chunk_id = chunk_id_of(data)
    path = root / "chunks" / chunk_relpath(chunk_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return chunk_id


async def measure(
    connections: int = 1000,
    *,
    rate_mbps: float | None = 100.0,
    latency_ms: float = 50.0,
    window_s: float = 6.0,
    chunk_bytes: int = 1024 * 1024,
    workdir: Path | None = None,
) -> HubLoad:
    """Start ``p2pchunks hub serve`` (its own process) and load it with ``connections`` clients."""
    limit = raise_open_files(connections + 256)
    if limit < connections + 64:
        raise OSError(f"this process may open {limit} files: too few for {connections} connections")
    with tempfile.TemporaryDirectory(prefix="hubload-") as tmp:
        root = Path(workdir or tmp) / "hub"
        chunk_id = _chunk(root, chunk_bytes)
        port = free_port(HOST)
        argv = [sys.executable, "-m", "p2pchunks", "hub", "serve", "--root", str(root), "--listen", f"{HOST}:{port}"]
        argv += ["--latency-ms", str(latency_ms)] + (["--rate-mbps", str(rate_mbps)] if rate_mbps else [])
        log = root.parent / "hub.log"
        hub = LoopbackBackend().spawn(None, argv, log)
        try:
            with trio.fail_after(30):
                while True:
                    try:
                        await _probe_stats(port)
                        break
                    except OSError:
                        if hub.poll() is not None:
                            raise OSError(f"the hub exited: {log.read_text(errors='replace')[-2000:]}") from None
                        await trio.sleep(0.1)
            cap = rate_mbps * 1e6 / 8 if rate_mbps else None
            return await load_hub(port, f"/chunks/{chunk_id}", connections, window_s, cap)
        finally:
            _stop(hub)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
