"""The composition root: the whole agent built in one place, every service in one nursery.

``open_agent`` makes each service with exactly the collaborators it uses (narrow interfaces, no service reaching
into another's attributes), starts the long-running ones, and yields an :class:`Agent`: a frozen record of the
services and the ports they bound, for the CLI, the tests and netsim. Nothing is assigned after construction and
nothing outlives the block: leaving it cancels every task, stops the swarm and closes the cache.

Wiring, in the order the data flows:

    hub client ─┐                         ┌─ piece keeper (libtorrent's news ↔ the cache's index, bans)
    swarm ──────┼─ data path (chunk, deliver) ─ jobs (fetch jobs) ─ warmer (official list, custody)
    cache ──────┘        │                                          API, tracker, zdb proxy (listeners)
                         └─ repairs (damaged chunks fetched again)   scrubber (files re-hashed in turn)
    farm view (members, replicas) ─ FarmHints ─ the cache's eviction; its members ─ the warmer's custody

The ``FarmHints`` snapshot is made before the cache (which reads it from its threads) and filled by the farm view.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ..cache.store import ChunkCache
from ..config.schema import Config, split_hostport
from ..extras import require
from ..formats.manifest import Manifest
from ..formats.seedlist import shipped_list
from ..http.server import ServerLimits, bound_port, open_listeners, serve_http, serve_listeners
from ..hub.pool import HubPool
from ..policy.eviction import FarmHints, Pin
from ..policy.fetch import FetchParams
from ..swarm import alerts
from ..swarm.session import Swarm, SwarmSettings, open_swarm
from ..swarm.tracker import Tracker, known_among
from .api import MAX_BODY, Api, ApiServices, check_exposure
from .arrivals import Arrivals, Source
from .datapath import ChunkSource, DataPath
from .farm import FarmView
from .fill import fill_rfs_cache
from .jobs import Job, JobSettings, JobTable
from .manifests import ManifestBook
from .metrics import AgentStats, render_prometheus
from .pieces import PieceKeeper
from .repair import Repairs
from .scrubber import Scrubber
from .status import agent_status, gauges
from .swarmconfig import swarm_settings, trusted_keys, with_bootstrap
from .warmer import CustodyRole, Warmer, WarmSettings

log = logging.getLogger(__name__)

PEER_BYTES_EVERY_S = 1.0
DISK_THREADS = 4
"""Chunk reads, writes and hashes at once: each holds at most a chunk's bytes."""


@dataclass(frozen=True)
class Ports:
    api: int
    swarm: int | None = None
    tracker: int | None = None
    zdb: int | None = None
    rfs_http: int | None = None


@dataclass(frozen=True)
class Agent:
    """A running agent: its services and ports. Create with :func:`open_agent`."""

    config: Config
    cache: ChunkCache
    hub: HubPool
    swarm: Swarm | None
    stats: AgentStats
    arrivals: Arrivals
    datapath: DataPath
    manifests: ManifestBook
    jobs: JobTable
    repairs: Repairs
    scrubber: Scrubber
    warmer: Warmer | None
    tracker: Tracker | None
    ports: Ports
    farm: FarmView | None = None

    # A few doors the CLI, tests and netsim use, each one call to the service that owns it.

    async def fetch(
        self, ref: str, *, pin: Pin = Pin.NONE, hub: ChunkSource | None = None, stream: bool = False
    ) -> Job:
        return await self.jobs.start(ref, pin=pin, hub=hub, stream=stream)

    async def chunk(self, chunk_id: str) -> bytes:
        return await self.datapath.chunk(chunk_id)

    async def manifest(self, ref: str) -> Manifest:
        return await self.manifests.resolve(ref)

    async def fill(self, ref: str, *, quota_bytes: int | None = None) -> dict[str, Any]:
        """Fill the node's rfs cache with the image ``ref`` (the report, as a dict); ``quota_bytes``: this fill's
        quota on the rfs cache (the smaller of it and ``rfs.quota_bytes`` applies)."""
        rfs = self.config.rfs
        quotas = [q for q in (rfs.quota_bytes or None, quota_bytes) if q is not None]
        return await fill_rfs_cache(
            ref,
            cache_dir=rfs.cache_dir,
            quota_bytes=min(quotas) if quotas else None,
            min_free_bytes=rfs.min_free_bytes,
            start=lambda r: self.jobs.start(r, stream=True),
            holds=self.datapath.holds,
            read=self.datapath.chunk,
            arrivals=self.arrivals,
            concurrency=self.config.fetch.hub_slots,
        )

    @property
    def api_port(self) -> int:
        return self.ports.api

    @property
    def tracker_port(self) -> int:
        return self.ports.tracker or 0

    @property
    def zdb_port(self) -> int:
        return self.ports.zdb or 0

    @property
    def rfs_http_port(self) -> int:
        return self.ports.rfs_http or 0

    @property
    def me(self) -> str:
        return identity(self.config.swarm.listen, self.swarm)


