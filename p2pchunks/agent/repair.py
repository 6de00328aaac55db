"""Repairs: a chunk dropped because its file was damaged is fetched again, if a known manifest needs it.

Owns the bridge from the cache's damage listener (called in whichever thread found the damage) into trio, and
one background refetch per damaged chunk through the data path (peers first, then the hub), a few at a time.
Failures are logged and counted, never raised: the chunk is simply missing until someone asks for it again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

from ..errors import P2PChunksError

log = logging.getLogger(__name__)

CONCURRENCY = 4


class Repairs:
    def __init__(self, refetch: Callable[[str], Awaitable[object]], needed: Callable[[str], bool]) -> None:
        self._refetch = refetch
        self._needed = needed
        self._send, self._receive = trio.open_memory_channel[str](10_000)
        self._token: trio.lowlevel.TrioToken | None = None
        self._busy: set[str] = set()
        self.ready = trio.Event()
        """Set once the agent knows its manifests: damage found before (at start-up) waits for it."""
        self.repaired = 0
        self.failed = 0

    def damaged(self, chunk_ids: Sequence[str]) -> None:
        """Cache damage listener (any thread)."""
        token = self._token
        if token is None:
            return
        for chunk_id in chunk_ids:
            try:
                token.run_sync_soon(self._send.send_nowait, chunk_id)
            except (trio.RunFinishedError, trio.WouldBlock):
                return

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        limiter = trio.CapacityLimiter(CONCURRENCY)
        async with trio.open_nursery() as nursery:
            task_status.started()
            await self.ready.wait()
            async for chunk_id in self._receive:
                if chunk_id not in self._busy and self._needed(chunk_id):
                    self._busy.add(chunk_id)
                    borrower = object()
                    await limiter.acquire_on_behalf_of(borrower)
                    nursery.start_soon(self._repair, chunk_id, limiter, borrower)

    async def _repair(self, chunk_id: str, limiter: trio.CapacityLimiter, borrower: object) -> None:
        try:
            await self._refetch(chunk_id)
            self.repaired += 1
            log.info("chunk %s: damaged file replaced", chunk_id)
        except P2PChunksError as error:
            self.failed += 1
            log.warning("chunk %s: damaged, and could not be fetched again: %s", chunk_id, error)
        finally:
            self._busy.discard(chunk_id)
            limiter.release_on_behalf_of(borrower)
