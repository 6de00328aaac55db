"""The reference hub: a hub root's chunks and manifests over HTTP, with knobs that make it look far away.

Owns: the hub's routes (``/chunks/<ab>/<cd>/<id>`` as a BEP 19 web seed asks, ``/chunks/<id>``,
``/manifests/<name>.p2p``, ``/manifests/``), single-range requests per RFC 9110 (206/416), ETag and
If-None-Match, the emulation knobs (latency before each answer, a total egress cap shared by every client, an
outage switch) and the per-client accounting in :class:`~p2pchunks.hub.stats.HubStats`.
Must not know: agents, caches, torrents. It serves files from a directory laid out as docs/architecture.md says.

Only the data plane (chunks and manifests) is slowed, switched off by ``/_admin/down`` and counted in the stats;
the control routes (``/_stats``, ``/_stats/reset``, ``/_admin/up|down``) answer at once, so a harness can
watch and steer the hub without disturbing what it measures.

Scale. A farm of N nodes holds N keep-alive connections or more (each agent's hub client, its web seed), and a grid
after a release thousands: the hub accepts ``max_connections`` (4,096) at once, and ``p2pchunks hub serve`` raises
its own open-files limit to match, so a connection never waits in the kernel's backlog behind idle ones (that is
what kept ``_stats`` from answering for seconds at 64 nodes, when the cap was the HTTP server's default 512). The
egress cap is shared fairly: every paced body pays for each ``PACED_PIECE_BYTES`` piece in one token bucket, in the
order the pieces were asked for (``ratelimit``), so N busy connections take turns a piece each and none starves;
nothing holds a lock while it sends. Paths never reach the file system unvalidated: a
chunk id is 32 or 64 hex digits and a manifest name a short ``[A-Za-z0-9._@+-]`` word without ``..``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Protocol

import trio

from ..config.schema import join_hostport
from ..errors import BadChunkId
from ..extras import missing_extra
from ..http.messages import error_response
from ..http.server import FileBody, Request, Response, ServerLimits, json_response, serve_http
from ..ids import chunk_relpath, validate_chunk_id
from .ratelimit import TokenBucket
from .stats import HubStats

PACED_PIECE_BYTES = 16 * 1024
"""The unit of the egress cap's round robin: small enough that 1,000 connections take a turn each within a few
seconds at 25 Mbit/s, large enough that pacing costs little CPU (one bucket reservation and one send per piece)."""
MAX_CONNECTIONS = 4096
_MANIFEST_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}\Z")
_RANGE_SPEC = re.compile(r"\A([0-9]*)-([0-9]*)\Z")
_DATA_ROUTES = ("chunks", "manifests")


# ---- Range (RFC 9110 §14), pure ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RangeDecision:
    """How to answer a Range header: 200 (whole), 206 (``start``..``stop``, stop exclusive) or 416."""

    status: int
    start: int = 0
    stop: int = 0


def _position(digits: str) -> int:
    return int(digits) if len(digits) <= 19 else 10**19  # beyond any file; avoids int()'s digit limit


def _one_range(spec: str, size: int) -> RangeDecision | None:
    """The answer for one range-spec, or None when it is not a valid range-spec at all."""
    match = _RANGE_SPEC.match(spec)
    if match is None or match.group(0) == "-":
        return None
    first, last = match.groups()
    if first:
        start = _position(first)
        stop = size if not last else _position(last) + 1
        if last and stop <= start:
            return None  # last-pos < first-pos: invalid
        if start >= size:
            return RangeDecision(416)
        return RangeDecision(206, start, min(stop, size))
    suffix = _position(last)
    if suffix == 0 or size == 0:
        return RangeDecision(416)
    return RangeDecision(206, max(0, size - suffix), size)


def decide_range(header: str | None, size: int) -> RangeDecision:
    """One satisfiable byte range → 206; invalid or unsatisfiable → 416; none, another unit, or several → 200."""
    if header is None:
        return RangeDecision(200, 0, size)
    unit, equals, specs_text = header.partition("=")
    if unit.strip().lower() != "bytes":
        return RangeDecision(200, 0, size)  # a unit we do not know: MUST ignore (RFC 9110 §14.2)
    specs = [s.strip() for s in specs_text.split(",") if s.strip()] if equals else []
    decisions = [_one_range(spec, size) for spec in specs]
    if not decisions or any(d is None for d in decisions):
        return RangeDecision(416)
    if len(decisions) > 1:  # several ranges: served whole, if any of them is satisfiable
        return RangeDecision(200, 0, size) if any(d and d.status == 206 for d in decisions) else RangeDecision(416)
    decision = decisions[0]
    assert decision is not None
    return decision


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Weak comparison of an If-None-Match list against ``etag`` (RFC 9110 §13.1.2)."""
    if if_none_match.strip() == "*":
        return True
    tags = (t.strip().removeprefix("W/") for t in if_none_match.split(","))
    return etag.removeprefix("W/") in tags