def identity(listen: str, swarm: Swarm | None) -> str:
    """Our key in the rendezvous split: the swarm address peers see us by."""
    host = SwarmSettings(listen=listen).host
    if host not in ("0.0.0.0", "::") or swarm is None:
        return host
    for torrent in swarm.torrents.values():
        for ip in torrent.local_ips():
            return ip
    return host


@asynccontextmanager
async def open_agent(config: Config, *, swarm: bool | None = None) -> AsyncIterator[Agent]:
    """Run an agent for as long as the block runs (``swarm=False``: hub only, the zos baseline)."""
    use_swarm = config.swarm.enabled if swarm is None else swarm
    check_exposure(config.api.listen, config.api.token)
    if config.rfs.zdb_listen:  # the zos extra: refuse at start, not in the middle of the services' start
        require("p2pchunks.zos.zdbproxy", f"rfs.zdb_listen = {config.rfs.zdb_listen!r}")
    if config.rfs.cache_dir:  # ... nor at the first fill
        require("p2pchunks.zos.rfscache", f"rfs.cache_dir = {config.rfs.cache_dir!r}")
    if config.rfs.http_listen:
        require("p2pchunks.zos.rfsproxy", f"rfs.http_listen = {config.rfs.http_listen!r}")
    section, fetch = config.cache, config.fetch
    directory = Path(config.agent.cache_dir)
    custody = config.custody.enabled and use_swarm and config.warm.official and config.agent.mode != "seed"
    hints = FarmHints() if custody else None
    cache = await trio.to_thread.run_sync(
        lambda: ChunkCache(
            directory,
            budget_bytes=section.budget_bytes or None,
            budget_percent=section.budget_percent,
            high=section.high_watermark,
            low=section.low_watermark,
            farm=hints,
        )
    )
    try:
        hub_client = HubPool(
            config.agent.hub,
            concurrency=fetch.hub_concurrency,
            timeout=fetch.hub_timeout_s,
            retries=fetch.hub_retries,
            rate_bps=fetch.hub_rate_bps or None,
        )
        events_send, events = trio.open_memory_channel[alerts.SwarmEvent](float("inf"))
        async with hub_client as hub, AsyncExitStack() as stack:
            session: Swarm | None = None
            if use_swarm:
                settings = with_bootstrap(swarm_settings(config), config)
                session = await stack.enter_async_context(open_swarm(settings, directory, events_send.send_nowait))
            async with trio.open_nursery() as nursery:
                agent = await _build(config, cache, hub, session, events, directory, nursery, hints)
                try:
                    yield agent
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(cache.close)


