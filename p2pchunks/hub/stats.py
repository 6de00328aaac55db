"""What a hub served, to whom, and how many requests it had in flight at once.

Shared by the HTTP hub (``hub.server``) and the zdb hub (``zos.zdbserver``); the netsim reads it to measure hub
egress and the peak concurrency of an update storm. Plain counters, no I/O.
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

    def sent(self, client: str, nbytes: int) -> None:
        self.total_bytes += nbytes
        self.bytes_by_client[client] += nbytes

    def reset(self) -> None:
        self.total_bytes = self.requests = self.peak_inflight = 0
        self.peak_inflight = self.inflight
        self.bytes_by_client.clear()
        self.requests_by_client.clear()

    def as_json(self) -> dict[str, Any]:
        return {
            "total_bytes": self.total_bytes,
            "requests": self.requests,
            "inflight": self.inflight,
            "peak_inflight": self.peak_inflight,
            "bytes_by_client": dict(self.bytes_by_client),
            "requests_by_client": dict(self.requests_by_client),
        }
