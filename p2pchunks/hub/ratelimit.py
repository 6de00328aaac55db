"""A token bucket: the one rate limiter used for the hub's egress cap and an agent's hub budget.

Pure arithmetic over an injected clock; the async ``acquire`` is the only place that sleeps. One bucket may be
shared by many tasks: each reserves its bytes up front and sleeps until the bucket has paid for them, so the
long-run rate never exceeds ``rate`` whatever the concurrency. There is no lock and no queue object: a reservation
is one subtraction, and the sleepers wake in the order they reserved (trio wakes sleepers by deadline), so tasks
that reserve one piece at a time take turns, first come first served, and none starves. A task cancelled while it
waits gives its reservation back.
"""

from __future__ import annotations

from collections.abc import Callable

import trio


class TokenBucket:
    """``rate`` bytes per second with a burst of ``burst`` bytes (``rate=None``: unlimited)."""

    def __init__(
        self, rate: float | None, burst: float | None = None, clock: Callable[[], float] = trio.current_time
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.burst = burst if burst is not None else (rate / 10 if rate else 0.0)
        self._clock = clock
        self._tokens = self.burst
        self._stamp: float | None = None

    def reserve(self, amount: int) -> float:
        """Take ``amount`` tokens now (possibly going negative); return how long to wait before using them."""
        if self.rate is None or amount <= 0:
            return 0.0
        now = self._clock()
        if self._stamp is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def refund(self, amount: int) -> None:
        """Give back ``amount`` tokens reserved and never used (the bucket never holds more than ``burst``)."""
        if self.rate is not None and amount > 0:
            self._tokens = min(self.burst, self._tokens + amount)

    async def acquire(self, amount: int) -> None:
        """Wait until ``amount`` bytes may be sent (cancelled while waiting: the reservation is given back)."""
        delay = self.reserve(amount)
        if delay <= 0:
            await trio.lowlevel.checkpoint()  # paid by the burst: still let the others reserve in turn
        else:
            try:
                await trio.sleep(delay)
            except trio.Cancelled:
                self.refund(amount)
                raise
