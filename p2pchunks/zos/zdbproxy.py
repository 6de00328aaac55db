"""The zdb proxy: the agent seen as a 0-db, so a stock rfs can read its blocks from the swarm.

Owns the adapter between ``zdbserver.ZdbBackend`` (raw keys, namespaces) and the agent's chunk path (hex ids):

    GET key       16- or 32-byte key → hex chunk id → ``get_blob(id)`` → the stored (encrypted) bytes;
                  nil when the chunk is not found or not available now (ChunkNotFound, ChunkUnavailable),
                  and for keys that cannot be chunk ids
    EXISTS key    ``has(id)`` (never fetches) → :1 / :0

Every namespace is the same (rfs v1 selects the flist's backend namespace, rfs v2 the route's; both see one
content-addressed store). A rewritten flist (``flistrewrite``) points rfs here; the agent passes
``get_blob = lambda id: read(await agent.chunk(id))`` and a ``has`` that looks at its cache only.

Must not know: the cache, peers, hubs, verification (``get_blob`` hands out verified bytes), RESP.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from ..errors import ChunkNotFound, ChunkUnavailable
from ..ids import ID_LENGTHS
from .zdbserver import ZdbServer

__all__ = ["AgentBackend", "serve_zdb_proxy"]

log = logging.getLogger(__name__)

GetBlob = Callable[[str], Awaitable[bytes]]
HasChunk = Callable[[str], Awaitable[bool]]
DEFAULT_PROXY_PORT = 9910


def _chunk_id(key: bytes) -> str | None:
    return key.hex() if len(key) * 2 in ID_LENGTHS else None


class AgentBackend:
    """A ``ZdbBackend`` over the agent's chunk path; see the module docstring."""

    def __init__(self, get_blob: GetBlob, has: HasChunk) -> None:
        self._get_blob = get_blob
        self._has = has
        self.served = 0
        self.missed = 0

    async def get(self, namespace: str, key: bytes) -> bytes | None:
        chunk_id = _chunk_id(key)
        if chunk_id is None:
            self.missed += 1
            return None
        try:
            data = await self._get_blob(chunk_id)
        except (ChunkNotFound, ChunkUnavailable) as error:
            self.missed += 1
            log.info("zdb proxy: GET %s → nil (%s)", chunk_id, error)
            return None
        self.served += 1
        return data

    async def exists(self, namespace: str, key: bytes) -> bool:
        chunk_id = _chunk_id(key)
        return chunk_id is not None and await self._has(chunk_id)


async def serve_zdb_proxy(
    get_blob: GetBlob,
    has: HasChunk,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PROXY_PORT,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the agent's chunks as a zdb on ``host:port`` until cancelled; reports the bound port."""
    server = ZdbServer(AgentBackend(get_blob, has))
    log.info("zdb proxy starting on %s:%s", host, port)
    await server.serve(host, port, task_status=task_status)
