"""The local HTTP API: routes → the agent's services, errors → status codes (``errors.http_status``, in one place).

Listens on loopback by default; on any other address it refuses to start without a token and then requires
``Authorization: Bearer <token>`` on every request. Routes:

    GET  /chunks/<id>[?job=N]    the chunk's verified bytes (cache, else peers, else hub); ``job``: the reader of
                                 streaming job N has it now (it may leave the cache)    HEAD: 200 if cached, else 404
    POST /fetch  {"manifest": ref, "wait": false, "stream": false}   fetch a whole image: 202 {"job": id}
    POST /warm   {"manifest": ref, "pin": "official"|"user"|"none"}                 same, pinned
    POST /fill   {"manifest": ref, "quota_bytes": n}   fill the node's rfs cache with the image's plaintext
                                 (waits; the report); the quota, if given, lowers rfs.quota_bytes for this fill
    GET  /jobs/<n>[?since=K]     a job's progress and report (``since``: the chunks available from position K)
    GET  /manifests/<ref>        a known manifest (bencoded)
    GET  /cache?limit=N          cache entries (JSON);  POST /cache/pin|unpin {"chunk"|"manifest", "pin"}
    POST /cache/gc {"dry_run": true, "force": false}
    GET  /status                 JSON;  GET /metrics  Prometheus text

Must not know libtorrent or the policy: it calls the services it is given.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from ..cache.store import ChunkCache
from ..config.schema import split_hostport
from ..errors import BadConfig, BadRequest, ManifestNotFound, P2PChunksError, http_status
from ..http.messages import error_response
from ..http.server import Request, Response, json_response
from ..ids import validate_chunk_id
from ..policy.eviction import Pin, explain
from .datapath import DataPath
from .jobs import JobTable, job_json
from .manifests import ManifestBook
from .metrics import AgentStats

MAX_BODY = 64 * 1024
MAX_LIST = 1_000_000
MAX_REF = 4096
NAME_MAX = 255


@dataclass(frozen=True)
class ApiServices:
    datapath: DataPath
    jobs: JobTable
    manifests: ManifestBook
    cache: ChunkCache
    stats: AgentStats
    status: Callable[[], dict[str, Any]]
    metrics: Callable[[], bytes]
    fill: Callable[[str, int | None], Awaitable[dict[str, Any]]]
    token: str = ""


class Api:
    def __init__(self, services: ApiServices) -> None:
        self.s = services

    async def handle(self, request: Request) -> Response:
        if self.s.token and not self._authorized(request):
            return error_response(401, "missing or wrong bearer token")
        try:
            response = await self._route(request)
        except P2PChunksError as error:
            # name the chunk whatever the error (CacheFull, HubError, ...)
            chunk = _requested_chunk(request) or getattr(error, "chunk_id", None)
            response = error_response(http_status(error), str(error), chunk)
        self.s.stats.api_requests[str(response.status)] += 1
        return response

    def _authorized(self, request: Request) -> bool:
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.s.token}".encode())

    async def _route(self, request: Request) -> Response:
        method, parts = request.method, [p for p in request.path.split("/") if p]
        if len(parts) == 2 and parts[0] == "chunks" and method in ("GET", "HEAD"):
            return await self._chunk(parts[1], request, head=method == "HEAD")
        if parts == ["status"] and method == "GET":
            return json_response(200, self.s.status())
        if parts == ["metrics"] and method == "GET":
            return Response(200, [("content-type", "text/plain; version=0.0.4")], self.s.metrics())
        if parts in (["fetch"], ["warm"]) and method == "POST":
            return await self._fetch(_json_body(request), warm=parts[0] == "warm")
        if parts == ["fill"] and method == "POST":
            return await self._fill(_json_body(request))
        if len(parts) == 2 and parts[0] == "jobs" and method == "GET":
            return self._job(parts[1], request)
        if len(parts) == 2 and parts[0] == "manifests" and method == "GET":
            manifest = await self.s.manifests.resolve(parts[1])
            return Response(200, [("content-type", "application/x-bittorrent")], manifest.encode())
        if parts == ["cache"] and method == "GET":
            return await self._cache_list(request)
        if len(parts) == 2 and parts[0] == "cache" and method == "POST":
            return await self._cache_action(parts[1], _json_body(request))
        if parts and parts[0] in ("chunks", "status", "metrics", "fetch", "warm", "fill", "jobs", "manifests", "cache"):
            return error_response(405 if len(parts) <= 2 else 404, f"{method} {request.path} is not supported")
        return error_response(404, f"no route {request.path}")

    async def _chunk(self, chunk_id: str, request: Request, *, head: bool) -> Response:
        validate_chunk_id(chunk_id)
        headers = [("content-type", "application/octet-stream"), ("etag", f'"{chunk_id}"')]
        if head:
            size = await self.s.datapath.size_of(chunk_id)
            if size is None:
                return error_response(404, f"chunk {chunk_id} is not cached", chunk_id)
            return Response(200, [*headers, ("content-length", str(size))], b"")
        data = await self.s.datapath.chunk(chunk_id)
        self.s.stats.chunks_served += 1
        self.s.stats.bytes_served += len(data)
        raw_job = request.query.get("job")
        if raw_job is not None and _whole_number(raw_job):
            job = self.s.jobs.get(int(raw_job))
            if job is not None:
                job.consumed(chunk_id)
        return Response(200, headers, data)

    async def _fetch(self, body: dict[str, Any], *, warm: bool) -> Response:
        ref = _manifest_ref(body)
        pin = _pin(body.get("pin", "official" if warm else "none"))
        wait = _flag(body, "wait", False)
        stream = _flag(body, "stream", False)
        job = await self.s.jobs.start(ref, pin=pin, stream=stream)
        if wait:
            await job.done.wait()
            return json_response(200 if job.state == "done" else 502, job_json(job))
        return json_response(202, {"job": job.id, "manifest": job.manifest.manifest_id, "streaming": job.streaming})

    async def _fill(self, body: dict[str, Any]) -> Response:
        ref = _manifest_ref(body)
        quota = body.get("quota_bytes")
        if quota is not None and (not isinstance(quota, int) or isinstance(quota, bool) or quota < 0):
            raise BadRequest(f'"quota_bytes" must be a whole number of bytes ≥ 0, got {quota!r}')
        return json_response(200, await self.s.fill(ref, quota))

    def _job(self, raw: str, request: Request) -> Response:
        job = self.s.jobs.get(int(raw)) if _whole_number(raw) else None
        if job is None:
            return error_response(404, f"no job {raw!r}")
        since = request.query.get("since")
        if since is not None and not _whole_number(since):
            return error_response(400, "since must be a whole number")
        return json_response(200, job_json(job, since=None if since is None else int(since)))

    async def _cache_list(self, request: Request) -> Response:
        raw = request.query.get("limit", "100")
        if not _whole_number(raw):
            return error_response(400, "limit must be a whole number")
        limit = min(int(raw), MAX_LIST)
        entries = await trio.to_thread.run_sync(lambda: self.s.cache.entries(limit))
        usage = await trio.to_thread.run_sync(self.s.cache.usage)
        return json_response(
            200,
            {
                "usage": dataclasses.asdict(usage),
                "entries": [
                    {
                        "id": e.chunk_id,
                        "size": e.size,
                        "last_access": e.last_access,
                        "pin": e.pin.name.lower(),
                        "manifests": list(e.manifests),
                    }
                    for e in entries
                ],
            },
        )

    async def _cache_action(self, action: str, body: dict[str, Any]) -> Response:
        cache = self.s.cache
        if action == "gc":
            dry_run, force = _flag(body, "dry_run", True), _flag(body, "force", False)
            plan = await trio.to_thread.run_sync(lambda: cache.gc(dry_run=dry_run, force=force))
            return json_response(200, {"victims": [v.chunk_id for v in plan.victims], "explain": explain(plan)})
        if action not in ("pin", "unpin"):
            return error_response(404, f"no cache action {action!r}")
        pin = Pin.NONE if action == "unpin" else _pin(body.get("pin", "user"))
        if "chunk" in body:
            chunk_id = validate_chunk_id(str(body["chunk"]))
            await trio.to_thread.run_sync(cache.pin_chunk, chunk_id, pin)
            return json_response(200, {"chunk": chunk_id, "pin": pin.name.lower()})
        ref = body.get("manifest")
        if not isinstance(ref, str):
            raise BadRequest('body needs "chunk" or "manifest"')
        manifest = self.s.manifests.find(ref)
        if manifest is None:
            raise ManifestNotFound(f"no known manifest {ref!r}")
        await trio.to_thread.run_sync(cache.set_manifest_pin, manifest.manifest_id, pin)
        return json_response(200, {"manifest": manifest.manifest_id, "pin": pin.name.lower()})


def _requested_chunk(request: Request) -> str | None:
    """The ``<id>`` of a ``/chunks/<id>`` request (maybe not a valid id: ``_error`` checks)."""
    parts = [p for p in request.path.split("/") if p]
    return parts[1] if len(parts) == 2 and parts[0] == "chunks" else None


def _whole_number(raw: str) -> bool:
    """ASCII digits only (``"²".isdigit()`` is True), and few enough for SQLite's integers."""
    return raw.isascii() and raw.isdigit() and len(raw) <= 18


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    """A JSON boolean: ``"no"`` must not read as True (``"force": "no"`` would evict pinned chunks)."""
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{name!r} must be true or false, got {value!r}")
    return value


def _manifest_ref(body: dict[str, Any]) -> str:
    """The ``manifest`` of a request body: a name, id, path or URL the file system and the hub can take."""
    ref = body.get("manifest")
    if not isinstance(ref, str) or not ref:
        raise BadRequest('body needs "manifest": a name, id, path or URL')
    if len(ref) > MAX_REF or "\x00" in ref or any(len(part.encode()) > NAME_MAX for part in ref.split("/")):
        raise BadRequest(f"not a usable manifest reference: {ref[:80]!r}")
    return ref


def _pin(value: object) -> Pin:
    names = {"none": Pin.NONE, "user": Pin.USER, "official": Pin.OFFICIAL}
    if not isinstance(value, str) or value.lower() not in names:
        raise BadRequest(f"pin must be one of {', '.join(names)}, got {value!r}")
    return names[value.lower()]


def _json_body(request: Request) -> dict[str, Any]:
    if len(request.body) > MAX_BODY:
        raise BadRequest("request body too large")
    try:
        data = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"request body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def check_exposure(listen: str, token: str) -> None:
    """Refuse an API reachable from other hosts without a token."""
    host, _ = split_hostport(listen)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not token:
        raise BadConfig(f"api.listen {listen} is not loopback: set api.token")