# ---- the hub ----------------------------------------------------------------------------------------------


class _Switchable(Protocol):
    available: bool


@dataclass(frozen=True)
class _Manifest:
    key: tuple[int, int, int]  # (inode, size, mtime_ns): a republished file is a new key
    data: bytes
    etag: str


class HubServer:
    def __init__(
        self,
        root: Path,
        *,
        latency_ms: float = 0,
        rate_mbps: float | None = None,
        stats: HubStats | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.root = Path(root)
        self.max_connections = max_connections
        self.latency_ms = latency_ms
        self.rate_mbps = rate_mbps
        self.stats = stats if stats is not None else HubStats()
        self.available = True
        self.egress = TokenBucket(rate_mbps * 1e6 / 8, burst=PACED_PIECE_BYTES) if rate_mbps else None
        """The total egress cap (None: unlimited), shareable with a zdb server of the same hub. Its burst is one piece,
        as a link's: a bucket that let a tenth of a second of bytes go at once after a pause would make the first
        chunk after it look several times faster than the link, and the agents size their hub window on exactly that
        measurement (transfer time per chunk)."""
        self.linked: list[_Switchable] = []
        """Other servers of the same hub that ``/_admin/down|up`` switches too."""
        self._manifests: dict[str, _Manifest] = {}
        self._counting: dict[int, AbstractContextManager[None]] = {}
        self._streamed: dict[int, list[int]] = {}
        """Per request in flight: body bytes already counted in ``stats.bytes_out`` while it was paced."""

    async def handle(self, request: Request) -> Response:
        """Answer one request (routes in the module docstring)."""
        parts = request.path.split("/")[1:]
        method = request.method
        if parts[0] not in _DATA_ROUTES:
            return self._control(method, parts)
        if self.latency_ms > 0:
            await trio.sleep(self.latency_ms / 1000)
        if not self.available:
            return error_response(503, "hub is down (outage emulation)")
        if parts[0] == "manifests" and parts[1:] in ([], [""]):
            return await self._list_manifests() if method in ("GET", "HEAD") else _not_allowed()
        if method not in ("GET", "HEAD"):
            return _not_allowed()
        if parts[0] == "chunks" and len(parts) in (2, 4):
            return self._chunk(request, parts[1:])
        if parts[0] == "manifests" and len(parts) == 2:
            return await self._manifest(request, parts[1])
        return error_response(404, f"no route {request.path[:200]}")

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; ``task_status.started(port actually bound)``."""
        limits = ServerLimits(max_connections=self.max_connections)
        await serve_http(
            self._handle_counted, host, port, limits=limits, on_sent=self._on_sent, task_status=task_status
        )

    # ---- accounting: a data request is in flight from its arrival until its last byte left ----

    async def _handle_counted(self, request: Request) -> Response:
        if request.path.split("/")[1] not in _DATA_ROUTES:
            return await self.handle(request)
        counting = self.stats.request(request.client[0])
        counting.__enter__()
        self._counting[id(request)] = counting
        try:
            return await self.handle(request)
        except BaseException:
            self._finish(request)
            raise

    def _on_sent(self, request: Request, nbytes: int) -> None:
        streamed = self._streamed.pop(id(request), [0])[0]
        if self._finish(request):
            self.stats.sent(request.client[0], nbytes, streamed)

    def _finish(self, request: Request) -> bool:
        counting = self._counting.pop(id(request), None)
        if counting is not None:
            counting.__exit__(None, None, None)
        return counting is not None

    # ---- routes ----

    def _control(self, method: str, parts: list[str]) -> Response:
        if parts == ["_stats"] and method == "GET":
            return json_response(200, self.stats.as_json())
        if parts == ["_stats", "reset"] and method == "POST":
            self.stats.reset()
            return json_response(200, {"reset": True})
        if parts in (["_admin", "down"], ["_admin", "up"]) and method == "POST":
            self.available = parts[1] == "up"
            for other in self.linked:
                other.available = self.available
            return json_response(200, {"available": self.available})
        if parts[0] in ("_stats", "_admin") and len(parts) <= 2:
            return error_response(405 if method != "GET" or parts[0] != "_stats" else 404, "not supported")
        return error_response(404, "no such route")

    def _chunk(self, request: Request, parts: list[str]) -> Response:
        try:
            chunk_id = validate_chunk_id(parts[-1])
        except BadChunkId as error:
            return error_response(400, str(error))
        if len(parts) == 3 and (parts[0], parts[1]) != (chunk_id[0:2], chunk_id[2:4]):
            return error_response(404, f"chunk {chunk_id} is not under {parts[0]}/{parts[1]}", chunk_id)
        path = self.root / "chunks" / chunk_relpath(chunk_id)
        try:
            stat = path.stat()
        except OSError:
            return error_response(404, f"chunk {chunk_id} not found", chunk_id)
        return self._representation(request, f'"{chunk_id}"', stat.st_size, stat.st_mtime, path)

    async def _manifest(self, request: Request, filename: str) -> Response:
        name = filename.removesuffix(".p2p")
        if name == filename or _MANIFEST_NAME.match(name) is None or ".." in name:
            return error_response(404, f"no manifest {filename[:200]!r}")
        path = self.root / "manifests" / filename
        try:
            stat = path.stat()
            manifest = self._manifests.get(name)
            key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if manifest is None or manifest.key != key:
                data = await trio.to_thread.run_sync(path.read_bytes)
                manifest = _Manifest(key, data, f'"{hashlib.sha256(data).hexdigest()}"')
                self._manifests[name] = manifest
        except OSError:
            return error_response(404, f"no manifest {name!r}")
        return self._representation(request, manifest.etag, len(manifest.data), stat.st_mtime, manifest.data)

    async def _list_manifests(self) -> Response:
        def names() -> list[str]:
            folder = self.root / "manifests"
            return sorted(p.name.removesuffix(".p2p") for p in folder.glob("*.p2p")) if folder.is_dir() else []

        return json_response(200, await trio.to_thread.run_sync(names))

    def _representation(self, request: Request, etag: str, size: int, mtime: float, source: Path | bytes) -> Response:
        content_type = "application/octet-stream" if isinstance(source, Path) else "application/x-bittorrent"
        headers = [
            ("content-type", content_type),
            ("accept-ranges", "bytes"),
            ("etag", etag),
            ("last-modified", formatdate(mtime, usegmt=True)),
        ]
        if_none_match = request.headers.get("if-none-match")
        if if_none_match is not None and etag_matches(if_none_match, etag):
            return Response(304, headers)
        range_header = request.headers.get("range") if request.method == "GET" else None
        if_range = request.headers.get("if-range")
        if if_range is not None and if_range.strip() != etag:
            range_header = None  # the client's copy is stale: send the whole thing
        decision = decide_range(range_header, size)
        if decision.status == 416:
            return json_response(
                416, {"error": "range not satisfiable", "status": 416}, [("content-range", f"bytes */{size}")]
            )
        if decision.status == 206:
            headers.append(("content-range", f"bytes {decision.start}-{decision.stop - 1}/{size}"))
        length = decision.stop - decision.start
        headers.append(("content-length", str(length)))
        return Response(decision.status, headers, self._body(request, source, decision.start, length))

    def _body(
        self, request: Request, source: Path | bytes, start: int, length: int
    ) -> FileBody | bytes | AsyncIterator[bytes]:
        if self.egress is None:
            return FileBody(source, start, length) if isinstance(source, Path) else source[start : start + length]
        streamed = self._streamed.setdefault(id(request), [0])

        def progress(nbytes: int) -> None:
            streamed[0] += nbytes
            self.stats.streaming(nbytes)

        return _paced(self.egress, source, start, length, progress)


async def _paced(
    bucket: TokenBucket, source: Path | bytes, start: int, length: int, progress: Callable[[int], None]
) -> AsyncIterator[bytes]:
    """``length`` bytes of ``source`` from ``start``, in pieces, each paid for in ``bucket`` before it goes;
    ``progress(n)`` once a piece of ``n`` bytes has been taken to be sent (the last one is told by ``on_sent``)."""
    fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC) if isinstance(source, Path) else None
    try:
        position, end = start, start + length
        previous = 0
        while position < end:
            if previous:
                progress(previous)  # asked for the next piece: the server has handed the previous one over
            size = min(PACED_PIECE_BYTES, end - position)
            if isinstance(source, bytes):
                piece = source[position : position + size]
            else:
                assert fd is not None
                piece = os.pread(fd, size, position)
            if not piece:
                raise OSError("the body ended before its declared length")
            await bucket.acquire(len(piece))
            yield piece
            position += len(piece)
            previous = len(piece)
    finally:
        if fd is not None:
            os.close(fd)


def _not_allowed() -> Response:
    response = error_response(405, "method not allowed")
    response.headers.append(("allow", "GET, HEAD"))
    return response


def raise_open_files(wanted: int) -> int:
    """Raise this process's soft limit of open files towards ``wanted`` (never above the hard limit, never down);
    return the soft limit now in force. One connection is one file: 1,000 nodes need more than the usual 1,024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted if soft == resource.RLIM_INFINITY else int(soft)
    new = wanted if hard == resource.RLIM_INFINITY else min(wanted, int(hard))
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


def _base_url(host: str, port: int) -> str:
    return f"http://{join_hostport(host, port)}/"


@asynccontextmanager
async def open_hub_server(
    root: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    latency_ms: float = 0,
    rate_mbps: float | None = None,
    stats: HubStats | None = None,
    max_connections: int = MAX_CONNECTIONS,
) -> AsyncIterator[tuple[HubServer, str]]:
    """A hub serving ``root`` for the duration of the block: ``(server, "http://host:port/")``."""
    server = HubServer(root, latency_ms=latency_ms, rate_mbps=rate_mbps, stats=stats, max_connections=max_connections)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.serve, host, port)
        yield server, _base_url(host, bound)
        nursery.cancel_scope.cancel()


