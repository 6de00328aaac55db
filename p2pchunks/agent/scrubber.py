"""The scrub: every cached file hashed again, in turn, at a rate low enough to go unnoticed.

Owns the pace (``rate_bps`` bytes a second, in steps of about ``step_s``) and the progress that ``/status``
shows: bytes checked in the current pass against the cache's size when the pass began, passes completed, damage
found. Which file comes next and what happens to a damaged one is the cache's (``cache/integrity.py``): it is
dropped, the swarm stops offering it and the agent fetches it again.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from ..cache.store import ChunkCache


@dataclass
class ScrubProgress:
    rate_bps: int
    passes: int = 0
    pass_bytes: int = 0
    """The cache's size when the current pass began: the pass ends when this many bytes were checked."""
    checked_bytes: int = 0
    checked_chunks: int = 0
    damaged: int = 0
    """Damaged files the scrub found (reads and start-up find others: ``cache.damaged_found``)."""


class Scrubber:
    def __init__(self, cache: ChunkCache, rate_bps: int, disk: trio.CapacityLimiter, *, step_s: float = 2.0) -> None:
        self._cache = cache
        self._disk = disk
        self._step_s = step_s
        self.progress = ScrubProgress(rate_bps)

    async def run(self) -> None:
        rate = self.progress.rate_bps
        if rate <= 0:
            await trio.sleep_forever()
        progress = self.progress
        while True:
            started = trio.current_time()
            if progress.checked_bytes >= progress.pass_bytes:
                if progress.pass_bytes:
                    progress.passes += 1
                progress.pass_bytes = self._cache.usage().bytes
                progress.checked_bytes = 0
            if progress.pass_bytes == 0:
                await trio.sleep(self._step_s * 10)
                continue
            async with self._disk:
                report = await trio.to_thread.run_sync(self._cache.scrub, max(1, int(rate * self._step_s)))
            progress.checked_bytes += report.bytes
            progress.checked_chunks += report.checked
            progress.damaged += len(report.damaged)
            await trio.sleep_until(started + max(self._step_s, report.bytes / rate))
