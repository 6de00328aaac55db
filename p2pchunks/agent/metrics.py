"""What an agent counts, once: plain counters read by ``/status`` (JSON) and ``/metrics`` (Prometheus).

One ``AgentStats`` per agent (tests and the netsim run several agents in one process, so nothing is global);
``render_prometheus`` exposes it through a private registry with a custom collector, so the numbers in
``/status`` and ``/metrics`` can never disagree. What the hub clients count themselves (answers that failed
verification) is read from their own counters (``hubs``), not counted twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

HubRows = Callable[[], list[dict[str, Any]]]
"""Each hub's health row (``HubPool.health``): url, state, bytes, errors, missing, ..."""


class HubCounters(Protocol):
    """A hub client's own counters (``hub.client.HubClientStats``), as far as the agent reads them."""

    @property
    def corrupt(self) -> int: ...


class CountingHub(Protocol):
    """A hub client or pool; its ``stats`` are read each time (a pool sums its members' anew)."""

    @property
    def stats(self) -> HubCounters: ...


@dataclass
class AgentStats:
    chunks_from_cache: int = 0
    chunks_from_peers: int = 0
    chunks_from_hub: int = 0
    bytes_from_peers: int = 0
    bytes_from_hub: int = 0
    bytes_to_peers: int = 0
    """Payload uploaded to peers (the swarm's peer ledger, read every second and on each status request)."""
    chunks_served: int = 0
    bytes_served: int = 0
    corrupt_from_peers: int = 0
    peers_banned: int = 0
    cache_repairs: int = 0
    hub_reasons: Counter[str] = field(default_factory=Counter)
    api_requests: Counter[str] = field(default_factory=Counter)
    hubs: list[CountingHub] = field(default_factory=list, repr=False, compare=False)
    """The counters of every hub client the agent uses (the main one, the warmer's)."""

    @property
    def corrupt_from_hub(self) -> int:
        """Hub answers that did not hash to the chunk id asked for (each try counts)."""
        return sum(hub.stats.corrupt for hub in self.hubs)

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "hubs"}
        data["corrupt_from_hub"] = self.corrupt_from_hub
        data["hub_reasons"] = dict(self.hub_reasons)
        data["api_requests"] = dict(self.api_requests)
        return data


_COUNTERS = (
    ("chunks_from_cache", "Chunks a fetch job found already cached"),
    ("chunks_from_peers", "Chunks received from peers"),
    ("chunks_from_hub", "Chunks fetched from the hub"),
    ("bytes_from_peers", "Chunk bytes received from peers"),
    ("bytes_from_hub", "Chunk bytes fetched from the hub"),
    ("bytes_to_peers", "Payload bytes uploaded to peers (what this node served the swarm)"),
    ("chunks_served", "Chunks served to local readers (API)"),
    ("bytes_served", "Chunk bytes served to local readers (API)"),
    ("corrupt_from_peers", "Pieces from peers that failed verification"),
    ("corrupt_from_hub", "Chunks from the hub that failed verification"),
    ("peers_banned", "Peers banned for sending corrupt data"),
    ("cache_repairs", "Cached chunks found damaged by in-flight peer blocks and fetched again"),
)


class _StatsCollector(Collector):
    def __init__(self, stats: AgentStats, gauges: Callable[[], dict[str, float]], hubs: HubRows | None) -> None:
        self._stats = stats
        self._gauges = gauges
        self._hubs = hubs

    def collect(self) -> Iterator[Any]:
        for name, doc in _COUNTERS:
            yield CounterMetricFamily(f"p2pchunks_{name}", doc, value=getattr(self._stats, name))
        reasons = CounterMetricFamily("p2pchunks_hub_requests", "Hub requests by reason", labels=["reason"])
        for reason, count in sorted(self._stats.hub_reasons.items()):
            reasons.add_metric([reason], count)
        yield reasons
        api = CounterMetricFamily("p2pchunks_api_requests", "Local API requests by status", labels=["status"])
        for status, count in sorted(self._stats.api_requests.items()):
            api.add_metric([status], count)
        yield api
        for name, value in sorted(self._gauges().items()):
            yield GaugeMetricFamily(f"p2pchunks_{name}", name.replace("_", " "), value=value)
        if self._hubs is not None:
            yield from _hub_families(self._hubs())


def _hub_families(rows: list[dict[str, Any]]) -> Iterator[Any]:
    """One labelled series per hub of the pool: up or down, bytes received, errors, "no such chunk" answers."""
    up = GaugeMetricFamily("p2pchunks_hub_up", "1 while the hub is up, 0 while it is down", labels=["hub"])
    received = CounterMetricFamily("p2pchunks_hub_bytes", "Verified bytes received from the hub", labels=["hub"])
    errors = CounterMetricFamily("p2pchunks_hub_errors", "Failed hub requests", labels=["hub"])
    missing = CounterMetricFamily("p2pchunks_hub_missing", "Hub answers: no such chunk", labels=["hub"])
    for row in rows:
        label = [str(row["url"])]
        up.add_metric(label, 1.0 if row["state"] == "up" else 0.0)
        received.add_metric(label, row["bytes"])
        errors.add_metric(label, row["errors"])
        missing.add_metric(label, row["missing"])
    yield from (up, received, errors, missing)


def render_prometheus(
    stats: AgentStats, gauges: Callable[[], dict[str, float]], hubs: HubRows | None = None
) -> bytes:
    """The Prometheus text exposition of ``stats`` plus the current ``gauges()`` and ``hubs()`` (per-hub rows)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatsCollector(stats, gauges, hubs))
    return generate_latest(registry)
