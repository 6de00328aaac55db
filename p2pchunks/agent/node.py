"""The agent: one trio nursery holding the cache, the hub client, the swarm and the local API.

Owns the data path of docs/architecture.md: ``chunk()`` (one chunk, on demand: cache → peers → hub) and
``fetch()`` (a whole manifest, through a ``FetchJob``), and what happens when a chunk arrives from anywhere:
verified → written to the cache → announced on ``Arrivals`` → injected into every torrent that lacks it.
Every service is a task of the nursery ``open_agent`` opens; nothing outlives it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio

from ..cache.store import ChunkCache
from ..config.schema import Config, split_hostport
from ..errors import BadConfig, ChunkCorrupt, ChunkNotFound, ChunkUnavailable, HubError, ManifestNotFound
from ..formats.manifest import Manifest
from ..formats.seedlist import shipped_list
from ..http.server import serve_http
from ..hub.client import HubClient
from ..ids import validate_chunk_id
from ..policy.eviction import Pin
from ..policy.fetch import FetchParams
from ..swarm.session import Swarm, SwarmSettings, Torrent, open_swarm
from ..swarm.tracker import Tracker
from ..zos.rfscache import FillReport, RfsCacheFiller, fill_image
from .fetchjob import Arrival, Arrivals, FetchJob, Job, Source
from .metrics import AgentStats
from .swarmconfig import swarm_settings, trusted_keys, with_bootstrap
from .swarmevents import SwarmEvents
from .warmer import Warmer

log = logging.getLogger(__name__)


class Agent:
    """A running agent. Create with :func:`open_agent`."""

    def __init__(self, config: Config, cache: ChunkCache, hub: HubClient, nursery: trio.Nursery) -> None:
        self.config = config
        self.cache = cache
        self.hub = hub
        self.swarm: Swarm | None = None
        self.stats = AgentStats()
        self.arrivals = Arrivals()
        self.manifests: dict[str, Manifest] = {}
        self.jobs: dict[int, Job] = {}
        self.api_port = 0
        self.tracker: Tracker | None = None
        self.tracker_port = 0
        self.warmer: Warmer | None = None
        self.fills: list[FillReport] = []
        self.zdb_port = 0
        self._nursery = nursery
        self._inflight: dict[str, trio.Event] = {}
        self._disk = trio.CapacityLimiter(4)
        self.events = SwarmEvents(self)
        self.fetch_params = FetchParams(
            discovery_grace_s=config.fetch.discovery_grace_s,
            hot_deadline_s=config.fetch.hot_deadline_s,
            owner_stall_s=config.fetch.owner_stall_s,
            peer_floor_bps=config.fetch.peer_floor_bps,
            peer_floor_window_s=config.fetch.peer_floor_window_s,
            hub_slots=config.fetch.hub_slots,
        )

    # ---- identity -------------------------------------------------------------------------------------------

    @property
    def me(self) -> str:
        """Our key in the rendezvous split: the swarm address peers see us by."""
        host = SwarmSettings(listen=self.config.swarm.listen).host
        if host not in ("0.0.0.0", "::") or self.swarm is None:
            return host
        for torrent in self.swarm.torrents.values():
            for ip in torrent.local_ips():
                return ip
        return host

    # ---- manifests ------------------------------------------------------------------------------------------

    @property
    def manifest_dir(self) -> Path:
        return self.cache.directory / "manifests"

    async def manifest(self, ref: str) -> Manifest:
        """A manifest by id, name (newest known), local path, URL or hub name; remembered and joined to the swarm."""
        for manifest in self.manifests.values():
            if ref in (manifest.manifest_id, manifest.name):
                return manifest
        path = Path(ref)
        if ref.endswith(".p2p") and await trio.to_thread.run_sync(path.is_file):
            data = await trio.to_thread.run_sync(path.read_bytes)
        else:
            try:
                data = await self.hub.get_manifest(ref)
            except HubError as error:
                raise ManifestNotFound(f"manifest {ref!r}: {error}") from error
        manifest = Manifest.decode(data)
        await self.remember(manifest, data)
        return manifest

    async def remember(self, manifest: Manifest, data: bytes | None = None, pin: Pin = Pin.NONE) -> None:
        """Record ``manifest`` in the cache index and on disk, and share what we hold of it."""
        if manifest.manifest_id not in self.manifests:
            self.manifests[manifest.manifest_id] = manifest
            blob = data if data is not None else manifest.encode()
            path = self.manifest_dir / f"{manifest.manifest_id}.p2p"

            def store() -> None:
                self.manifest_dir.mkdir(parents=True, exist_ok=True)
                if not path.exists():
                    tmp = path.with_suffix(".tmp")
                    tmp.write_bytes(blob)
                    tmp.replace(path)
                self.cache.record_manifest(manifest.manifest_id, manifest.name, manifest.chunk_ids, pin)

            await trio.to_thread.run_sync(store)
            self._join(manifest, download=False)
        elif pin is not Pin.NONE:
            await trio.to_thread.run_sync(self.cache.set_manifest_pin, manifest.manifest_id, pin)

    def _join(self, manifest: Manifest, *, download: bool) -> Torrent | None:
        if self.swarm is None or manifest.infohash is None:
            return None
        have = {chunk_id for chunk_id in manifest.piece_ids if self.cache.has(chunk_id)}
        return self.swarm.add(manifest, have, download=download)

    async def _load_known_manifests(self) -> None:
        def read_all() -> list[tuple[Manifest, bytes]]:
            out = []
            for path in sorted(self.manifest_dir.glob("*.p2p")):
                try:
                    data = path.read_bytes()
                    out.append((Manifest.decode(data), data))
                except Exception as error:  # a bad file must not stop the agent
                    log.warning("ignoring manifest %s: %s", path, error)
            return out

        for manifest, data in await trio.to_thread.run_sync(read_all):
            await self.remember(manifest, data)

    # ---- the data path ----------------------------------------------------------------------------------------

    async def chunk(self, chunk_id: str) -> tuple[Path, int]:
        """Make sure ``chunk_id`` is in the cache (cache → peers → hub) and return its file and size."""
        validate_chunk_id(chunk_id)
        try:
            # A hit is one indexed SQLite lookup and a stat: cheaper inline than a hop to a worker thread.
            located = self.cache.locate(chunk_id)
            self.stats.chunks_from_cache += 1
            return located
        except ChunkNotFound:
            pass
        pending = self._inflight.get(chunk_id)
        if pending is None:
            pending = self._inflight[chunk_id] = trio.Event()
            try:
                await self._obtain(chunk_id)
            finally:
                del self._inflight[chunk_id]
                pending.set()
        else:
            await pending.wait()
        try:
            return await trio.to_thread.run_sync(self.cache.locate, chunk_id)
        except ChunkNotFound:
            raise ChunkUnavailable(chunk_id, "no peer has it and the hub could not serve it") from None

    async def _obtain(self, chunk_id: str) -> None:
        arrived = self.arrivals.event_for(chunk_id)
        torrents = self.swarm.torrents_with(chunk_id) if self.swarm is not None else []
        held_by_peers = False
        for torrent in torrents:
            torrent.want([chunk_id])
            torrent.set_deadline(chunk_id, 0)
            availability = torrent.availability()  # empty while libtorrent has no picker (e.g. as a seed)
            held_by_peers |= bool(availability) and availability[torrent.piece_of(chunk_id)] > 0
        if held_by_peers:
            with trio.move_on_after(self.config.fetch.peer_wait_s):
                await arrived.wait()
                return
        try:
            data = await self.hub.get_chunk(chunk_id)
        except (HubError, ChunkCorrupt) as error:
            if held_by_peers:
                with trio.move_on_after(self.config.fetch.peer_wait_s):
                    await arrived.wait()
                    return
            raise ChunkUnavailable(chunk_id, f"no peer has it and the hub failed: {error}") from error
        except ChunkNotFound:
            raise
        self.stats.hub_reasons["ON_DEMAND"] += 1
        await self.deliver(chunk_id, data, Source.HUB)

    async def deliver(self, chunk_id: str, data: bytes, source: Source, manifest_id: str | None = None) -> None:
        """A verified-on-arrival chunk: into the cache, announce it, and share it through every torrent."""
        async with self._disk:
            fresh = await trio.to_thread.run_sync(lambda: self.cache.put(chunk_id, data, manifest_id=manifest_id))
        if fresh:
            if source is Source.HUB:
                self.stats.chunks_from_hub += 1
                self.stats.bytes_from_hub += len(data)
            elif source is Source.PEERS:
                self.stats.chunks_from_peers += 1
                self.stats.bytes_from_peers += len(data)
        if self.swarm is not None:
            for torrent in self.swarm.torrents_with(chunk_id):
                if not torrent.has(chunk_id):
                    torrent.inject(chunk_id, data)
        self.arrivals.arrived(Arrival(chunk_id, source, len(data)))

    async def _missing(self, chunk_ids: Sequence[str]) -> list[str]:
        return await trio.to_thread.run_sync(lambda: [c for c in chunk_ids if not self.cache.has(c)])

    async def blob(self, chunk_id: str) -> bytes:
        """The bytes of a chunk, fetched if needed (cache → peers → hub): what the zdb proxy and the fill read."""
        path, _ = await self.chunk(chunk_id)
        return await trio.to_thread.run_sync(path.read_bytes)

    async def holds(self, chunk_id: str) -> bool:
        return bool(await trio.to_thread.run_sync(self.cache.has, chunk_id))

    async def fill(self, ref: str) -> FillReport:
        """Deploy-time fill of the node's rfs cache: the whole image, in file order, in parallel, ahead of rfs's
        sequential reader; the swarm job fetches everything meanwhile, so most blobs come from peers."""
        directory = self.config.rfs.cache_dir
        if not directory:
            raise BadConfig("rfs.cache_dir is not set: there is no rfs cache to fill")
        job = await self.fetch(ref)
        filler = RfsCacheFiller(Path(directory))

        async def from_job(chunk_id: str) -> bytes:
            """The job's copy (peers first, the hub as its policy says); on demand only if the job ended without it."""
            if not await self.holds(chunk_id):
                arrived = self.arrivals.event_for(chunk_id)
                async with trio.open_nursery() as nursery:

                    async def until_job_ends() -> None:
                        await job.done.wait()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(until_job_ends)
                    await arrived.wait()
                    nursery.cancel_scope.cancel()
            return await self.blob(chunk_id)

        report = await fill_image(job.manifest, filler, from_job, concurrency=self.config.fetch.hub_slots)
        self.fills.append(report)
        return report

    # ---- jobs -------------------------------------------------------------------------------------------------

    async def fetch(self, ref: str, *, pin: Pin = Pin.NONE, hub: HubClient | None = None) -> Job:
        """Start fetching a whole manifest in the background; the returned job's ``done`` fires at the end.

        ``hub``: another hub client (the warmer's, with its own budget) for this job.
        """
        manifest = await self.manifest(ref)
        await self.remember(manifest, pin=pin)
        for job in self.jobs.values():
            if job.manifest.manifest_id == manifest.manifest_id and job.state == "running":
                return job
        job = Job(len(self.jobs) + 1, manifest, pin)
        self.jobs[job.id] = job
        self._nursery.start_soon(self._run_job, job, hub or self.hub)
        return job

    async def _run_job(self, job: Job, hub: HubClient) -> None:
        torrent = self._join(job.manifest, download=False)  # the job sets the priorities: hot chunks first
        fetch_job = FetchJob(
            job.manifest,
            hub=hub,
            torrent=torrent,
            arrivals=self.arrivals,
            missing=self._missing,
            deliver=self.deliver,
            me=self.me,
            seed=self.config.agent.mode == "seed",
            params=self.fetch_params,
        )
        job.job = fetch_job
        try:
            with self.cache.protecting(job.manifest.chunk_ids), trio.fail_after(self.config.fetch.job_timeout_s):
                job.report = await fetch_job.run()
            job.state = "done"
            self.stats.chunks_from_cache += job.report.from_cache
            self.stats.hub_reasons.update(job.report.hub_reasons)
        except trio.TooSlowError:
            job.state, job.error = "failed", f"timed out after {self.config.fetch.job_timeout_s:.0f} s"
            job.report = fetch_job.report
        except Exception as error:
            log.exception("fetch of %s failed", job.manifest.name)
            job.state, job.error = "failed", str(error)
            job.report = fetch_job.report
        finally:
            job.done.set()

    def fetching(self, info_hash: bytes) -> bool:
        """Whether a running job fetches the torrent announced as ``info_hash`` (a v2 infohash, truncated to 20
        bytes as announces carry it)."""
        return any(
            job.state == "running" and (job.manifest.infohash or "")[:40] == info_hash.hex()
            for job in self.jobs.values()
        )

    # ---- status -----------------------------------------------------------------------------------------------

    def gauges(self) -> dict[str, float]:
        usage = self.cache.usage()
        peers = sum(t.status().num_peers for t in self.swarm.torrents.values()) if self.swarm else 0
        return {
            "cache_bytes": usage.bytes,
            "cache_chunks": usage.chunks,
            "cache_budget_bytes": usage.budget_bytes,
            "torrents": len(self.swarm.torrents) if self.swarm else 0,
            "peers_connected": peers,
            "jobs_running": sum(1 for job in self.jobs.values() if job.state == "running"),
        }


