"""What a hub served, to whom, and how many requests it had in flight at once.

Shared by the HTTP hub (``hub.server``) and the zdb hub (``zos.zdbserver``); the netsim reads it to measure hub
egress and the peak concurrency of an update storm. Plain counters, no I/O.

Two byte counters: ``total_bytes`` (and ``bytes_by_client``) count a response when it ends, exactly what went out;
``bytes_out`` also moves while a long paced response is still going (piece by piece), so that a harness sampling
it sees the hub's egress as it happens and not in steps of whole chunks. Both agree once nothing is in flight.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class HubStats:
    total_bytes: int = 0
    bytes_out: int = 0
    requests: int = 0
    inflight: int = 0
    peak_inflight: int = 0
    bytes_by_client: Counter[str] = field(default_factory=Counter)
    requests_by_client: Counter[str] = field(default_factory=Counter)

    @contextmanager
    def request(self, client: str) -> Iterator[None]:
        """Count one request from ``client`` for as long as the block runs."""
        self.requests += 1
        self.requests_by_client[client] += 1
        self.inflight += 1
        self.peak_inflight = max(self.peak_inflight, self.inflight)
        try:
            yield
        finally:
            self.inflight -= 1

    def streaming(self, nbytes: int) -> None:
        """``nbytes`` more of a response still going have been handed to its socket."""
        self.bytes_out += nbytes

    def sent(self, client: str, nbytes: int, streamed: int = 0) -> None:
        """A response to ``client`` ended after ``nbytes`` (of which ``streamed`` were already told ``streaming``)."""
        self.total_bytes += nbytes
        self.bytes_out += nbytes - streamed
        self.bytes_by_client[client] += nbytes

    def reset(self) -> None:
        self.total_bytes = self.bytes_out = self.requests = self.peak_inflight = 0
        self.peak_inflight = self.inflight
        self.bytes_by_client.clear()
        self.requests_by_client.clear()

    def as_json(self) -> dict[str, Any]:
        return {
            "total_bytes": self.total_bytes,
            "bytes_out": self.bytes_out,
            "requests": self.requests,
            "inflight": self.inflight,
            "peak_inflight": self.peak_inflight,
            "bytes_by_client": dict(self.bytes_by_client),
            "requests_by_client": dict(self.requests_by_client),
        }
