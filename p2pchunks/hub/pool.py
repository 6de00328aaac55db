"""A hub client over several hubs (mirrors, a farm's own hub, a seed's hub root), with the ``HubClient`` interface.

Owns the walk of one request over the hubs: which hub next (``health.HealthBoard.choose``: up hubs by the share of
their budget in use, the first listed on a tie; a down hub only when its probe is due or nothing else is left),
what an answer means for that hub's health, and when the request ends:

    verified bytes                  → returned; the hub is up
    "no such chunk" (404, zdb nil)  → that hub is not asked again for it; the next one is
    timeout, refused, reset, 5xx,   → the hub is marked down (backoff, see ``health``); the request moves on to
    wrong bytes                       another hub at once, or waits its own jittered backoff before asking a hub
                                      it already asked (each hub at most ``retries + 1`` times per request)
    any other refusal (e.g. 403)    → marked down, not asked again by this request

A chunk is reported missing (ChunkNotFound) only when every hub said so; when some said so and others failed, the
last failure is raised (HubTimeout, HubUnavailable, ChunkCorrupt, HubError), as ``HubClient`` raises it. With one
hub the walk is exactly ``HubClient``'s retry loop (same number of requests, same backoff).

Each hub is a ``HubClient`` with ``retries=0`` (its transport, its ``concurrency`` slots, verification); the
byte-rate budget is shared by the whole pool. Must not know: the cache, peers, manifests' contents.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

import trio

from ..config.schema import FetchSection
from ..errors import BadConfig, ChunkCorrupt, ChunkNotFound, HubError, HubUnavailable, ManifestNotFound
from ..ids import Verifier, default_verifier, validate_chunk_id
from ..policy.retry import backoff_s
from .client import BACKOFF, MAX_BACKOFF, HubClient, HubClientStats, Transport, is_url, redact
from .health import HealthBoard
from .ratelimit import TokenBucket


def hub_urls(value: str | Sequence[str]) -> list[str]:
    """The hub list of ``agent.hub``: one URL or a list of them, each once."""
    urls = [value] if isinstance(value, str) else list(value)
    urls = [url.strip() for url in urls]
    if not urls or not all(urls):
        raise BadConfig("agent.hub: give at least one hub URL")
    if len(set(urls)) != len(urls):
        raise BadConfig(f"agent.hub: a hub is listed twice: {', '.join(redact(u) for u in urls)}")
    return urls


class HubPool:
    """Chunks and manifests from the first hub of a list that has them; see the module docstring."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        concurrency: int = FetchSection.hub_concurrency,
        timeout: float = FetchSection.hub_timeout_s,
        retries: int = FetchSection.hub_retries,
        backoff: float = BACKOFF,
        rate_bps: float | None = None,
        verifier: Verifier = default_verifier,
        transports: Sequence[Transport] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = trio.current_time,
        down_backoff: float = 1.0,
        max_down_backoff: float = 30.0,
    ) -> None:
        listed = hub_urls(urls)
        if retries < 0 or backoff < 0:
            raise BadConfig(f"bad hub settings: {retries=} {backoff=}")
        if transports is not None and len(transports) != len(listed):
            raise BadConfig("hub pool: one transport per hub URL")
        self.retries = retries
        self.backoff = backoff
        self.members = [
            HubClient(
                url,
                concurrency=concurrency,
                timeout=timeout,
                retries=0,
                verifier=verifier,
                transport=transports[i] if transports is not None else None,
            )
            for i, url in enumerate(listed)
        ]
        self.board = HealthBoard(
            [redact(url) for url in listed], concurrency, backoff=down_backoff, max_backoff=max_down_backoff
        )
        self.url = ", ".join(redact(url) for url in listed)
        self._bucket = TokenBucket(rate_bps) if rate_bps else None
        self._rng = rng or random.Random()
        self._clock = clock
        self._retries = 0
        self._failures = 0

    @property
    def stats(self) -> HubClientStats:
        """The pool's totals, in ``HubClient``'s terms."""
        members = [member.stats for member in self.members]
        return HubClientStats(
            requests=sum(s.requests for s in members),
            bytes=sum(s.bytes for s in members),
            retries=self._retries,
            failures=self._failures,
            corrupt=sum(s.corrupt for s in members),
        )

    def health(self) -> list[dict[str, object]]:
        """Each hub's state, bytes and errors (``/status``, ``/metrics``)."""
        return self.board.rows(self._clock())

    async def get_chunk(self, chunk_id: str) -> bytes:
        """The verified bytes of ``chunk_id`` from the first hub that has them."""
        validate_chunk_id(chunk_id)
        return await self._walk(lambda member: member.get_chunk(chunk_id))

    async def get_manifest(self, name_or_url: str) -> bytes:
        """A manifest by name (from the first hub that has it) or by absolute ``http(s)://`` URL (fetched once,
        with the pool's retries, outside the hubs' health)."""
        if is_url(name_or_url):
            return await self._fetch_url(name_or_url)
        return await self._walk(lambda member: member.get_manifest(name_or_url))

    async def _walk(self, fetch: Callable[[HubClient], Awaitable[bytes]]) -> bytes:
        board = self.board
        asked = [0] * len(self.members)
        done: set[int] = set()  # hubs this request will not ask again
        failure: HubError | ChunkCorrupt | None = None
        missing: ChunkNotFound | ManifestNotFound | None = None
        while (index := board.choose(self._clock(), done)) is not None:
            if asked[index]:
                self._retries += 1
                await trio.sleep(self._delay(asked[index]))
            asked[index] += 1
            board.started(index)
            try:
                data = await fetch(self.members[index])
            except (ChunkNotFound, ManifestNotFound) as error:
                board.said_missing(index)
                done.add(index)
                missing = error
                continue
            except (HubError, ChunkCorrupt) as error:
                board.failed(index, self._clock(), str(error))
                failure = error
                if asked[index] > self.retries or not isinstance(error, HubUnavailable | ChunkCorrupt):
                    done.add(index)
                continue
            except BaseException:
                board.abandoned(index)
                raise
            board.succeeded(index, len(data))
            if self._bucket is not None:
                await self._bucket.acquire(len(data))
            return data
        self._failures += 1
        if failure is not None:
            raise failure
        assert missing is not None
        raise missing

    async def _fetch_url(self, url: str) -> bytes:
        for attempt in range(self.retries + 1):
            if attempt:
                self._retries += 1
                await trio.sleep(self._delay(attempt))
            try:
                return await self.members[0].get_manifest(url)
            except HubUnavailable:
                if attempt == self.retries:
                    self._failures += 1
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, failures: int) -> float:
        """As ``HubClient``: the jittered backoff after ``failures`` failures in a row (``policy.retry``)."""
        return backoff_s(failures, base_s=self.backoff, max_s=MAX_BACKOFF, jitter=self._rng.random())

    async def aclose(self) -> None:
        for member in self.members:
            with trio.CancelScope(shield=True):
                await member.aclose()

    async def __aenter__(self) -> HubPool:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
