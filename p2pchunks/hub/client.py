"""The hub client: one interface over hub transports, with bounded parallelism, retries and verification.

Owns: the :class:`Transport` interface and its HTTP implementation, the choice of transport by URL scheme
(:func:`transport_for`, the one place that maps schemes; see docs/zos.md for what each names):

    http(s)://HOST/PATH/                 our own hub root over HTTP (``chunks/ab/cd/<id>``, ``manifests/``)
    rfs+http(s)://HOST/PATH              an rfs HTTP store (``<id[0:2]>/<id>``), ``hub.rfsstore``
    server://SCHEME/HOST[:PORT][/PATH]   an ``rfs server``'s block API (``/api/v1/block/<id>``), ``hub.rfsstore``
    zdb://HOST[:PORT][/NAMESPACE]        a 0-db such as the zos hub, ``zos.zdb``

and :class:`HubClient`'s policy: at most ``concurrency``
requests at once, every chunk verified against its id before anyone sees it, jittered exponential backoff
(``policy.retry.backoff_s``) on timeouts, 5xx/resets and corrupt bytes, an optional byte-rate budget. Its defaults
are the config's (``[fetch]``). Must not know: the cache, peers, manifests'
contents. Errors stay distinct: :class:`ChunkNotFound` (the hub says it has no such chunk: never retried),
:class:`HubTimeout` and :class:`HubUnavailable` (retried), :class:`ChunkCorrupt` (retried; raised when the hub
kept sending wrong bytes), :class:`HubError` (any other refusal, e.g. 403: not retried).
"""

from __future__ import annotations

import random
import re
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Protocol
from urllib.parse import quote, urlsplit

import httpx
import trio

from ..config.schema import FetchSection
from ..errors import BadConfig, ChunkCorrupt, ChunkNotFound, HubError, HubTimeout, HubUnavailable, ManifestNotFound
from ..extras import missing_extra
from ..ids import Verifier, chunk_relpath, default_verifier, validate_chunk_id
from ..policy.retry import backoff_s
from .ratelimit import TokenBucket

MAX_BODY_BYTES = 64 * 1024 * 1024
"""Larger answers are refused: no chunk or manifest is this big, and a broken hub must not fill our memory."""
MIN_BODY_BPS = 1024
"""A body must arrive at least this fast on average (after ``timeout`` of grace): a hub that trickles bytes just
inside the read timeout cannot hold a request slot for ever. Far below any real share of a busy hub."""
BACKOFF = 0.2
"""Seconds before the first retry of a request (doubling per failure, up to ``MAX_BACKOFF``)."""
MAX_BACKOFF = 10.0
VERIFY_IN_THREAD_BYTES = 64 * 1024
"""Hashing a bigger answer blocks the event loop for long enough that a worker thread (GIL released) is cheaper."""
_ABSOLUTE_URL = re.compile(r"\Ahttps?://", re.IGNORECASE)


def is_url(ref: str) -> bool:
    """Whether ``ref`` is an absolute ``http(s)://`` URL (any case) rather than a name, e.g. of a manifest."""
    return _ABSOLUTE_URL.match(ref) is not None


class Transport(Protocol):
    async def fetch_chunk(self, chunk_id: str) -> bytes:
        """The bytes stored under ``chunk_id``; raises ChunkNotFound (definitive), HubTimeout, HubUnavailable."""
        ...

    async def fetch_manifest(self, name: str) -> bytes:
        """The manifest ``name``; raises ManifestNotFound, HubTimeout, HubUnavailable."""
        ...

    async def aclose(self) -> None: ...


class Hub(Protocol):
    """What the agent asks of its hub: one :class:`HubClient`, or a ``HubPool`` over several."""

    async def get_chunk(self, chunk_id: str) -> bytes: ...

    async def get_manifest(self, name_or_url: str) -> bytes: ...


_FIRST_BYTE: ContextVar[float | None] = ContextVar("p2pchunks_hub_first_byte", default=None)


def first_byte_s() -> float | None:
    """Seconds from request to the answer's head, of the last successful HTTP hub answer in this task (None: not
    known since :func:`forget_first_byte`, e.g. a zdb hub, which answers in one piece). The hub window's latency
    sample (``policy.hubwindow``)."""
    return _FIRST_BYTE.get()


def forget_first_byte() -> None:
    _FIRST_BYTE.set(None)


