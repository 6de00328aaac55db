"""The health of several hubs, and which one a request goes to: plain data, no sockets, no clock of its own.

Owns the per-hub state a :class:`~p2pchunks.hub.pool.HubPool` keeps, and the two decisions made over it. Time
comes in as ``now`` (seconds on any monotonic clock), so every rule is tested with plain numbers.

Theory of operation. A hub is **up** until a request to it fails (timeout, refused, reset, 5xx, wrong bytes); then
it is **down** until ``retry_at``, which moves out by ``backoff · 2^(failures-1)`` (capped at ``max_backoff``)
with each failure in a row. While down it gets no requests, except one **probe** at a time once ``retry_at`` has
passed: the probe's success brings it back up (and clears the count), its failure pushes ``retry_at`` out again.
A hub that answers "no such chunk" has answered: that is not a failure.

Choosing (``choose``): among the hubs a request may still ask, take those that are up or due a probe, and of those
the one using the smallest share of its **budget** (requests in flight / requests it may have in flight); ties go to
the hub listed first, so a preferred hub (listed first) takes the load until it is busy, then the next one helps.
When every hub left is down and not yet due, the one due soonest is asked anyway: a request never gives up only
because every hub failed a moment ago (its own retry budget and backoff bound the cost).

Must not know: HTTP, zdb, trio, what a chunk is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from ..policy.retry import backoff_s

State = Literal["up", "down"]


@dataclass
class HubHealth:
    url: str
    budget: int
    """Requests this hub may have in flight from us; load is spread by the share of it in use."""
    state: State = "up"
    failures: int = 0
    """Failures in a row (0 when up)."""
    retry_at: float = 0.0
    """While down: when the next probe may go."""
    inflight: int = 0
    requests: int = 0
    bytes: int = 0
    errors: int = 0
    missing: int = 0
    """Answers "no such chunk"."""
    last_error: str = ""

    @property
    def load(self) -> float:
        return self.inflight / self.budget


class HealthBoard:
    """The health of each hub of one pool (index = position in the hub list); see the module docstring."""

    def __init__(self, urls: Sequence[str], budget: int, *, backoff: float, max_backoff: float) -> None:
        if not urls or budget < 1 or backoff <= 0 or max_backoff < backoff:
            raise ValueError(f"health board: need hubs, budget ≥ 1, 0 < backoff ≤ max_backoff ({budget}, {backoff})")
        self.hubs = [HubHealth(url, budget) for url in urls]
        self.backoff = backoff
        self.max_backoff = max_backoff

    def choose(self, now: float, exclude: Iterable[int] = ()) -> int | None:
        """The hub the next request should go to, or None when every hub is excluded."""
        skip = set(exclude)
        left = [i for i in range(len(self.hubs)) if i not in skip]
        if not left:
            return None
        usable = [i for i in left if self.usable(i, now)]
        if usable:
            return min(usable, key=lambda i: (self.hubs[i].load, i))
        return min(left, key=lambda i: (self.hubs[i].retry_at, i))

    def usable(self, index: int, now: float) -> bool:
        """Up, or down with a probe due and none in flight."""
        hub = self.hubs[index]
        return hub.state == "up" or (now >= hub.retry_at and hub.inflight == 0)

    def started(self, index: int) -> None:
        hub = self.hubs[index]
        hub.inflight += 1
        hub.requests += 1

    def succeeded(self, index: int, nbytes: int) -> None:
        hub = self.hubs[index]
        hub.inflight -= 1
        hub.bytes += nbytes
        hub.state, hub.failures, hub.retry_at = "up", 0, 0.0

    def said_missing(self, index: int) -> None:
        """The hub answered that it has no such chunk: alive, and no failure."""
        hub = self.hubs[index]
        hub.inflight -= 1
        hub.missing += 1
        hub.state, hub.failures, hub.retry_at = "up", 0, 0.0

    def failed(self, index: int, now: float, error: str) -> None:
        hub = self.hubs[index]
        hub.inflight -= 1
        hub.errors += 1
        hub.failures += 1
        hub.last_error = error
        hub.state = "down"
        hub.retry_at = now + backoff_s(hub.failures, base_s=self.backoff, max_s=self.max_backoff)

    def abandoned(self, index: int) -> None:
        """The request was cancelled before the hub answered: nothing learned."""
        self.hubs[index].inflight -= 1

    def rows(self, now: float) -> list[dict[str, object]]:
        """Each hub as ``/status`` shows it (URLs as given: the pool redacts secrets before they get here)."""
        return [
            {
                "url": hub.url,
                "state": hub.state,
                "retry_in_s": round(max(0.0, hub.retry_at - now), 3) if hub.state == "down" else 0.0,
                "inflight": hub.inflight,
                "budget": hub.budget,
                "requests": hub.requests,
                "bytes": hub.bytes,
                "errors": hub.errors,
                "missing": hub.missing,
                "last_error": hub.last_error,
            }
            for hub in self.hubs
        ]