async def _build(
    config: Config,
    cache: ChunkCache,
    hub: HubPool,
    swarm: Swarm | None,
    events: trio.MemoryReceiveChannel[alerts.SwarmEvent],
    directory: Path,
    nursery: trio.Nursery,
    hints: FarmHints | None,
) -> Agent:
    stats, arrivals, disk = AgentStats(hubs=[hub]), Arrivals(), trio.CapacityLimiter(DISK_THREADS)
    fetch = config.fetch
    datapath = DataPath(cache, hub, swarm, arrivals, stats, peer_wait_s=fetch.peer_wait_s, disk=disk)
    keeper = (
        PieceKeeper(swarm, cache, events, arrived=datapath.arrived, refetch=datapath.chunk, stats=stats, disk=disk)
        if swarm is not None
        else None
    )

    me = partial(identity, config.swarm.listen, swarm)

    async def join(manifest: Manifest) -> Any:
        return await keeper.join(manifest) if keeper is not None else None

    manifests = ManifestBook(directory / "manifests", cache, hub, join)
    repairs = Repairs(datapath.chunk, lambda chunk_id: bool(manifests.referencing(chunk_id)))
    cache.add_damage_listener(repairs.damaged)

    async def sweep(torrent: Any) -> None:
        if keeper is not None:
            await keeper.sweep(torrent)

    jobs = JobTable(
        nursery,
        cache,
        hub,
        arrivals,
        resolve=manifests.resolve,
        remember=lambda manifest, pin: manifests.remember(manifest, pin=pin),
        join=join,
        sweep=sweep,
        missing=datapath.missing,
        deliver=datapath.deliver,
        me=me,
        settings=JobSettings(
            _fetch_params(config), fetch.job_timeout_s, fetch.give_up_s, seed=config.agent.mode == "seed"
        ),
        stats=stats,
    )
    scrubber = Scrubber(cache, config.cache.scrub_rate_bps, disk)
    if keeper is not None and swarm is not None:
        cache.add_evict_listener(keeper.left_cache)
        await nursery.start(keeper.run)
        nursery.start_soon(_count_peer_bytes, swarm, stats)
    await nursery.start(repairs.run)
    report = await trio.to_thread.run_sync(cache.reconcile)  # damage it finds reaches the repairs
    if report.removed_files or report.dropped_rows or report.rehashed:
        log.info("cache reconciled: %s", report)
    nursery.start_soon(scrubber.run)  # once index and disk agree: not hashing beside the reconcile

    api_host, api_port = split_hostport(config.api.listen)
    api_listeners = await open_listeners(api_host, api_port)
    tracker: Tracker | None = None
    tracker_port = zdb_port = None
    if config.tracker.enabled:
        committed = jobs.fetching if config.agent.mode == "seed" else None
        # only torrents of manifests this agent holds (the official images' among them, once resolved)
        known = known_among(lambda: (m.infohash for m in manifests.known.values()))
        tracker = Tracker(known, interval=config.tracker.interval_s, committed=committed)
        host, port = split_hostport(config.tracker.listen)
        tracker_port = await nursery.start(partial(serve_http, tracker.handle, host, port))
    if config.rfs.zdb_listen:
        from ..zos.zdbproxy import serve_zdb_proxy  # the zos extra (checked at start)

        host, port = split_hostport(config.rfs.zdb_listen)
        zdb_port = await nursery.start(serve_zdb_proxy, datapath.chunk, datapath.holds, host, port)
    rfs_http_port = None
    if config.rfs.http_listen:
        from ..zos.rfsproxy import serve_rfs_store  # the zos extra (checked at start)

        host, port = split_hostport(config.rfs.http_listen)
        rfs_http_port = await nursery.start(serve_rfs_store, datapath.chunk, datapath.size_of, host, port)
    farm: FarmView | None = None
    role: CustodyRole | None = None
    warmer: Warmer | None = None

    def official() -> list[Manifest]:
        return warmer.official if warmer is not None else []

    if hints is not None and swarm is not None:
        farm, role = _custody(config, swarm, cache, hints, me, join, official)
    if config.warm.official:
        warmer = _warmer(config, manifests, jobs, cache, me, role)
    swarm_port = swarm.listen_port if swarm else None
    ports = Ports(bound_port(api_listeners), swarm_port, tracker_port, zdb_port, rfs_http_port)
    agent = Agent(
        config, cache, hub, swarm, stats, arrivals, datapath, manifests, jobs, repairs, scrubber, warmer, tracker,
        ports, farm,
    )  # fmt: skip

    api = Api(
        ApiServices(
            datapath,
            jobs,
            manifests,
            cache,
            stats,
            status=partial(agent_status, agent),
            metrics=lambda: render_prometheus(stats, partial(gauges, agent), hub.health),
            fill=lambda ref, quota: agent.fill(ref, quota_bytes=quota),
            token=config.api.token,
        )
    )
    limits = ServerLimits(max_body_bytes=MAX_BODY)
    await nursery.start(partial(serve_listeners, api.handle, api_listeners, limits=limits))
    await manifests.load_known()
    repairs.ready.set()
    if farm is not None:
        await nursery.start(farm.run)
    if warmer is not None:
        nursery.start_soon(_run_warmer, warmer, config, stats)
    return agent


