"""The deploy-time fill of the node's rfs cache: the whole image, in file order, in parallel, ahead of rfs.

Starts (or joins) the image's fetch job, streaming when the image is larger than our cache, and writes each block
into the rfs cache (decrypted plaintext at rfs's own paths, ``zos.rfscache``) as soon as the job has it, so most
blocks come from peers; a block the job ended without is read on demand. Each block written out is released to
the job. The zos support is an optional extra, imported only when a fill is asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from ..errors import BadConfig
from ..extras import missing_extra
from .arrivals import Arrivals
from .jobs import Job


async def fill_rfs_cache(
    ref: str,
    *,
    cache_dir: str,
    quota_bytes: int | None,
    min_free_bytes: int,
    start: Callable[[str], Awaitable[Job]],
    holds: Callable[[str], Awaitable[bool]],
    read: Callable[[str], Awaitable[bytes]],
    arrivals: Arrivals,
    concurrency: int,
) -> dict[str, Any]:
    if not cache_dir:
        raise BadConfig("rfs.cache_dir is not set: there is no rfs cache to fill")
    try:
        from ..zos.rfscache import RfsCacheFiller, fill_image  # the zos extra
    except ImportError as error:
        raise missing_extra(error, "filling the rfs cache") from None

    job = await start(ref)
    filler = RfsCacheFiller(Path(cache_dir), quota_bytes=quota_bytes, min_free_bytes=min_free_bytes)

    async def from_job(chunk_id: str) -> bytes:
        """The job's copy (peers first, the hub as its policy says); on demand only if the job ended without it."""
        with arrivals.watch(chunk_id) as arrived:
            if not await holds(chunk_id):
                async with trio.open_nursery() as nursery:

                    async def until_job_ends() -> None:
                        await job.done.wait()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(until_job_ends)
                    await arrived.wait()
                    nursery.cancel_scope.cancel()
        data = await read(chunk_id)
        job.consumed(chunk_id)
        return data

    report = await fill_image(job.manifest, filler, from_job, concurrency=concurrency)
    return dataclasses.asdict(report)