class HttpFetcher:
    """GET (or HEAD) one URL, with hub failures translated into our errors once, here."""

    def __init__(self, *, timeout: float, max_connections: int) -> None:
        self._timeout = timeout
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            trust_env=False,
        )

    async def get(self, url: str, missing: Callable[[str], Exception]) -> bytes:
        started = trio.current_time()
        try:
            async with self._client.stream("GET", url) as response:
                status = response.status_code
                if status == 200:
                    _FIRST_BYTE.set(trio.current_time() - started)
                    return await _read_capped(response, url, self._timeout)
        except httpx.TimeoutException as error:
            raise HubTimeout(f"{url}: {type(error).__name__}") from error
        except httpx.RequestError as error:
            raise HubUnavailable(f"{url}: {type(error).__name__}: {error}") from error
        detail = f"hub answered {status} for {url}"
        if status in (404, 410):
            raise missing(detail)
        if status == 504:
            raise HubTimeout(detail)
        if status in (408, 429) or status >= 500:
            raise HubUnavailable(detail)
        raise HubError(detail)

    async def exists(self, url: str) -> bool:
        """HEAD ``url``: True on 200, False on 404/410; other answers raise as for :meth:`get`."""
        try:
            status = (await self._client.head(url)).status_code
        except httpx.TimeoutException as error:
            raise HubTimeout(f"{url}: {type(error).__name__}") from error
        except httpx.RequestError as error:
            raise HubUnavailable(f"{url}: {type(error).__name__}: {error}") from error
        if status == 200:
            return True
        if status in (404, 410):
            return False
        detail = f"hub answered {status} to HEAD {url}"
        raise HubUnavailable(detail) if status in (408, 429) or status >= 500 else HubError(detail)

    async def aclose(self) -> None:
        await self._client.aclose()


async def _read_capped(response: httpx.Response, url: str, grace: float) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HubError(f"{url}: answer of {declared} bytes is over {MAX_BODY_BYTES}")
    expected = int(declared) if declared.isdigit() else MAX_BODY_BYTES
    parts: list[bytes] = []
    size = 0
    with trio.move_on_after(grace + expected / MIN_BODY_BPS) as deadline:
        async for piece in response.aiter_bytes():
            size += len(piece)
            if size > MAX_BODY_BYTES:
                raise HubError(f"{url}: answer is over {MAX_BODY_BYTES} bytes")
            parts.append(piece)
    if deadline.cancelled_caught:
        raise HubTimeout(f"{url}: body slower than {MIN_BODY_BPS} B/s ({size} bytes received)")
    return b"".join(parts)


class HttpTransport:
    """A hub root served over HTTP(S): ``<base>chunks/ab/cd/<id>`` and ``<base>manifests/<name>.p2p``.

    The layout path works against the reference hub and against any static file server of a hub root.
    """

    def __init__(self, base_url: str, *, timeout: float, max_connections: int) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self._fetcher = HttpFetcher(timeout=timeout, max_connections=max_connections)

    async def fetch_chunk(self, chunk_id: str) -> bytes:
        url = f"{self.base_url}chunks/{chunk_relpath(chunk_id)}"
        return await self._fetcher.get(url, partial(ChunkNotFound, chunk_id))

    async def fetch_manifest(self, name: str) -> bytes:
        filename = name if name.endswith(".p2p") else f"{name}.p2p"
        return await self._fetcher.get(f"{self.base_url}manifests/{quote(filename, safe='')}", ManifestNotFound)

    async def aclose(self) -> None:
        await self._fetcher.aclose()


HUB_SCHEMES = ("http", "https", "rfs+http", "rfs+https", "server", "zdb")


def transport_for(url: str, *, timeout: float, max_connections: int) -> Transport:
    """The transport for a hub URL, by scheme (see the module docstring)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return HttpTransport(url, timeout=timeout, max_connections=max_connections)
    if scheme in ("rfs+http", "rfs+https"):
        from .rfsstore import RfsHttpTransport

        return RfsHttpTransport(url, timeout=timeout, max_connections=max_connections)
    if scheme == "server":
        from .rfsstore import RfsServerTransport

        return RfsServerTransport(url, timeout=timeout, max_connections=max_connections)
    if scheme == "zdb":
        try:
            from ..zos.zdb import ZdbTransport  # the zos extra: an HTTP-only agent never loads the zdb client
        except ImportError as error:
            raise missing_extra(error, f"the zdb:// hub {url}") from None
        return ZdbTransport(url, timeout=timeout, max_connections=max_connections)
    raise BadConfig(f"hub URL must be one of {', '.join(s + '://' for s in HUB_SCHEMES)}; got {redact(url)!r}")


def hub_url_for_route(route: str) -> str:
    """The hub URL of an rfs store URL as a ``.fl`` route names it: rfs reads ``http(s)://`` as its HTTP store
    layout, which our config spells ``rfs+http(s)://``; ``server://`` and ``zdb://`` mean the same in both."""
    scheme = urlsplit(route).scheme.lower()
    if scheme in ("http", "https"):
        return f"rfs+{route}"
    if scheme in ("server", "zdb"):
        return route
    raise BadConfig(f"store {redact(route)!r}: p2pchunks reads blocks from zdb://, http(s):// and server:// stores")


