"""``p2pchunks fetch``: an image through the agent, written out as its chunks arrive, with progress and an ETA.

Theory of operation. ``fetch NAME --out DIR`` starts a *streaming* job (``POST /fetch {"stream": true}``: an image
larger than the agent's cache streams through it), reads the manifest, and lays the files out as sized ``.part``
files (``image.py``). It then polls ``GET /jobs/<n>?since=K``, whose ``arrived`` lists the chunks that became
available since position K, and hands each new chunk to a few readers (``READERS``; the hand-off has no buffer,
so the poller waits while they are busy) that read it with ``GET /chunks/<id>?job=<n>`` — which tells the agent
the chunk was consumed, so a streaming job may let it leave the cache — and write it at all its offsets. When
the job is done and every chunk written, the files get their modes and names and the symlinks are made. When the
job fails, its error (naming the chunks no source could deliver) is the command's, and no ``.part`` file is left.

Without ``--out`` the image is fetched into the agent's cache only: with a progress bar, or with ``--wait`` as
one call that returns when the job ends (for scripts). Must not know the agent's internals.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ..formats.manifest import Manifest
from .client import AgentApi, ApiError
from .image import ImageWriter

READERS = 4
"""Chunk reads in flight at once."""
POLL_S = 0.1
"""Between two polls of the job when nothing new arrived."""


async def fetch(api: AgentApi, ref: str, *, out: Path | None, wait: bool) -> int:
    console = Console(stderr=True)
    if out is not None:
        return await _fetch_to(api, ref, out, console)
    if wait:
        try:
            job = await api.call("POST", "/fetch", {"manifest": ref, "wait": True}, long=True)
        except ApiError as error:  # 502 with the failed job
            if not (isinstance(error.body, dict) and "state" in error.body):
                raise
            job = error.body
    else:
        started = await api.call("POST", "/fetch", {"manifest": ref})
        with _progress(console) as progress:
            task = progress.add_task(ref, total=None)
            while True:
                job = await api.call("GET", f"/jobs/{started['job']}")
                if job.get("chunks"):
                    progress.update(task, total=job["image_bytes"], completed=_done_bytes(job))
                if job["state"] != "running":
                    break
                await trio.sleep(POLL_S * 2)
    _check(job, ref)
    console.print(f"{job['manifest']}: in the agent's cache — {_sources(job)}", soft_wrap=True)
    return 0


async def _fetch_to(api: AgentApi, ref: str, out: Path, console: Console) -> int:
    await trio.to_thread.run_sync(lambda: out.mkdir(parents=True, exist_ok=True))  # fail before the job starts
    started = await api.call("POST", "/fetch", {"manifest": ref, "stream": True})
    manifest = Manifest.decode(await api.raw(f"/manifests/{started['manifest']}"))
    writer = ImageWriter(manifest, out)
    await trio.to_thread.run_sync(writer.prepare)
    try:
        with _progress(console) as progress:
            task = progress.add_task(manifest.name, total=manifest.image_bytes)
            job = await _stream(api, int(started["job"]), writer, lambda n: progress.advance(task, n))
        _check(job, ref)
        await trio.to_thread.run_sync(writer.finish)
    finally:
        writer.abort()  # after finish there is nothing left to remove
    console.print(
        f"{manifest.name} {manifest.version}: {len(manifest.files)} files, {manifest.image_bytes} bytes in {out} — "
        f"{_sources(job)}",
        soft_wrap=True,
    )
    return 0


async def _stream(api: AgentApi, job_id: int, writer: ImageWriter, advance: Callable[[int], None]) -> dict[str, Any]:
    """Write every chunk of the job as it arrives; the job's last state."""

    async def reader(receive: trio.MemoryReceiveChannel[str]) -> None:
        async with receive:
            async for chunk_id in receive:
                await _copy(api, job_id, writer, chunk_id, advance)

    send, receive = trio.open_memory_channel[str](0)
    async with trio.open_nursery() as nursery:
        for _ in range(READERS):
            nursery.start_soon(reader, receive.clone())
        receive.close()
        async with send:
            seen = 0
            while True:
                job: dict[str, Any] = await api.call("GET", f"/jobs/{job_id}?since={seen}")
                arrived = job.get("arrived", [])
                seen += len(arrived)
                if job["state"] == "failed":  # no return in here: closing ``send`` would raise Cancelled over it
                    nursery.cancel_scope.cancel()
                    break
                for chunk_id in arrived:
                    await send.send(chunk_id)
                if job["state"] != "running":
                    break
                if not arrived:
                    await trio.sleep(POLL_S)
    if job["state"] == "done":
        for chunk_id in writer.pending:  # none, unless the job's list missed one: read it on demand
            await _copy(api, job_id, writer, chunk_id, advance)
    return job


async def _copy(api: AgentApi, job_id: int, writer: ImageWriter, chunk_id: str, advance: Callable[[int], None]) -> None:
    data = await api.raw(f"/chunks/{chunk_id}?job={job_id}")
    advance(await trio.to_thread.run_sync(writer.write, chunk_id, data))


def _progress(console: Console) -> Progress:
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    return Progress("[bold]{task.description}", *columns, console=console, transient=False)


def _check(job: dict[str, Any], ref: str) -> None:
    if job["state"] != "done":
        raise ApiError(f"fetch of {ref} failed: {job.get('error') or job['state']}")


def _done_bytes(job: dict[str, Any]) -> int:
    return int(job["image_bytes"] * job["done"] // max(1, job["chunks"]))


def _sources(job: dict[str, Any]) -> str:
    return (
        f"{job.get('from_peers', 0)} chunks from peers, {job.get('from_hub', 0)} from the hub, "
        f"{job.get('from_cache', 0)} cached, {job.get('seconds', 0.0):.1f} s"
    )
