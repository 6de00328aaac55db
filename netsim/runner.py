"""Run a topology for real: a hub process, one agent process per node, and the measurements.

Owns the life of one run: build and publish the image, start the hub (``p2pchunks hub serve``) and the agents
(``p2pchunks agent|seed --config``) through a backend (loopback: each node on its own 127.0.0.x; netns: each node
in its own network namespace), drive them through their local APIs (fetch, warm), apply churn and hub outages
on schedule, and collect what happened: per-node completion times, hub egress (the hub's own counter), bytes
from peers by peer class (each agent's ``/status`` → ``peer_bytes``, classified by ``accounting``), what crossed
each NAT farm's WAN, and every chunk of every cache re-verified at the end.

Every wait is bounded (``deadline_s``); every process is stopped at the end, also on failure. A run always ends with
a result: a sample of the hub's ``_stats`` that fails or times out is a gap in the timeline, listed in
``sample_errors``; an agent that stops answering is that node's ``error`` (``driver``); the deadline, or a fault of
the harness itself, is listed in ``errors`` with the nodes still unfinished.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from p2pchunks.cache.store import ChunkCache
from p2pchunks.config.schema import FetchSection
from p2pchunks.errors import BadConfig
from p2pchunks.hub.publish import publish

from .accounting import Addresses, node_account, totals, wan_usage
from .backends import Backend, LoopbackBackend, free_port
from .bound import hot_bound_s, loopback_standin, lower_bound_s
from .driver import AgentApi, NodeRun
from .nodeconfig import API_PORT, make_image, node_config
from .sampler import Sampler
from .timeline import first_hub_chunk_s, longest_stall
from .topology import NodeSpec, Topology

HUB_PORT = 8080
"""The hub's port on backends other than loopback (which picks a free one)."""


@dataclass
class RunOptions:
    workdir: Path
    scenario: str
    deadline_s: float = 600.0
    poll_s: float = 0.25
    images: int = 1
    warm_only: bool = False
    """Nodes warm their official list by themselves (update-storm): wait for that instead of fetching."""
    sample_s: float = 0.2
    """How often the hub's counters are sampled into the timeline."""
    sample_timeout_s: float = 2.0
    """A sample not answered by then is a gap (``sample_errors``), not a wait."""
    patience_s: float = 30.0
    """How long an agent's API may fail in a row (its process alive) before its node is given up."""


