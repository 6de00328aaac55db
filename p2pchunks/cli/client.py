"""The CLI's side of the local API: ``fetch`` (with a progress bar, then file assembly), ``status``, ``cache``,
``rfs-fill``.

Owns turning API answers into what a person reads (an agent's error is shown as the agent worded it, and no
error is ever shown empty), the time the CLI waits (``SHORT_TIMEOUT_S`` for a quick call; ``rfs-fill`` waits
``--timeout``, as long as the agent may work on the fill), and assembling an image's files from its chunks
(``assemble``: symlinks and modes as in the manifest, each file written to a temp name and renamed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import trio
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeElapsedColumn, TransferSpeedColumn
from rich.table import Table

from ..errors import BadManifest, P2PChunksError
from ..formats.manifest import Manifest

GetChunk = Callable[[str], Awaitable[bytes]]


SHORT_TIMEOUT_S = 60.0
"""A call that should answer at once (status, a job's progress, a chunk)."""
CONNECT_TIMEOUT_S = 10.0


class ApiError(P2PChunksError):
    """The agent answered with an error, or could not be asked."""


async def run_command(args: argparse.Namespace) -> int:
    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
    timeout = httpx.Timeout(SHORT_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    async with httpx.AsyncClient(base_url=args.api, headers=headers, timeout=timeout, trust_env=False) as http:
        try:
            if args.command == "fetch":
                return await _fetch(http, args.manifest, args.out)
            if args.command == "rfs-fill":
                return await _fill(http, args)
            if args.command == "status":
                return await _status(http, as_json=args.json)
            return await _cache(http, args)
        except httpx.TimeoutException as error:
            raise ApiError(f"the agent at {args.api} did not answer in time ({_describe(error)})") from error
        except httpx.TransportError as error:
            raise ApiError(f"cannot reach the agent at {args.api}: {_describe(error)}") from error


def _describe(error: BaseException) -> str:
    """What went wrong, never empty (httpx's timeouts carry no message)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def _call(
    http: httpx.AsyncClient, method: str, path: str, body: Any = None, *, wait: httpx.Timeout | None = None
) -> Any:
    extra: dict[str, Any] = {} if wait is None else {"timeout": wait}
    response = await http.request(method, path, json=body, **extra)
    if response.status_code >= 400:
        raise ApiError(f"{method} {path}: {response.status_code} {agent_error(response)}")
    return response.json()


def agent_error(response: httpx.Response) -> str:
    """The agent's own words for an error answer: its JSON ``error``, else the body, else the status's name."""
    try:
        data = response.json()
        message = str(data.get("error") or "") if isinstance(data, dict) else ""
    except ValueError:
        message = ""
    return message or response.text.strip()[:500] or response.reason_phrase or "(the agent gave no reason)"


async def _fill(http: httpx.AsyncClient, args: argparse.Namespace) -> int:
    from ..hub.publish import parse_size

    body: dict[str, Any] = {"manifest": args.manifest}
    if args.quota is not None:
        body["quota_bytes"] = parse_size(args.quota)
    wait = httpx.Timeout(args.timeout or None, connect=CONNECT_TIMEOUT_S)
    try:
        report = await _call(http, "POST", "/fill", body, wait=wait)
    except httpx.TimeoutException as error:
        raise ApiError(
            f"the agent at {http.base_url} did not finish the fill within --timeout {args.timeout:g} s "
            f"({_describe(error)}); it goes on, see `p2pchunks status`"
        ) from error
    print(json.dumps(report, indent=2))
    for chunk_id, reason in report["failed"].items():
        print(f"p2pchunks: block {chunk_id} not filled (rfs fetches it itself): {reason}", file=sys.stderr)
    if report["stopped_for_space"]:
        print("p2pchunks: the fill stopped: the rfs cache reached its quota or free-space floor", file=sys.stderr)
    return 0 if not report["failed"] and not report["stopped_for_space"] else 1


async def _fetch(http: httpx.AsyncClient, ref: str, out: Path) -> int:
    started = await _call(http, "POST", "/fetch", {"manifest": ref})
    console = Console(stderr=True)
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn())
    with Progress("[bold]{task.description}", *columns, console=console, transient=False) as progress:
        task = progress.add_task(ref, total=None)
        with trio.fail_after(24 * 3600):
            while True:
                job = await _call(http, "GET", f"/jobs/{started['job']}")
                if job.get("chunks"):
                    done_bytes = job["image_bytes"] * job["done"] // job["chunks"]
                    progress.update(task, total=job["image_bytes"], completed=done_bytes)
                if job["state"] != "running":
                    break
                await trio.sleep(0.2)
    if job["state"] != "done":
        raise ApiError(f"fetch of {ref} failed: {job.get('error')}")
    raw = await http.get(f"/manifests/{started['manifest']}")
    manifest = Manifest.decode(raw.content)

    async def get_chunk(chunk_id: str) -> bytes:
        response = await http.get(f"/chunks/{chunk_id}")
        if response.status_code != 200:
            raise ApiError(f"chunk {chunk_id}: {response.status_code} {agent_error(response)}")
        return response.content

    await assemble(manifest, out, get_chunk)
    console.print(
        f"{manifest.name} {manifest.version}: {len(manifest.files)} files, {manifest.image_bytes} bytes in {out} — "
        f"{job['from_peers']} chunks from peers, {job['from_hub']} from the hub, {job['from_cache']} cached, "
        f"{job['seconds']:.1f} s"
    )
    return 0


def _safe_target(out: Path, path: str) -> Path:
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise BadManifest(f"unsafe path in manifest: {path!r}")
    return out.joinpath(*pure.parts)


async def assemble(manifest: Manifest, out: Path, get_chunk: GetChunk) -> None:
    """Write the image's files under ``out`` from their chunks."""
    await trio.Path(out).mkdir(parents=True, exist_ok=True)
    for entry in manifest.files:
        target = trio.Path(_safe_target(out, entry.path))
        await target.parent.mkdir(parents=True, exist_ok=True)
        if entry.symlink is not None:
            if await target.is_symlink() or await target.exists():
                await target.unlink()
            await target.symlink_to(entry.symlink)
            continue
        tmp = target.with_name(f".{target.name}.part")
        async with await trio.open_file(tmp, "wb") as fh:
            for chunk in entry.chunks:
                await fh.write(await get_chunk(chunk.id))
        await tmp.chmod(entry.mode & 0o7777 or 0o644)
        await tmp.replace(target)


async def _status(http: httpx.AsyncClient, *, as_json: bool) -> int:
    status = await _call(http, "GET", "/status")
    if as_json:
        print(json.dumps(status, indent=2))
        return 0
    console = Console()
    stats, gauges = status["stats"], status["gauges"]
    table = Table(title=f"p2pchunks {status['mode']} — hub {status['hub']}")
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        (
            "cache",
            f"{gauges['cache_chunks']} chunks, {_mib(gauges['cache_bytes'])} of {_mib(gauges['cache_budget_bytes'])}",
        ),
        ("torrents / peers", f"{gauges['torrents']} / {gauges['peers_connected']}"),
        ("from peers", f"{stats['chunks_from_peers']} chunks, {_mib(stats['bytes_from_peers'])}"),
        ("from hub", f"{stats['chunks_from_hub']} chunks, {_mib(stats['bytes_from_hub'])}"),
        ("cache hits", str(stats["chunks_from_cache"])),
        ("corrupt (peers / hub)", f"{stats['corrupt_from_peers']} / {stats['corrupt_from_hub']}"),
        ("banned peers", str(stats["peers_banned"])),
    ]
    for hub in status.get("hubs", []):
        state = hub["state"] if hub["state"] == "up" else f"down (retry in {hub['retry_in_s']:.0f} s)"
        rows.append((f"hub {hub['url']}", f"{state}, {_mib(hub['bytes'])}, {hub['errors']} errors"))
    for row in rows:
        table.add_row(*row)
    console.print(table)
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
        console.print(jobs)
    return 0


async def _cache(http: httpx.AsyncClient, args: argparse.Namespace) -> int:
    action = args.cache_command
    if action == "ls":
        listing = await _call(http, "GET", f"/cache?limit={args.limit}")
        for entry in listing["entries"]:
            print(f"{entry['id']}  {entry['size']:>9}  {entry['pin']:<8}  {','.join(entry['manifests'])}")
        return 0
    if action == "gc":
        result = await _call(http, "POST", "/cache/gc", {"dry_run": args.dry_run, "force": args.force})
        print("\n".join(result["explain"]))
        return 0
    key = "chunk" if len(args.target) in (32, 64) and all(c in "0123456789abcdef" for c in args.target) else "manifest"
    body: dict[str, Any] = {key: args.target}
    if action == "pin":
        body["pin"] = args.pin_class
    print(json.dumps(await _call(http, "POST", f"/cache/{action}", body)))
    return 0


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"