@asynccontextmanager
async def open_agent(config: Config, *, swarm: bool | None = None) -> AsyncIterator[Agent]:
    """Run an agent for as long as the block runs (``swarm=False``: hub only, the zos baseline)."""
    swarm = config.swarm.enabled if swarm is None else swarm
    from .api import serve_api  # the API imports the agent's types

    section = config.cache
    directory = Path(config.agent.cache_dir)
    cache = await trio.to_thread.run_sync(
        lambda: ChunkCache(
            directory,
            budget_bytes=section.budget_bytes or None,
            budget_percent=section.budget_percent,
            high=section.high_watermark,
            low=section.low_watermark,
        )
    )
    try:
        report = await trio.to_thread.run_sync(cache.reconcile)
        if report.removed_files or report.dropped_rows:
            log.info("cache reconciled: %s", report)
        fetch = config.fetch
        async with (
            HubClient(
                config.agent.hub,
                concurrency=fetch.hub_concurrency,
                timeout=fetch.hub_timeout_s,
                retries=fetch.hub_retries,
                rate_bps=fetch.hub_rate_bps or None,
            ) as hub,
            trio.open_nursery() as nursery,
        ):
            agent = Agent(config, cache, hub, nursery)
            if swarm:
                settings = with_bootstrap(swarm_settings(config), config)
                agent.swarm = await nursery.start(_run_swarm, agent, settings, directory)
            nursery.start_soon(agent.events.run)
            await agent._load_known_manifests()
            agent.api_port = await nursery.start(serve_api, agent)
            if config.tracker.enabled:
                committed = agent.fetching if config.agent.mode == "seed" else None
                agent.tracker = Tracker(interval=config.tracker.interval_s, committed=committed)
                host, port = split_hostport(config.tracker.listen)
                agent.tracker_port = await nursery.start(partial(serve_http, agent.tracker.handle, host, port))
            if config.rfs.zdb_listen:
                from ..zos.zdbproxy import serve_zdb_proxy

                host, port = split_hostport(config.rfs.zdb_listen)
                agent.zdb_port = await nursery.start(serve_zdb_proxy, agent.blob, agent.holds, host, port)
            if config.warm.official:
                official = config.warm.official_file
                list_path = Path(official) if official else shipped_list("official.toml")
                agent.warmer = Warmer(agent, list_path, trusted_keys(config))
                nursery.start_soon(agent.warmer.run)
            try:
                yield agent
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(cache.close)


async def _run_swarm(
    agent: Agent, settings: SwarmSettings, directory: Path, *, task_status: trio.TaskStatus[Swarm]
) -> None:
    async with open_swarm(settings, directory, agent.events.send) as swarm:
        task_status.started(swarm)
        while True:  # libtorrent forgets a connection's byte counts when it closes: read them while it lives
            agent.stats.bytes_to_peers = swarm.refresh_peer_bytes().uploaded
            await trio.sleep(1.0)