class Run:
    """One scenario run; use ``await Run(...).execute()``."""

    image_seed = 1
    """Image ``i``'s contents are drawn from seed ``image_seed + i`` (``nodeconfig.make_image``)."""

    def __init__(
        self,
        topo: Topology,
        options: RunOptions,
        backend: Backend | None = None,
        node_extra: Callable[[NodeSpec], dict[str, dict[str, Any]]] | None = None,
    ) -> None:
        self.topo = topo
        self.options = options
        self.backend = backend or LoopbackBackend()
        self.node_extra = node_extra
        self.work = options.workdir
        self.nodes = [NodeRun(spec, self.backend.address(spec)) for spec in topo.nodes]
        self.hub_processes: list[subprocess.Popen[bytes]] = []
        self.hub_urls: list[str] = []
        """``topo.hubs`` in order: the first is ``hub_url``, the rest its mirrors (same root)."""
        self.hot_bytes = 0
        """Bytes of the images' hot (boot-critical) chunks, as published."""
        self.manifest_bytes = 0
        """Bytes of the images' manifests (each node fetches them from the hub before any chunk)."""
        self.image_names: list[str] = []
        self.hub_stats: dict[str, Any] = {}
        self.sampler = Sampler(self.hub_urls, every_s=options.sample_s, timeout_s=options.sample_timeout_s)
        self.harness_errors: list[str] = []
        """Faults of the run itself (deadline, a hub switch that failed, a bug): listed in the result's errors."""
        self.harness_cpu_s = 0.0
        """CPU seconds of this process (the harness) while the clock ran."""
        self._harness_mark: float | None = None
        self.load_average: list[float] = []
        """The machine's load average (1, 5, 15 min) when the clock started: how busy it was besides this run."""
        self.wan: dict[str, dict[str, int]] = {}
        self._seeds_fetching = trio.Event()
        self._seeds_pending = 0
        self.clock_started = trio.Event()
        """Set when the deploy is triggered (t = 0 of the timeline): every present node is up by then."""

    # ---- set-up ---------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        image = self.topo.image
        for i in range(self.options.images):
            name = f"image{i}"
            hot = make_image(self.work / "src" / name, image.image_bytes, image.hot_fraction, seed=self.image_seed + i)
            published = publish(
                self.work / "src" / name,
                self.work / "hub",
                name=name,
                version="1",
                chunk_size=image.chunk_kib * 1024,
                hot_paths=hot,
            )
            self.manifest_bytes += published.manifest_path.stat().st_size
            sizes = {chunk.id: chunk.size for entry in published.manifest.files for chunk in entry.chunks}
            self.hot_bytes += sum(sizes[chunk_id] for chunk_id in published.manifest.hot)
            self.image_names.append(name)
        (self.work / "nodes").mkdir(exist_ok=True)
        (self.work / "logs").mkdir(exist_ok=True)

    def _python(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "p2pchunks", *args]

    @property
    def hub_url(self) -> str:
        return self.hub_urls[0]

    def start_hub(self) -> None:
        loopback = isinstance(self.backend, LoopbackBackend)
        if self.topo.mirrors and not loopback:
            raise BadConfig("hub mirrors run on the loopback backend only (the netns lab forwards one hub port)")
        for i, hub in enumerate(self.topo.hubs):
            port = free_port(self.backend.hub_address) if loopback else HUB_PORT
            address = f"{self.backend.hub_address}:{port}"
            argv = self._python("hub", "serve", "--root", str(self.work / "hub"), "--listen", address)
            argv += ["--latency-ms", str(hub.latency_ms)]
            if hub.rate_mbps is not None:
                argv += ["--rate-mbps", str(hub.rate_mbps)]
            log = self.work / "logs" / ("hub.log" if i == 0 else f"hub{i}.log")
            self.hub_processes.append(self.backend.spawn(None, argv, log))
            self.hub_urls.append(f"http://{address}/")

    def start_node(self, node: NodeRun) -> None:
        seeds = [n.address for n in self.nodes if n.spec.role == "seed"]  # a seed announces to its own tracker
        extra = self.node_extra(node.spec) if self.node_extra else None
        config = self.work / "nodes" / f"{node.spec.name}.toml"
        routers = [self.nodes[0].address]
        backend = self.backend
        hubs = self.hub_urls if len(self.hub_urls) > 1 else self.hub_url
        text = node_config(
            self.topo, node.spec, node.address, hubs, self.work, seeds, extra, routers,
            nat_standin=backend.nat_standin, shapes_links=backend.shapes_links,
        )  # fmt: skip
        config.write_text(text)
        command = "seed" if node.spec.role == "seed" else "agent"
        node.process = self.backend.spawn(
            node.spec.name, self._python(command, "--config", str(config)), self.work / "logs" / f"{node.spec.name}.log"
        )

    # ---- driving --------------------------------------------------------------------------------------------

    def api(self, node: NodeRun) -> str:
        return f"http://{node.address}:{API_PORT}"

    def agent(self, http: httpx.AsyncClient, node: NodeRun) -> AgentApi:
        return AgentApi(http, node, self.api(node), patience_s=self.options.patience_s, poll_s=self.options.poll_s)

    async def wait_ready(self, http: httpx.AsyncClient, url: str) -> None:
        with trio.fail_after(60):
            while True:
                try:
                    if (await http.get(url)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.1)

    async def execute(self) -> dict[str, Any]:
        try:
            await trio.to_thread.run_sync(self.prepare)
            self.start_hub()
            async with httpx.AsyncClient(timeout=30.0, transport=self.backend.http_transport()) as http:
                try:
                    await self._drive(http)
                except Exception as error:  # a fault of the harness: still a result, with the fault in its errors
                    self._harness_fault("the run", error)
        finally:
            self.sampler.read_cpu(self._processes())
            if self._harness_mark is not None:
                self.harness_cpu_s = time.process_time() - self._harness_mark
            self.stop_all()
        corrupt = await trio.to_thread.run_sync(self.verify_caches)
        return self.result(corrupt)

    async def _drive(self, http: httpx.AsyncClient) -> None:
        for url in self.hub_urls:
            await self.wait_ready(http, f"{url}_stats")
        await self._prefill_seeds(http)
        await self._boot_nodes(http)
        for url in self.hub_urls:
            await http.post(f"{url}_stats/reset")
        wan_before = self.backend.wan_bytes()
        self.sampler.read_cpu(self._processes())
        self.sampler.cpu.mark()
        self._harness_mark = time.process_time()
        self.load_average = [round(x, 2) for x in os.getloadavg()]
        start = trio.current_time()
        self.clock_started.set()
        self._seeds_fetching = trio.Event()
        self._seeds_pending = sum(1 for n in self.nodes if n.spec.fetches and n.spec.role == "seed")
        if not self._seeds_pending:
            self._seeds_fetching.set()
        with trio.move_on_after(self.options.deadline_s) as deadline:
            async with trio.open_nursery() as nursery:
                for node, offset in zip(self.nodes, self.topo.start_times(), strict=True):
                    if node.spec.fetches:
                        nursery.start_soon(self._drive_node, http, node, start, start + offset)
                for url, hub in zip(self.hub_urls, self.topo.hubs, strict=True):
                    nursery.start_soon(self._outages, http, url, hub.down, start)
                nursery.start_soon(self._sample, http, start, nursery.cancel_scope)
        if deadline.cancelled_caught:
            unfinished = [n.spec.name for n in self.nodes if n.spec.fetches and n.done_s is None and not n.left]
            self.harness_errors.append(f"deadline of {self.options.deadline_s:g} s passed; unfinished: {unfinished}")
        try:
            self.hub_stats = await self.sampler.totals(http)
        except (httpx.HTTPError, ValueError, KeyError) as error:
            self._harness_fault("the hub's final _stats (the last sample stands in)", error)
            if self.sampler.timeline:
                self.hub_stats = {"total_bytes": self.sampler.timeline[-1][2]}
        self.wan = wan_usage(wan_before, self.backend.wan_bytes())
        for node in self.nodes:
            if node.process is not None and not node.left and node.process.poll() is None:
                await self.agent(http, node).peer_bytes()

    def _harness_fault(self, what: str, error: BaseException) -> None:
        self.harness_errors.append(f"harness: {what}: {error!r}")
        with (self.work / "logs" / "harness.log").open("a") as log:
            log.write("".join(traceback.format_exception(error)))

    async def _prefill_seeds(self, http: httpx.AsyncClient) -> None:
        """Seeds start full: they warm the images before the clock starts."""
        seeds = [n for n in self.nodes if not n.spec.fetches]
        for node in seeds:
            self.start_node(node)
        for node in seeds:
            await self.wait_ready(http, f"{self.api(node)}/status")
            for name in self.image_names:
                response = await http.post(f"{self.api(node)}/warm", json={"manifest": name, "wait": True}, timeout=600)
                if response.status_code != 200:
                    raise RuntimeError(f"seed {node.spec.name} could not warm {name}: {response.text}")

    async def _boot_nodes(self, http: httpx.AsyncClient) -> None:
        """Agents are daemons: the ones present from the start are up before the deploy is triggered at t = 0."""
        present = [n for n in self.nodes if n.spec.fetches and n.spec.join_s == 0 and n.process is None]
        for node in present:
            self.start_node(node)
        for node in present:
            await self.agent(http, node).wait_ready()

    async def _drive_node(self, http: httpx.AsyncClient, node: NodeRun, start: float, join_at: float) -> None:
        spec = node.spec
        await trio.sleep_until(join_at)
        if node.process is None:  # joins late (churn): boots now
            self.start_node(node)
        agent = self.agent(http, node)
        took_on = spec.role != "seed"

        def started() -> None:
            nonlocal took_on
            if not took_on:
                took_on = True
                self._seed_took_on()

        async with trio.open_nursery() as nursery:
            if spec.leave_s is not None:
                nursery.start_soon(self._leave, node, start + spec.leave_s, nursery.cancel_scope)
            try:
                if await agent.wait_ready():
                    await self._fetch_all(agent, start, started)
            except (ValueError, KeyError, TypeError) as error:  # an answer that is not what the API promises
                node.error = f"unreadable answer from the agent's API: {error!r}"
            finally:
                started()  # a seed that failed before taking on its jobs must not hold the farm back
            nursery.cancel_scope.cancel()

    async def _fetch_all(self, agent: AgentApi, start: float, started: Callable[[], None]) -> None:
        if self.options.warm_only:
            await agent.wait_warm(start)
            return
        if agent.node.spec.role != "seed":  # seeds that fetch take the images on first (within ms): _seed_took_on
            await self._seeds_fetching.wait()
        await agent.fetch(self.image_names, started, start)

    def _seed_took_on(self) -> None:
        """A fetching seed has its jobs: nodes may start. A seed counts as ``complete`` in its tracker only while it
        fetches, and a node's first announce decides whether it waits for the seed or splits the hub work with its
        farm until its next announce (a minute later), so at a release the seeds go first."""
        self._seeds_pending -= 1
        if self._seeds_pending <= 0:
            self._seeds_fetching.set()

    async def _leave(self, node: NodeRun, at: float, scope: trio.CancelScope) -> None:
        await trio.sleep_until(at)
        if node.process is not None and node.done_s is None:
            self.sampler.cpu.read(node.spec.name, node.process.pid)
            node.process.send_signal(signal.SIGKILL)
            node.left = True
            scope.cancel()

    async def _outages(
        self, http: httpx.AsyncClient, url: str, windows: tuple[tuple[float, float], ...], start: float
    ) -> None:
        for down, up in windows:
            for at, action in ((down, "down"), (up, "up")):
                await trio.sleep_until(start + at)
                await self._switch(http, url, action)

    async def _switch(self, http: httpx.AsyncClient, url: str, action: str) -> None:
        """``/_admin/<action>``, retried for a few seconds; a switch that never took is a harness error."""
        error: Exception | None = None
        for _ in range(10):
            try:
                if (await http.post(f"{url}_admin/{action}", timeout=self.options.sample_timeout_s)).status_code == 200:
                    return
            except httpx.HTTPError as failure:
                error = failure
            await trio.sleep(0.2)
        self.harness_errors.append(f"harness: could not switch {url} {action}: {error!r}")

    async def _sample(self, http: httpx.AsyncClient, start: float, scope: trio.CancelScope) -> None:
        fetching = [n for n in self.nodes if n.spec.fetches]
        await self.sampler.run(
            http,
            start,
            done=lambda: sum(1 for n in fetching if n.done_s is not None),
            over=lambda: all(n.done_s is not None or n.left or n.error for n in fetching),
            processes=self._processes,
        )
        scope.cancel()

    def _processes(self) -> list[tuple[str, int | None]]:
        """The processes whose CPU counts: the agents still running (not those that left) and the hubs."""
        named: list[tuple[str, int | None]] = [
            (n.spec.name, n.process.pid) for n in self.nodes if n.process is not None and not n.left
        ]
        return named + [(f"hub{i}", process.pid) for i, process in enumerate(self.hub_processes)]

    # ---- tear-down and results ------------------------------------------------------------------------------

    def stop_all(self) -> None:
        processes = [n.process for n in self.nodes if n.process is not None]
        processes += self.hub_processes
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.backend.close()

    def verify_caches(self) -> int:
        """Re-verify every chunk of every node's cache; return how many were corrupt."""
        corrupt = 0
        for node in self.nodes:
            directory = self.work / "nodes" / node.spec.name
            if (directory / "index.sqlite3").exists():
                with ChunkCache(directory, budget_bytes=64 * 2**30) as cache:
                    corrupt += cache.reconcile(full=True).corrupt
        return corrupt

    def result(self, corrupt: int) -> dict[str, Any]:
        fetching = [n for n in self.nodes if n.spec.fetches]
        done = [n.done_s for n in fetching if n.done_s is not None]
        standin = loopback_standin(self.topo) if self.backend.nat_standin else self.topo
        bound = lower_bound_s(standin)
        hot_bound = hot_bound_s(standin, self.hot_bytes, FetchSection().discovery_grace_s)
        addresses = Addresses(
            own={n.spec.name: n.address for n in self.nodes},
            seen_as={n.spec.name: self.backend.seen_as(n.spec) for n in self.nodes},
        )
        per_node = {
            n.spec.name: node_account(self.topo, n.spec, n.bytes_from_hub, n.peer_bytes, addresses, n.done_s)
            for n in self.nodes
        }
        last = max(done) if len(done) == len([n for n in fetching if not n.left]) and done else None
        hot = max((n.hot_s for n in fetching if n.hot_s is not None), default=None)
        image_bytes = self.topo.image.image_bytes * self.options.images  # each tree is exactly that many bytes
        timeline, cpu = self.sampler.timeline, self.sampler.cpu
        stall = longest_stall(timeline, sum(1 for n in fetching if not n.left))
        first_chunk = first_hub_chunk_s(timeline, len(fetching) * self.manifest_bytes)
        agents = [n.spec.name for n in self.nodes]
        return {
            "scenario": self.options.scenario,
            "backend": type(self.backend).__name__.removesuffix("Backend").lower(),
            "nodes": len(fetching),
            "seeds": sum(1 for n in self.nodes if n.spec.role == "seed"),
            "image_bytes": image_bytes,
            "hub_bytes": int(self.hub_stats.get("total_bytes", 0)),
            "hub_ratio": round(self.hub_stats.get("total_bytes", 0) / image_bytes, 3) if image_bytes else None,
            "hub_peak_inflight": self.hub_stats.get("peak_inflight"),
            "hub_bytes_by_hub": self.hub_stats.get("bytes_by_hub", []),
            "peer_bytes": sum(n.bytes_from_peers for n in fetching),
            "per_node_done_s": [None if n.done_s is None else round(n.done_s, 3) for n in fetching],
            "last_node_done_s": None if last is None else round(last, 3),
            "lower_bound_s": round(bound, 3),
            "ratio_to_bound": None if last is None or bound <= 0 else round(last / bound, 3),
            "hot_done_s": hot,
            "hot_bytes": self.hot_bytes,
            "hot_bound_s": round(hot_bound, 3),
            "hot_ratio_to_bound": None if hot is None or hot_bound <= 0 else round(hot / hot_bound, 3),
            "longest_stall_s": round(stall.seconds, 3),
            "longest_stall_start_s": round(stall.start_s, 3),
            "first_hub_chunk_s": first_chunk,
            "agent_cpu_s": cpu.total(agents, since_mark=True),
            "agent_boot_cpu_s": round(cpu.total(agents) - cpu.total(agents, since_mark=True), 2),
            "hub_cpu_s": cpu.total([f"hub{i}" for i in range(len(self.hub_processes))], since_mark=True),
            "harness_cpu_s": round(self.harness_cpu_s, 2),
            "load_average": self.load_average,
            "errors": self.harness_errors + [f"{n.spec.name}: {n.error}" for n in fetching if n.error],
            "api_failures": {n.spec.name: n.api_failures for n in self.nodes if n.api_failures},
            "left": [n.spec.name for n in fetching if n.left],
            "corrupt_chunks": corrupt,
            "hub_reasons": {n.spec.name: n.hub_reasons for n in fetching},
            "per_node": per_node,
            "bytes_by_source": totals(per_node),
            "wan": self.wan,
            "sample_s": self.options.sample_s,
            "sample_errors": self.sampler.errors,
            "hub_inflight": self.sampler.hub_inflight,
            "timeline": timeline,
        }
