"""The local HTTP API: routes → agent calls, errors → status codes (``errors.http_status``, in one place).

Listens on loopback by default; on any other address it refuses to start without a token and then requires
``Authorization: Bearer <token>`` on every request. Routes:

    GET  /chunks/<id>            the chunk's bytes (cache, else peers, else hub)    HEAD: 200 if cached, else 404
    POST /fetch  {"manifest": ref, "wait": false}   fetch a whole image: 202 {"job": id} (200 + report if wait)
    POST /warm   {"manifest": ref, "pin": "official"|"user"|"none"}                 same, pinned
    POST /fill   {"manifest": ref}      fill the node's rfs cache with the image's plaintext (waits; the report)
    GET  /jobs/<n>               a job's progress and report
    GET  /manifests/<ref>        a known manifest (bencoded)
    GET  /cache?limit=N          cache entries (JSON);  POST /cache/pin|unpin {"chunk"|"manifest", "pin"}
    POST /cache/gc {"dry_run": true, "force": false}
    GET  /status                 JSON;  GET /metrics  Prometheus text
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
from typing import TYPE_CHECKING, Any

import trio

from ..config.schema import split_hostport
from ..errors import BadConfig, BadManifest, ManifestNotFound, P2PChunksError, http_status
from ..http.server import FileBody, Request, Response, ServerLimits, json_response, serve_http
from ..ids import is_chunk_id, validate_chunk_id
from ..policy.eviction import Pin, explain
from .metrics import render_prometheus

if TYPE_CHECKING:
    from .fetchjob import Job
    from .node import Agent

MAX_BODY = 64 * 1024
MAX_LIST = 1_000_000
MAX_REF = 4096
NAME_MAX = 255


class Api:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.token = agent.config.api.token

    async def handle(self, request: Request) -> Response:
        if self.token and not self._authorized(request):
            return _error(401, "missing or wrong bearer token")
        try:
            response = await self._route(request)
        except P2PChunksError as error:
            # name the chunk whatever the error (CacheFull, HubError, ...)
            chunk = _requested_chunk(request) or getattr(error, "chunk_id", None)
            response = _error(http_status(error), str(error), chunk)
        self.agent.stats.api_requests[str(response.status)] += 1
        return response

    def _authorized(self, request: Request) -> bool:
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    async def _route(self, request: Request) -> Response:
        method, parts = request.method, [p for p in request.path.split("/") if p]
        if len(parts) == 2 and parts[0] == "chunks" and method in ("GET", "HEAD"):
            return await self._chunk(parts[1], head=method == "HEAD")
        if parts == ["status"] and method == "GET":
            return json_response(200, agent_status(self.agent))
        if parts == ["metrics"] and method == "GET":
            body = render_prometheus(self.agent.stats, self.agent.gauges)
            return Response(200, [("content-type", "text/plain; version=0.0.4")], body)
        if parts in (["fetch"], ["warm"]) and method == "POST":
            return await self._fetch(_json_body(request), warm=parts[0] == "warm")
        if parts == ["fill"] and method == "POST":
            return await self._fill(_json_body(request))
        if len(parts) == 2 and parts[0] == "jobs" and method == "GET":
            return self._job(parts[1])
        if len(parts) == 2 and parts[0] == "manifests" and method == "GET":
            manifest = await self.agent.manifest(parts[1])
            return Response(200, [("content-type", "application/x-bittorrent")], manifest.encode())
        if parts == ["cache"] and method == "GET":
            return await self._cache_list(request)
        if len(parts) == 2 and parts[0] == "cache" and method == "POST":
            return await self._cache_action(parts[1], _json_body(request))
        if parts and parts[0] in ("chunks", "status", "metrics", "fetch", "warm", "fill", "jobs", "manifests", "cache"):
            return _error(405 if len(parts) <= 2 else 404, f"{method} {request.path} is not supported")
        return _error(404, f"no route {request.path}")

    async def _chunk(self, chunk_id: str, *, head: bool) -> Response:
        validate_chunk_id(chunk_id)
        headers = [("content-type", "application/octet-stream"), ("etag", f'"{chunk_id}"')]
        if head:
            if not await trio.to_thread.run_sync(self.agent.cache.has, chunk_id):
                return _error(404, f"chunk {chunk_id} is not cached", chunk_id)
            path, size = await trio.to_thread.run_sync(self.agent.cache.locate, chunk_id)
            return Response(200, [*headers, ("content-length", str(size))], b"")
        path, size = await self.agent.chunk(chunk_id)
        self.agent.stats.bytes_served_api += size
        return Response(200, headers, FileBody(path, 0, size))

    async def _fetch(self, body: dict[str, Any], *, warm: bool) -> Response:
        ref = _manifest_ref(body)
        pin = _pin(body.get("pin", "official" if warm else "none"))
        wait = _flag(body, "wait", False)
        job = await self.agent.fetch(ref, pin=pin)
        if wait:
            await job.done.wait()
            return json_response(200 if job.state == "done" else 502, job_json(job))
        return json_response(202, {"job": job.id, "manifest": job.manifest.manifest_id})

    async def _fill(self, body: dict[str, Any]) -> Response:
        ref = _manifest_ref(body)
        report = await self.agent.fill(ref)
        return json_response(200, dataclasses.asdict(report))

    def _job(self, raw: str) -> Response:
        job = self.agent.jobs.get(int(raw)) if _whole_number(raw) else None
        if job is None:
            return _error(404, f"no job {raw!r}")
        return json_response(200, job_json(job))

    async def _cache_list(self, request: Request) -> Response:
        raw = request.query.get("limit", "100")
        if not _whole_number(raw):
            return _error(400, "limit must be a whole number")
        limit = min(int(raw), MAX_LIST)
        entries = await trio.to_thread.run_sync(lambda: self.agent.cache.entries(limit))
        usage = await trio.to_thread.run_sync(self.agent.cache.usage)
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
        cache = self.agent.cache
        if action == "gc":
            dry_run, force = _flag(body, "dry_run", True), _flag(body, "force", False)
            plan = await trio.to_thread.run_sync(lambda: cache.gc(dry_run=dry_run, force=force))
            return json_response(200, {"victims": [v.chunk_id for v in plan.victims], "explain": explain(plan)})
        if action not in ("pin", "unpin"):
            return _error(404, f"no cache action {action!r}")
        pin = Pin.NONE if action == "unpin" else _pin(body.get("pin", "user"))
        if "chunk" in body:
            chunk_id = validate_chunk_id(str(body["chunk"]))
            await trio.to_thread.run_sync(cache.pin_chunk, chunk_id, pin)
            return json_response(200, {"chunk": chunk_id, "pin": pin.name.lower()})
        ref = body.get("manifest")
        if not isinstance(ref, str):
            raise BadManifest('body needs "chunk" or "manifest"')
        manifest = next((m for m in self.agent.manifests.values() if ref in (m.manifest_id, m.name)), None)
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
        raise BadManifest(f"{name!r} must be true or false, got {value!r}")
    return value


def _manifest_ref(body: dict[str, Any]) -> str:
    """The ``manifest`` of a request body: a name, id, path or URL the file system and the hub can take."""
    ref = body.get("manifest")
    if not isinstance(ref, str) or not ref:
        raise BadManifest('body needs "manifest": a name, id, path or URL')
    if len(ref) > MAX_REF or "\x00" in ref or any(len(part.encode()) > NAME_MAX for part in ref.split("/")):
        raise BadManifest(f"not a usable manifest reference: {ref[:80]!r}")
    return ref


def _pin(value: object) -> Pin:
    names = {"none": Pin.NONE, "user": Pin.USER, "official": Pin.OFFICIAL}
    if not isinstance(value, str) or value.lower() not in names:
        raise BadManifest(f"pin must be one of {', '.join(names)}, got {value!r}")
    return names[value.lower()]


def _json_body(request: Request) -> dict[str, Any]:
    if len(request.body) > MAX_BODY:
        raise BadManifest("request body too large")
    try:
        data = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError) as error:
        raise BadManifest(f"request body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise BadManifest("request body must be a JSON object")
    return data


def _error(status: int, message: str, chunk_id: str | None = None) -> Response:
    body: dict[str, Any] = {"error": message, "status": status}
    if chunk_id is not None and is_chunk_id(chunk_id):
        body["chunk"] = chunk_id
    return json_response(status, body)


def check_exposure(listen: str, token: str) -> None:
    """Refuse an API reachable from other hosts without a token."""
    host, _ = split_hostport(listen)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not token:
        raise BadConfig(f"api.listen {listen} is not loopback: set api.token")


async def serve_api(agent: Agent, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    listen = agent.config.api.listen
    check_exposure(listen, agent.config.api.token)
    host, port = split_hostport(listen)
    # bodies are small JSON documents: anything larger is refused (413) before it is read
    limits = ServerLimits(max_body_bytes=MAX_BODY)
    await serve_http(Api(agent).handle, host, port, limits=limits, task_status=task_status)


def job_json(job: Job) -> dict[str, Any]:
    report = job.report or (job.job.report if job.job else None)
    out: dict[str, Any] = {"id": job.id, "manifest": job.manifest.name, "state": job.state, "error": job.error}
    if report is not None:
        out.update(
            chunks=report.chunks,
            done=report.done,
            image_bytes=report.image_bytes,
            from_cache=report.from_cache,
            from_peers=report.from_peers,
            from_hub=report.from_hub,
            bytes_from_peers=report.bytes_from_peers,
            bytes_from_hub=report.bytes_from_hub,
            seconds=round(report.seconds, 3),
            hot_seconds=None if report.hot_seconds is None else round(report.hot_seconds, 3),
            hub_reasons=dict(report.hub_reasons),
            errors=report.errors[-10:],
        )
    return out


def agent_status(agent: Agent) -> dict[str, Any]:
    """What ``GET /status`` answers. ``peer_bytes``: payload ``{ip: {"down", "up"}}`` per peer address, ever."""
    ledger = agent.swarm.refresh_peer_bytes() if agent.swarm else None
    if ledger is not None:
        agent.stats.bytes_to_peers = ledger.uploaded
    return {
        "mode": agent.config.agent.mode,
        "hub": agent.config.agent.hub,
        "swarm_port": agent.swarm.listen_port if agent.swarm else None,
        "api_port": agent.api_port,
        "stats": agent.stats.as_json(),
        "gauges": agent.gauges(),
        "manifests": [
            {"id": m.manifest_id, "name": m.name, "version": m.version, "bytes": m.image_bytes}
            for m in agent.manifests.values()
        ],
        "jobs": [job_json(job) for job in agent.jobs.values()],
        "peer_bytes": ledger.as_json() if ledger is not None else {},
        "warm": None
        if agent.warmer is None
        else {
            "passes": agent.warmer.passes,
            "held": agent.warmer.held,
            "version": agent.warmer.warmed_version,
            "errors": agent.warmer.errors[-10:],
        },
    }