async def serve_hub_forever(
    root: Path,
    listen: str,
    zdb: str = "",
    latency_ms: float = 0.0,
    rate_mbps: float | None = None,
    *,
    task_status: trio.TaskStatus[tuple[int, int | None]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The ``p2pchunks hub serve`` command: HTTP on ``listen`` and, given ``zdb`` (``host:port``), zdb too.

    Both protocols share one HubStats, one egress cap and one outage switch (``/_admin/down`` stops both).
    ``task_status.started((http port, zdb port or None))``.
    """
    from ..config.schema import split_hostport

    server = HubServer(root, latency_ms=latency_ms, rate_mbps=rate_mbps)
    raise_open_files(server.max_connections + 256)
    host, port = split_hostport(listen)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.serve, host, port)
        print(f"hub serving {root} at {_base_url(host, bound)}", flush=True)
        zdb_bound: int | None = None
        if zdb:
            try:
                from ..zos.zdbserver import HubRootBackend, ZdbServer  # the zos extra
            except ImportError as error:
                raise missing_extra(error, "serving the hub over zdb (--zdb)") from None
            zdb_server = ZdbServer(HubRootBackend(root), latency_ms=latency_ms, stats=server.stats)
            if server.egress is not None:
                zdb_server.egress = server.egress
            server.linked.append(zdb_server)
            zdb_host, zdb_port = split_hostport(zdb)
            zdb_bound = await nursery.start(zdb_server.serve, zdb_host, zdb_port)
            print(f"hub serving {root} over zdb at {zdb_host}:{zdb_bound}", flush=True)
        task_status.started((bound, zdb_bound))
