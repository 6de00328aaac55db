"""The CLI's side of the local API: ``fetch``, ``status``, ``cache``, ``rfs-fill`` against a running agent.

Owns talking to the agent (:class:`AgentApi`: every transport failure and every error answer becomes one
:class:`ApiError` that says what was asked of whom; long calls wait as long as the agent works) and turning its
answers into what a person reads. Writing an image's files is ``image.py``'s, the fetch's progress ``fetch.py``'s.
Must not know the agent's internals: only its HTTP API.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import httpx
import trio
from rich.console import Console
from rich.table import Table

from ..errors import P2PChunksError
from ..ids import is_chunk_id

CONNECT_TIMEOUT_S = 10.0


class ApiError(P2PChunksError):
    """The agent could not be asked, or answered with an error (``status``: its HTTP status, 0 if none)."""

    def __init__(self, message: str, status: int = 0, body: Any = None) -> None:
        self.status = status
        self.body = body
        super().__init__(message)


class AgentApi:
    """The agent's local API at ``base``; ``timeout``: how long a short call may wait for an answer."""

    def __init__(self, http: httpx.AsyncClient, base: str, timeout: float) -> None:
        self.http = http
        self.base = base
        self.timeout = timeout

    async def call(self, method: str, path: str, body: Any = None, *, long: bool = False) -> Any:
        """The JSON answer; ApiError for an error status. ``long``: no read timeout (the agent works meanwhile)."""
        response = await self._send(method, path, body, long=long)
        data = _json(response)
        if response.status_code >= 400:
            raise _refused(method, path, response, data)
        if data is None:
            raise ApiError(f"{method} {path}: the agent's answer is not JSON ({len(response.content)} bytes)")
        return data

    async def raw(self, path: str) -> bytes:
        """The body of ``GET path`` (chunks, manifests)."""
        response = await self._send("GET", path, None, long=False)
        if response.status_code != 200:
            raise _refused("GET", path, response, _json(response))
        return response.content

    async def _send(self, method: str, path: str, body: Any, *, long: bool) -> httpx.Response:
        timeout = httpx.Timeout(None if long else self.timeout, connect=CONNECT_TIMEOUT_S)
        try:
            return await self.http.request(method, path, json=body, timeout=timeout)
        except httpx.TimeoutException as error:
            what = "connect" if isinstance(error, httpx.ConnectTimeout) else "answer"
            limit = CONNECT_TIMEOUT_S if what == "connect" else self.timeout
            raise ApiError(
                f"the agent at {self.base} did not {what} within {limit:g} s ({method} {path}: {type(error).__name__})"
            ) from None
        except httpx.TransportError as error:
            detail = f" ({error})" if str(error) else ""
            raise ApiError(
                f"cannot reach the agent at {self.base} ({method} {path}): {type(error).__name__}{detail}"
            ) from None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _refused(method: str, path: str, response: httpx.Response, data: Any) -> ApiError:
    """An error answer as one ApiError: the body's ``error`` field, else its text, else the status's reason."""
    message = data.get("error") if isinstance(data, dict) else None
    detail = message or response.text.strip() or response.reason_phrase
    return ApiError(f"{method} {path}: {response.status_code} {detail}", response.status_code, data)


async def run_command(args: argparse.Namespace, base: str, token: str) -> int:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=base, headers=headers, trust_env=False) as http:
        api = AgentApi(http, base, args.timeout)
        if args.command == "fetch":
            from .fetch import fetch

            return await fetch(api, args.manifest, out=args.out, wait=args.wait)
        if args.command == "rfs-fill":
            return await _fill(api, args)
        if args.command == "status":
            return await _status(api, as_json=args.json)
        return await _cache(api, args)


async def _fill(api: AgentApi, args: argparse.Namespace) -> int:
    from ..hub.publish import parse_size

    body: dict[str, Any] = {"manifest": args.manifest}
    if args.quota is not None:
        body["quota_bytes"] = parse_size(args.quota)
    with trio.move_on_after(args.timeout or math.inf) as waited:
        report = await api.call("POST", "/fill", body, long=True)
    if waited.cancelled_caught:
        raise ApiError(
            f"the agent at {api.base} did not finish the fill within --timeout {args.timeout:g} s (ReadTimeout); it "
            "goes on, see `p2pchunks status`"
        )
    print(json.dumps(report, indent=2))
    for chunk_id, reason in report["failed"].items():
        print(f"p2pchunks: block {chunk_id} not filled (rfs fetches it itself): {reason}", file=sys.stderr)
    if report["stopped_for_space"]:
        print("p2pchunks: the fill stopped: the rfs cache reached its quota or free-space floor", file=sys.stderr)
    return 0 if not report["failed"] and not report["stopped_for_space"] else 1


