"""Jobs: whole manifests fetched in the background, each a ``FetchJob`` in the agent's nursery.

Owns starting a job (one running job per manifest: asking again joins it, and asking for more of the image than a
running job covers widens it), deciding whether an image fits the
cache at all (or streams through it, when the caller writes it out as it arrives, or is refused before the first
byte with a message naming the image's size and the cache's), the job's deadline, and a bounded history of
finished jobs. Must not know HTTP or the policy's rules.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from ..cache.store import ChunkCache
from ..errors import CacheFull, JobFailed, first_error
from ..formats.manifest import Manifest
from ..policy.eviction import Pin
from ..policy.fetch import FetchParams
from ..policy.hubwindow import HubWindow
from ..policy.retry import HubRetries
from .arrivals import Arrivals, Source
from .datapath import ChunkSource
from .fetchjob import FetchJob, FetchReport, TorrentLike
from .metrics import AgentStats

log = logging.getLogger(__name__)

HISTORY = 100
"""Finished jobs remembered (running ones are always kept)."""
ABANDON_SETTLE_S = 2.0


@dataclass
class Job:
    id: int
    manifest: Manifest
    pin: Pin
    state: str = "running"
    error: str = ""
    streaming: bool = False
    done: trio.Event = field(default_factory=trio.Event)
    fetch: FetchJob | None = None
    torrent: TorrentLike | None = None
    only: frozenset[str] | None = None
    """The chunks of the manifest this job fetches (None: all of them)."""

    @property
    def report(self) -> FetchReport | None:
        return self.fetch.report if self.fetch is not None else None

    def consumed(self, chunk_id: str) -> None:
        if self.fetch is not None:
            self.fetch.consumed(chunk_id)


@dataclass(frozen=True)
class JobSettings:
    params: FetchParams
    timeout_s: float
    give_up_s: float
    seed: bool = False
    """This agent is a volunteer seed (its jobs take from the hub what no connected peer has, alone)."""


class JobTable:
    def __init__(
        self,
        nursery: trio.Nursery,
        cache: ChunkCache,
        hub: ChunkSource,
        arrivals: Arrivals,
        *,
        resolve: Callable[[str], Awaitable[Manifest]],
        remember: Callable[[Manifest, Pin], Awaitable[None]],
        join: Callable[[Manifest], Awaitable[TorrentLike | None]],
        sweep: Callable[[TorrentLike], Awaitable[object]],
        missing: Callable[[Sequence[str]], Awaitable[list[str]]],
        deliver: Callable[[str, bytes, Source], Awaitable[None]],
        me: Callable[[], str],
        settings: JobSettings,
        stats: AgentStats,
    ) -> None:
        self._nursery = nursery
        self._cache = cache
        self._hub = hub
        self._arrivals = arrivals
        self._resolve = resolve
        self._remember = remember
        self._join = join
        self._sweep = sweep
        self._missing = missing
        self._deliver = deliver
        self._me = me
        self._settings = settings
        self._stats = stats
        self._jobs: OrderedDict[int, Job] = OrderedDict()
        self.hub_window = HubWindow()
        """The agent's share of the hub, one for all its jobs (each job keeps its own retries)."""
        self._next_id = 1

    def get(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        return list(self._jobs.values())

    def running(self) -> int:
        return sum(1 for job in self._jobs.values() if job.state == "running")

    def fetching(self, info_hash: bytes) -> bool:
        """Whether a running job fetches the torrent announced as ``info_hash`` (a v2 infohash, truncated to 20
        bytes as announces carry it): a seed's tracker counts such a torrent as complete."""
        return any(
            job.state == "running" and (job.manifest.infohash or "")[:40] == info_hash.hex()
            for job in self._jobs.values()
        )

    async def start(
        self,
        ref: str,
        *,
        pin: Pin = Pin.NONE,
        hub: ChunkSource | None = None,
        stream: bool = False,
        only: Collection[str] | None = None,
    ) -> Job:
        """Start fetching a whole manifest (``only``: just these of its chunks); the job's ``done`` fires at its end.

        ``hub``: another hub (the warmer's, with its own budget) for this job; ``stream``: the caller writes the
        image out as it arrives (``Job.consumed``), so an image larger than the cache may stream through it.
        Raises CacheFull before anything is fetched when the image cannot fit and cannot stream.
        """
        manifest = await self._resolve(ref)
        await self._remember(manifest, pin)
        wanted = None if only is None else frozenset(only)
        for job in list(self._jobs.values()):
            if job.manifest.manifest_id != manifest.manifest_id or job.state != "running":
                continue
            if job.only is None or (wanted is not None and wanted <= job.only):
                return job
            if job.fetch is not None and job.fetch.widen(wanted):
                job.only = None if wanted is None else job.only | wanted
                return job
            await job.done.wait()  # it was ending: a new job takes the rest
        window = await self._window(manifest, stream, wanted)
        job = Job(self._next_id, manifest, pin, streaming=window is not None, only=wanted)
        self._next_id += 1
        self._jobs[job.id] = job
        self._forget_old()
        torrent = await self._join(manifest)
        job.torrent = torrent
        job.fetch = FetchJob(
            manifest,
            hub=hub or self._hub,
            torrent=torrent,
            arrivals=self._arrivals,
            missing=self._missing,
            deliver=self._deliver,
            me=self._me(),
            seed=self._settings.seed,
            params=self._settings.params,
            retries=HubRetries(give_up_s=self._settings.give_up_s),
            hub_window=self.hub_window,
            window_bytes=window,
            only=wanted,
            protect=self._cache.protect,
            release=self._cache.release,
        )
        self._nursery.start_soon(self._run, job)
        return job

    async def _window(self, manifest: Manifest, stream: bool, only: frozenset[str] | None) -> int | None:
        """None if the missing chunks (of ``only``) fit the cache; else the streaming window (or CacheFull)."""
        missing = await self._missing([c for c in manifest.chunk_ids if only is None or c in only])
        need = sum(manifest.chunk_size_of(chunk_id) for chunk_id in missing)
        room = await trio.to_thread.run_sync(self._cache.room_for)
        if need <= room:
            return None
        largest = max((manifest.chunk_size_of(chunk_id) for chunk_id in missing), default=0)
        size = f"{manifest.name} needs {_mib(need)} more in the cache ({_mib(manifest.unique_bytes)} in all)"
        budget = f"the cache can hold {_mib(room)} of its {_mib(self._cache.marks.budget_bytes)} budget now"
        if not stream:
            raise CacheFull(f"{size} but {budget}: fetch it to a file (streaming) or raise cache.budget_bytes")
        if room < 4 * largest:
            raise CacheFull(f"{size} but {budget}: too little even to stream it through")
        return room // 2

    async def _run(self, job: Job) -> None:
        assert job.fetch is not None
        try:
            with trio.fail_after(self._settings.timeout_s):
                await job.fetch.run()
            job.state = "done"
        except trio.TooSlowError:
            job.state, job.error = "failed", f"timed out after {self._settings.timeout_s:.0f} s"
        except Exception as caught:
            error = first_error(caught) if isinstance(caught, ExceptionGroup) else caught  # raised in a nursery
            if isinstance(error, JobFailed):
                log.warning("%s", error)
                job.state, job.error = "failed", str(error)
            else:
                log.exception("fetch of %s failed", job.manifest.name)
                job.state, job.error = "failed", f"{type(error).__name__}: {error}"
        finally:
            self._stats.chunks_from_cache += job.fetch.report.from_cache
            self._stats.hub_reasons.update(job.fetch.report.hub_reasons)
            job.done.set()
        if job.state == "failed" and job.torrent is not None:
            await self._abandon(job.torrent)

    async def _abandon(self, torrent: TorrentLike) -> None:
        """After a failed job (its end left libtorrent wanting none of the torrent's pieces): the partial files go
        (twice: blocks that were in flight can still land a moment later)."""
        with trio.CancelScope(shield=True):
            await self._sweep(torrent)
            await trio.sleep(ABANDON_SETTLE_S)
            await self._sweep(torrent)

    def _forget_old(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.state != "running"]
        for job_id in finished[: max(0, len(finished) - HISTORY)]:
            del self._jobs[job_id]


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def job_json(job: Job, *, since: int | None = None) -> dict[str, Any]:
    """A job as ``GET /jobs/<n>`` answers (``since``: also the chunks available from that position on)."""
    report = job.report
    out: dict[str, Any] = {
        "id": job.id,
        "manifest": job.manifest.name,
        "manifest_id": job.manifest.manifest_id,
        "state": job.state,
        "error": job.error,
        "streaming": job.streaming,
    }
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
        if since is not None:
            out["arrived"] = report.arrival_order[since:]
    return out
