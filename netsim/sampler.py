"""Watching a run from the outside while its clock runs: the hubs' counters and the processes' CPU.

Owns the timeline (every ``every_s``: nodes done, the hubs' bytes out, their requests in flight), its gaps (a sample
that fails, or takes longer than ``timeout_s``, is recorded in ``errors`` and sampling goes on: one slow answer of a
loaded hub is a gap, not the end of the run) and the CPU ledger of the run's processes (read about once a second
while they live, and once more before they are stopped). Must not know how nodes are driven: it is told which
processes there are, how many nodes are done and when the work is over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import httpx
import trio

from .timeline import CpuLedger

Processes = Callable[[], Iterable[tuple[str, int | None]]]
"""The processes to read now, as (name, pid or None)."""


class Sampler:
    def __init__(self, hub_urls: list[str], *, every_s: float, timeout_s: float) -> None:
        self.hub_urls = hub_urls
        """Every hub of the run (the list may be filled after the sampler is made)."""
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.timeline: list[tuple[float, int, int]] = []
        """(t, nodes done, hub bytes out so far: ``bytes_out``, which moves while a paced chunk is still going)."""
        self.hub_inflight: list[tuple[float, int]] = []
        """(t, data requests in flight at the hub(s)) at each sample: the farm's queue as the hub sees it."""
        self.errors: list[tuple[float, str]] = []
        """(t, what went wrong) for each sample that failed: a gap in ``timeline``."""
        self.cpu = CpuLedger()

    async def totals(self, http: httpx.AsyncClient) -> dict[str, Any]:
        """Every hub's ``_stats``, summed: bytes and requests add up, the peak is the highest."""
        each = [(await http.get(f"{url}_stats")).json() for url in self.hub_urls]
        return {
            "total_bytes": sum(stats["total_bytes"] for stats in each),
            "bytes_out": sum(stats.get("bytes_out", stats["total_bytes"]) for stats in each),
            "inflight": sum(stats.get("inflight") or 0 for stats in each),
            "peak_inflight": max(stats.get("peak_inflight") or 0 for stats in each),
            "bytes_by_hub": [stats["total_bytes"] for stats in each],
        }

    def read_cpu(self, processes: Iterable[tuple[str, int | None]]) -> None:
        for name, pid in processes:
            self.cpu.read(name, pid)

    async def run(
        self,
        http: httpx.AsyncClient,
        start: float,
        done: Callable[[], int],
        over: Callable[[], bool],
        processes: Processes,
    ) -> None:
        """Sample until ``over()``; ``done()``: how many nodes are done now."""
        count = 0
        while True:
            now = trio.current_time() - start
            try:
                with trio.fail_after(self.timeout_s):
                    stats = await self.totals(http)
            except (httpx.HTTPError, trio.TooSlowError, ValueError, KeyError) as error:
                self.errors.append((round(now, 3), repr(error) if str(error) else type(error).__name__))
            else:
                self.timeline.append((round(now, 3), done(), stats["bytes_out"]))
                self.hub_inflight.append((round(now, 3), stats["inflight"]))
            if count % max(1, round(1.0 / self.every_s)) == 0:
                self.read_cpu(processes())  # about once a second: a process that dies keeps its last reading
            count += 1
            if over():
                return
            await trio.sleep_until(start + now + self.every_s)