async def _status(api: AgentApi, *, as_json: bool) -> int:
    status = await api.call("GET", "/status")
    if as_json:
        print(json.dumps(status, indent=2))
        return 0
    Console().print(status_table(status))
    if status["jobs"]:
        jobs = Table(title="jobs")
        for column in ("id", "manifest", "state", "done", "peers", "hub", "seconds"):
            jobs.add_column(column)
        for job in status["jobs"]:
            jobs.add_row(
                str(job["id"]),
                job["manifest"],
                job["state"],
                f"{job.get('done', 0)}/{job.get('chunks', '?')}",
                str(job.get("from_peers", "")),
                str(job.get("from_hub", "")),
                str(job.get("seconds", "")),
            )
        Console().print(jobs)
    return 0


def status_table(status: dict[str, Any]) -> Table:
    """The main table of ``p2pchunks status``."""
    stats, gauges = status["stats"], status["gauges"]
    table = Table(title=f"p2pchunks {status['mode']} — hub {status['hub']}")
    table.add_column("what")
    table.add_column("value", justify="right")
    cache = f"{gauges['cache_chunks']} chunks, {_mib(gauges['cache_bytes'])} of {_mib(gauges['cache_budget_bytes'])}"
    rows = [
        ("cache", cache),
        ("torrents / peers", f"{gauges['torrents']} / {gauges['peers_connected']}"),
        ("from peers", f"{stats['chunks_from_peers']} chunks, {_mib(stats['bytes_from_peers'])}"),
        ("from hub", f"{stats['chunks_from_hub']} chunks, {_mib(stats['bytes_from_hub'])}"),
        ("served to local readers", f"{stats['chunks_served']} chunks, {_mib(stats['bytes_served'])}"),
        ("found cached by fetch jobs", f"{stats['chunks_from_cache']} chunks"),
        ("corrupt (peers / hub)", f"{stats['corrupt_from_peers']} / {stats['corrupt_from_hub']}"),
        ("banned peers", str(stats["peers_banned"])),
    ]
    for hub in status.get("hubs", []):
        state = hub["state"] if hub["state"] == "up" else f"down (retry in {hub['retry_in_s']:.0f} s)"
        rows.append((f"hub {hub['url']}", f"{state}, {_mib(hub['bytes'])}, {hub['errors']} errors"))
    integrity = status.get("integrity")
    if integrity:
        repaired = f"{integrity['damaged_found']} / {integrity['repaired']}"
        if integrity.get("repair_failed"):
            repaired += f" ({integrity['repair_failed']} could not be fetched again)"
        rows.append(("damaged found / repaired", repaired))
        rows.append(("scrub", _scrub(integrity["scrub"])))
    rows += _custody_rows(status.get("custody"))
    for row in rows:
        table.add_row(*row)
    return table


def _custody_rows(custody: dict[str, Any] | None) -> list[tuple[str, str]]:
    """This node's custody of the official list and the farm's copies of it, as the agent sees them."""
    if not custody:
        return []
    farm = custody["farm"]
    kept = f"{len(custody['images'])} images, {custody['chunks']} chunks, {_mib(custody['bytes'])}"
    if custody["left_out"]:
        kept += f" (left out by custody.share: {', '.join(custody['left_out'])})"
    copies = " / ".join(str(farm["copies"].get(key, 0)) for key in ("0", "1", "2", "3+"))
    return [
        ("custody", kept),
        ("farm members", str(len(farm["members"]))),
        ("official chunks with 0 / 1 / 2 / 3+ farm copies", copies),
    ]


def _scrub(scrub: dict[str, Any]) -> str:
    if not scrub.get("rate_bps"):
        return "off"
    done = f"{_mib(scrub['checked_bytes'])} of {_mib(scrub['pass_bytes'])} this pass"
    return f"{done}, {scrub['passes']} passes done, {scrub['damaged']} damaged ({_mib(scrub['rate_bps'])}/s)"


async def _cache(api: AgentApi, args: argparse.Namespace) -> int:
    action = args.cache_command
    if action == "ls":
        listing = await api.call("GET", f"/cache?limit={args.limit}")
        for entry in listing["entries"]:
            print(f"{entry['id']}  {entry['size']:>9}  {entry['pin']:<8}  {','.join(entry['manifests'])}")
        return 0
    if action == "gc":
        result = await api.call("POST", "/cache/gc", {"dry_run": args.dry_run, "force": args.force}, long=True)
        print("\n".join(result["explain"]))
        return 0
    extra: dict[str, Any] = {"pin": args.pin_class} if action == "pin" else {}
    # A manifest first: its id has the shape of a chunk id (64 hex digits), and the agent knows which it is.
    try:
        result = await api.call("POST", f"/cache/{action}", {"manifest": args.target, **extra})
    except ApiError as error:
        if error.status != 404 or not is_chunk_id(args.target):
            raise
        result = await api.call("POST", f"/cache/{action}", {"chunk": args.target, **extra})
    print(json.dumps(result))
    return 0


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"
