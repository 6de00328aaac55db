"""The stores an flist names, as one hub: what ``import-flist`` reads blocks from when no ``--hub`` is given.

Owns reading a store location out of an flist and asking the right store for each block, as rfs does:

* **v2** ``.fl``: the ``route`` table maps ranges of a block id's first byte to store URLs; rfs asks every route
  that covers the block (``src/store/mod.rs``, the Router). Each URL keeps rfs's meaning (``http(s)://`` is an
  rfs HTTP store, see ``hub.client.hub_url_for_route``); the routes covering a block form a ``HubPool``, so a block
  is missing only when every one of them says so.
* **v1** ``.flist``: ``metadata.backend`` (``{"host", "port", "namespace", "password"}``) is a zdb.

Must not know: manifests, the cache, what the blocks mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from types import TracebackType
from urllib.parse import quote

from ..config.schema import FetchSection, join_hostport
from ..errors import BadConfig, BadFlist, ChunkNotFound, ManifestNotFound
from ..hub.client import hub_url_for_route
from ..hub.pool import HubPool
from ..ids import validate_chunk_id
from .flist import FlistImage

Route = tuple[int, int, str]


def store_routes(image: FlistImage) -> list[Route]:
    """``(first byte low, high, hub URL)`` for every store the flist names; BadFlist when it names none."""
    if image.version == 2:
        if not image.routes:
            raise BadFlist("the .fl has no route: give the hub (--hub)")
        return [(low, high, hub_url_for_route(url)) for low, high, url in image.routes]
    backend = image.backend or {}
    host, port = backend.get("host"), backend.get("port", 9900)
    if not isinstance(host, str) or not host or not isinstance(port, int):
        raise BadFlist("the .flist has no usable zdb backend: give the hub (--hub)")
    namespace = backend.get("namespace") or "default"
    password = backend.get("password")
    secret = f":{quote(password, safe='')}@" if isinstance(password, str) and password else ""
    return [(0, 255, f"zdb://{secret}{join_hostport(host, port)}/{quote(str(namespace), safe='')}")]


class RoutedHub:
    """``get_chunk`` from the pool of the routes that cover the block; one pool per distinct set of stores."""

    def __init__(self, routes: Sequence[Route], *, concurrency: int = FetchSection.hub_concurrency):
        if not routes:
            raise BadConfig("no store routes")
        self.routes = list(routes)
        self._pool = partial(HubPool, concurrency=concurrency)
        self._pools: dict[tuple[str, ...], HubPool] = {}

    async def get_chunk(self, chunk_id: str) -> bytes:
        first = int(validate_chunk_id(chunk_id)[:2], 16)
        urls = tuple(dict.fromkeys(url for low, high, url in self.routes if low <= first <= high))
        if not urls:
            raise ChunkNotFound(chunk_id, "no route of the flist covers it")
        pool = self._pools.get(urls)
        if pool is None:
            pool = self._pools[urls] = self._pool(urls)
        return await pool.get_chunk(chunk_id)

    async def get_manifest(self, name_or_url: str) -> bytes:
        raise ManifestNotFound(f"manifest {name_or_url!r}: flist stores carry blocks only")

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()

    async def __aenter__(self) -> RoutedHub:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
