"""Arrivals: how whoever waits for a chunk learns that it is in the cache now, and from where it came.

Owns the one-shot waits (``watch``: an event per chunk, dropped when its last watcher leaves, so waits that end
without an arrival leave nothing behind) and the subscriptions of running fetch jobs (each gets every arrival on
its own channel). Must not know where chunks come from or what waiters do with them.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import trio


class Source(enum.Enum):
    CACHE = "cache"
    PEERS = "peers"
    HUB = "hub"


@dataclass(frozen=True, slots=True)
class Arrival:
    chunk_id: str
    source: Source
    size: int


class Arrivals:
    def __init__(self) -> None:
        self._waiting: dict[str, tuple[trio.Event, int]] = {}
        self._listeners: set[trio.MemorySendChannel[Arrival]] = set()

    @contextmanager
    def watch(self, chunk_id: str) -> Iterator[trio.Event]:
        """An event set when ``chunk_id`` arrives; watch *before* starting what brings it, so no arrival is missed."""
        event, watchers = self._waiting.get(chunk_id, (trio.Event(), 0))
        self._waiting[chunk_id] = (event, watchers + 1)
        try:
            yield event
        finally:
            current = self._waiting.get(chunk_id)
            if current is not None and current[0] is event:
                if current[1] <= 1:
                    del self._waiting[chunk_id]
                else:
                    self._waiting[chunk_id] = (event, current[1] - 1)

    def arrived(self, arrival: Arrival) -> None:
        waiting = self._waiting.pop(arrival.chunk_id, None)
        if waiting is not None:
            waiting[0].set()
        for listener in self._listeners:
            listener.send_nowait(arrival)

    @contextmanager
    def subscribe(self) -> Iterator[trio.MemoryReceiveChannel[Arrival]]:
        send, receive = trio.open_memory_channel[Arrival](math.inf)
        self._listeners.add(send)
        try:
            yield receive
        finally:
            self._listeners.discard(send)
            send.close()
            receive.close()
