"""The rfs HTTP store proxy: the agent seen as an rfs block store over HTTP, beside the zdb proxy.

Owns the block routes the next rfs reads (docs/zos.md), answered from the agent's chunk path:

    GET  /api/v1/block/<id>     the ``rfs server`` block API (route ``server://http/HOST:PORT``)
    GET  /<id[0:2]>/<id>        the rfs HTTP store layout (route ``http://HOST:PORT``) ...
    GET  /<id>                  ... and the flat path rfs falls back to on 404
    HEAD any of the above       200 with the size if the block is cached, else 404 (never fetches)

A GET runs ``read(id)`` (the agent's ``chunk``: cache → peers → hub, the bytes hashed as they are read, so rot
at rest is never served) and sends them; a HEAD asks ``size_of(id)`` (the cache only). Errors are the local
API's (``errors.http_status``): 404 for a block no source has,
400 for a malformed id, 503/504/502 when the hub failed, timed out or sent wrong bytes, each with a JSON body
naming the block; 405 for other methods. There is no authentication, as rfs sends none: bind it where rfs
reaches it (``127.0.0.1`` in ``ndmz`` on zos), never to a public address.

Must not know: the cache, peers, hubs, verification (``read`` hands out verified bytes), the agent's API.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

import trio

from ..errors import BadChunkId, P2PChunksError, http_status
from ..http.messages import error_response
from ..http.server import Request, Response, ServerLimits, serve_http
from ..ids import validate_chunk_id

__all__ = ["RfsStoreRoutes", "block_of", "serve_rfs_store"]

log = logging.getLogger(__name__)

Read = Callable[[str], Awaitable[bytes]]
SizeOf = Callable[[str], Awaitable[int | None]]
LIMITS = ServerLimits(max_body_bytes=64 * 1024)
_HEX = re.compile(r"\A[0-9A-Fa-f]+\Z")


def block_of(path: str) -> str | None:
    """The block a request path names in either rfs layout, or None when the path is none of the block routes.

    The id itself is not checked here (a malformed one is the handler's 400)."""
    parts = [part for part in path.split("/") if part]
    if len(parts) == 4 and parts[:3] == ["api", "v1", "block"]:
        return parts[3]
    if len(parts) == 2 and len(parts[0]) == 2 and parts[1][:2] == parts[0] and _HEX.match(parts[1]):
        return parts[1]
    if len(parts) == 1 and len(parts[0]) > 2 and _HEX.match(parts[0]):
        return parts[0]
    return None


class RfsStoreRoutes:
    """The request handler; ``served`` and ``missed`` count GETs answered with a block and without."""

    def __init__(self, read: Read, size_of: SizeOf) -> None:
        self._read = read
        self._size_of = size_of
        self.served = 0
        self.missed = 0

    async def handle(self, request: Request) -> Response:
        block = block_of(request.path)
        if block is None:
            return error_response(404, f"no route {request.path[:200]}")
        if request.method not in ("GET", "HEAD"):
            return error_response(405, f"{request.method} {request.path[:200]} is not supported", block)
        try:
            validate_chunk_id(block)
            if request.method == "HEAD":
                return await self._head(block)
            data = await self._read(block)
        except BadChunkId as error:
            return error_response(400, str(error))
        except P2PChunksError as error:
            self.missed += 1
            log.info("rfs store proxy: GET %s → %s (%s)", block, http_status(error), error)
            return error_response(http_status(error), str(error), block)
        self.served += 1
        return Response(200, [("content-type", "application/octet-stream")], data)

    async def _head(self, block: str) -> Response:
        size = await self._size_of(block)
        if size is None:
            return error_response(404, f"block {block} is not cached", block)
        return Response(200, [("content-type", "application/octet-stream"), ("content-length", str(size))], b"")


async def serve_rfs_store(
    read: Read,
    size_of: SizeOf,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the agent's blocks in both rfs HTTP layouts on ``host:port`` until cancelled; reports the port."""
    log.info("rfs store proxy starting on %s:%s", host, port)
    await serve_http(RfsStoreRoutes(read, size_of).handle, host, port, limits=LIMITS, task_status=task_status)