def redact(url: str) -> str:
    """``url`` fit for logs and ``/status``: a password or a ``token=`` query value is replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = re.sub(r"(?i)(\A|&)(token=)[^&]*", r"\1\2***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return parts._replace(netloc=netloc, query=query).geturl()


@dataclass
class HubClientStats:
    requests: int = 0
    """Transport calls made (first tries and retries)."""
    bytes: int = 0
    """Bytes received, including those that failed verification."""
    retries: int = 0
    failures: int = 0
    """Calls of get_chunk/get_manifest that ended in an error."""
    corrupt: int = 0
    """Answers that did not hash to the chunk id asked for."""


class HubClient:
    """Chunks and manifests from one hub; see the module docstring for the policy."""

    def __init__(
        self,
        url: str,
        *,
        concurrency: int = FetchSection.hub_concurrency,
        timeout: float = FetchSection.hub_timeout_s,
        retries: int = FetchSection.hub_retries,
        backoff: float = BACKOFF,
        rate_bps: float | None = None,
        verifier: Verifier = default_verifier,
        transport: Transport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if concurrency < 1 or retries < 0 or backoff < 0 or timeout <= 0:
            raise BadConfig(f"bad hub client settings: {concurrency=} {retries=} {backoff=} {timeout=}")
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.verifier = verifier
        self.transport = transport or transport_for(url, timeout=timeout, max_connections=concurrency)
        self.stats = HubClientStats()
        self._concurrency = concurrency
        self._slots = trio.Semaphore(concurrency)
        self._bucket = TokenBucket(rate_bps) if rate_bps else None
        self._rng = rng or random.Random()
        self._url_fetcher: HttpFetcher | None = None

    async def get_chunk(self, chunk_id: str) -> bytes:
        """The verified bytes of ``chunk_id``; ChunkNotFound, ChunkCorrupt, HubTimeout, HubUnavailable or HubError."""
        validate_chunk_id(chunk_id)
        return await self._with_retries(partial(self.transport.fetch_chunk, chunk_id), chunk_id)

    async def get_manifest(self, name_or_url: str) -> bytes:
        """A manifest by name (through the transport) or by absolute ``http(s)://`` URL."""
        if is_url(name_or_url):
            if self._url_fetcher is None:
                self._url_fetcher = HttpFetcher(timeout=self.timeout, max_connections=self._concurrency)
            return await self._with_retries(partial(self._url_fetcher.get, name_or_url, ManifestNotFound), None)
        return await self._with_retries(partial(self.transport.fetch_manifest, name_or_url), None)

    async def _with_retries(self, fetch: Callable[[], Awaitable[bytes]], chunk_id: str | None) -> bytes:
        last: HubUnavailable | ChunkCorrupt | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
                await trio.sleep(backoff_s(attempt, base_s=self.backoff, max_s=MAX_BACKOFF, jitter=self._rng.random()))
            try:
                async with self._slots:
                    self.stats.requests += 1
                    data = await fetch()
                    self.stats.bytes += len(data)
                    if self._bucket is not None:
                        await self._bucket.acquire(len(data))
                    if chunk_id is None or await self._verify(chunk_id, data):
                        return data
            except HubUnavailable as error:  # HubTimeout included
                last = error
                continue
            except BaseException:
                self.stats.failures += 1
                raise
            self.stats.corrupt += 1
            last = ChunkCorrupt(chunk_id, source=self.url)
        self.stats.failures += 1
        assert last is not None
        raise last

    async def _verify(self, chunk_id: str, data: bytes) -> bool:
        if len(data) >= VERIFY_IN_THREAD_BYTES:  # hashing releases the GIL: keep the event loop free
            return await trio.to_thread.run_sync(self.verifier, chunk_id, data)
        return self.verifier(chunk_id, data)

    async def aclose(self) -> None:
        try:
            await self.transport.aclose()
        finally:
            if self._url_fetcher is not None:
                await self._url_fetcher.aclose()

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