async def _count_peer_bytes(swarm: Swarm, stats: AgentStats) -> None:
    """libtorrent forgets a connection's byte counts when it closes: read them while it lives."""
    while True:
        stats.bytes_to_peers = swarm.refresh_peer_bytes().uploaded
        await trio.sleep(PEER_BYTES_EVERY_S)


def _fetch_params(config: Config) -> FetchParams:
    fetch = config.fetch
    return FetchParams(
        discovery_grace_s=fetch.discovery_grace_s,
        hot_deadline_s=fetch.hot_deadline_s,
        owner_stall_s=fetch.owner_stall_s,
        peer_floor_bps=fetch.peer_floor_bps,
        peer_floor_window_s=fetch.peer_floor_window_s,
        hub_slots=fetch.hub_slots,
    )


def _custody(
    config: Config,
    swarm: Swarm,
    cache: ChunkCache,
    hints: FarmHints,
    me: Any,
    join: Any,
    official: Any,
) -> tuple[FarmView, CustodyRole]:
    """The farm view, and what the warmer needs to warm by custody."""
    section = config.custody
    farm = FarmView(
        torrents=lambda: swarm.torrents.values(),
        official=official,
        held=lambda ids: trio.to_thread.run_sync(cache.held, ids),
        me=me,
        hints=hints,
        hold_s=section.hold_s,
        copies=section.copies,
        refresh_s=section.refresh_s,
    )

    async def pin(chunk_ids: Any, drop: bool) -> None:
        await trio.to_thread.run_sync(lambda: cache.pin_chunks(chunk_ids, Pin.OFFICIAL, drop=drop))

    async def unofficial(manifest_id: str) -> None:
        def lower() -> None:
            if any(mid == manifest_id and pin is Pin.OFFICIAL for mid, _, pin in cache.manifests()):
                cache.set_manifest_pin(manifest_id, Pin.NONE)

        await trio.to_thread.run_sync(lower)

    role = CustodyRole(
        farm,
        copies=section.copies,
        share=section.share,
        settle_s=section.settle_s,
        budget=lambda: cache.marks.budget_bytes,
        join=join,
        pin=pin,
        pinned=lambda: trio.to_thread.run_sync(cache.pinned_directly, Pin.OFFICIAL),
        unofficial=unofficial,
    )
    return farm, role


def _warmer(
    config: Config, manifests: ManifestBook, jobs: JobTable, cache: ChunkCache, me: Any, role: CustodyRole | None
) -> Warmer:
    official = config.warm.official_file
    settings = WarmSettings(
        list_path=Path(official) if official else shipped_list("official.toml"),
        trusted=trusted_keys(config),
        refresh_s=config.warm.refresh_s,
        max_start_delay_s=config.warm.max_start_delay_s,
    )

    async def unpin(manifest_id: str) -> None:
        await trio.to_thread.run_sync(cache.set_manifest_pin, manifest_id, Pin.NONE)

    async def fetch(ref: str, pin: Pin, hub: ChunkSource, only: Any) -> Job:
        return await jobs.start(ref, pin=pin, hub=hub, only=only)

    return Warmer(settings, resolve=manifests.resolve, fetch=fetch, unpin=unpin, me=me, custody=role)


async def _run_warmer(warmer: Warmer, config: Config, stats: AgentStats) -> None:
    """The warmer fetches with its own hub pool: its own (low) budget, apart from on-demand reads."""
    async with HubPool(
        config.agent.hub,
        concurrency=4,
        timeout=config.fetch.hub_timeout_s,
        rate_bps=config.warm.hub_rate_bps or None,
    ) as warm_hub:
        stats.hubs.append(warm_hub)
        await warmer.run(warm_hub)


__all__ = ["Agent", "Ports", "Source", "identity", "open_agent"]
