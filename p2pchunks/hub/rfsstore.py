"""rfs's two HTTP block stores as hub transports: the HTTP store and the ``rfs server``'s block API.

Owns the URLs and the status codes of both, as the rfs development branch reads them (``src/store/http.rs``,
``src/store/server.rs``, ``src/server_api.rs``; docs/zos.md has the facts):

* **HTTP store** (``rfs+http(s)://BASE`` in our config; plain ``http(s)://BASE`` in a ``.fl`` route): a block is
  ``GET BASE/<id[0:2]>/<id>``; on 404 the flat ``GET BASE/<id>`` is tried. The segments are appended to BASE's
  path the way rfs's URL library does (a BASE path ending in ``/`` gives ``//``), and BASE's query is kept.
  404/410 on the flat path → ChunkNotFound; any other non-200 → as our HTTP hub's answers (5xx retried).
* **rfs server** (``server://SCHEME/HOST[:PORT][/PATH][?token=T]``): the URL's *host* is the scheme of the server,
  its path the rest: ``server://http/127.0.0.1:4000`` names ``http://127.0.0.1:4000``. A block is
  ``GET <server>/api/v1/block/<id>`` (404: no such block); ``HEAD`` of the same path says whether the server
  holds it. The token is only for uploads in rfs; reads send none, and we never show it (``client.redact``).

Neither store carries p2pchunks manifests: ``fetch_manifest`` raises ManifestNotFound at once.
Must not know: verification, retries, failing over (``HubClient`` and ``HubPool`` do those), the agent.
"""

from __future__ import annotations

from functools import partial
from urllib.parse import urlsplit

from ..errors import BadConfig, ChunkNotFound, ManifestNotFound
from ..ids import validate_chunk_id
from .client import HttpFetcher, redact

SERVER_SCHEMES = ("http", "https")


def rfs_http_block_urls(base: str, chunk_id: str) -> tuple[str, str]:
    """The two URLs rfs's HTTP store tries for a block: ``BASE/<id[0:2]>/<id>``, then ``BASE/<id>``."""
    validate_chunk_id(chunk_id)
    parts = urlsplit(base)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise BadConfig(f"rfs http store {redact(base)!r}: want http(s)://HOST[/PATH]")

    def push(*segments: str) -> str:
        path = parts.path or "/"
        for segment in segments:
            path = (path if path == "/" else path + "/") + segment
        return parts._replace(path=path, fragment="").geturl()

    return push(chunk_id[0:2], chunk_id), push(chunk_id)


def rfs_server_base(url: str) -> str:
    """``server://SCHEME/HOST[:PORT][/PATH][?token=T]`` → ``SCHEME://HOST[:PORT][/PATH]`` (as rfs builds it)."""
    parts = urlsplit(url)
    scheme = parts.netloc.lower()
    rest = parts.path.lstrip("/")
    if parts.scheme.lower() != "server" or scheme not in SERVER_SCHEMES or not rest:
        raise BadConfig(f"rfs server store {redact(url)!r}: want server://http/HOST[:PORT][/PATH] (or https)")
    return f"{scheme}://{rest}"


def rfs_server_block_url(base: str, chunk_id: str) -> str:
    """``<server>/api/v1/block/<id>``: the block API of an rfs server (string concatenation, as rfs does)."""
    return f"{base}/api/v1/block/{validate_chunk_id(chunk_id)}"


class RfsHttpTransport:
    """An rfs HTTP store; see the module docstring."""

    def __init__(self, url: str, *, timeout: float, max_connections: int) -> None:
        self.url = url
        self.base = url[len("rfs+") :] if url.lower().startswith("rfs+") else url
        rfs_http_block_urls(self.base, "0" * 64)  # refuse a bad base now, not at the first block
        self._fetcher = HttpFetcher(timeout=timeout, max_connections=max_connections)

    def __repr__(self) -> str:
        return f"RfsHttpTransport({redact(self.url)!r})"

    async def fetch_chunk(self, chunk_id: str) -> bytes:
        nested, flat = rfs_http_block_urls(self.base, chunk_id)
        missing = partial(ChunkNotFound, chunk_id)
        try:
            return await self._fetcher.get(nested, missing)
        except ChunkNotFound:
            return await self._fetcher.get(flat, missing)

    async def fetch_manifest(self, name: str) -> bytes:
        raise ManifestNotFound(f"manifest {name!r}: an rfs http store ({redact(self.url)}) carries blocks only")

    async def aclose(self) -> None:
        await self._fetcher.aclose()


class RfsServerTransport:
    """An ``rfs server``'s block API; see the module docstring."""

    def __init__(self, url: str, *, timeout: float, max_connections: int) -> None:
        self.url = url
        self.base = rfs_server_base(url)
        self._fetcher = HttpFetcher(timeout=timeout, max_connections=max_connections)

    def __repr__(self) -> str:
        return f"RfsServerTransport({redact(self.url)!r})"

    async def fetch_chunk(self, chunk_id: str) -> bytes:
        return await self._fetcher.get(rfs_server_block_url(self.base, chunk_id), partial(ChunkNotFound, chunk_id))

    async def exists(self, chunk_id: str) -> bool:
        """``HEAD /api/v1/block/<id>``: does the server hold the block?"""
        return await self._fetcher.exists(rfs_server_block_url(self.base, chunk_id))

    async def fetch_manifest(self, name: str) -> bytes:
        raise ManifestNotFound(f"manifest {name!r}: an rfs server ({redact(self.url)}) carries blocks only")

    async def aclose(self) -> None:
        await self._fetcher.aclose()
