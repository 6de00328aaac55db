"""Pins and manifest references of the cache: which manifests reference which chunks, and how hard each is held.

The pin half of :class:`p2pchunks.cache.store.ChunkCache` (a mixin over its lock and index, as ``integrity`` is):
a chunk's pin is the highest of its direct pin and the pins of the manifests that reference it (the SQL is
``index``'s). Direct ``official`` pins are also how the warm-up keeps this node's custody of the official images
(``agent/warmer.py``): it sets and drops them chunk by chunk. Must not know files, HTTP or libtorrent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from ..ids import validate_chunk_id
from ..policy.eviction import Pin
from .index import CacheIndex


class Pins:
    """Mixed into ChunkCache; the attributes below are ChunkCache's."""

    _lock: threading.Lock
    _index: CacheIndex

    def record_manifest(self, manifest_id: str, name: str, chunk_ids: Iterable[str], pin: Pin = Pin.NONE) -> None:
        """Reference ``chunk_ids`` (present or not) from a manifest. Never lowers an existing pin of it."""
        ids = [validate_chunk_id(chunk_id) for chunk_id in chunk_ids]
        with self._lock:
            self._index.record_manifest(manifest_id, name, ids, pin)

    def set_manifest_pin(self, manifest_id: str, pin: Pin) -> None:
        with self._lock:
            self._index.set_manifest_pin(manifest_id, pin)

    def forget_manifest(self, manifest_id: str) -> None:
        with self._lock:
            self._index.forget_manifest(manifest_id)

    def manifests(self) -> list[tuple[str, str, Pin]]:
        with self._lock:
            return self._index.manifests()

    def pin_chunk(self, chunk_id: str, pin: Pin) -> None:
        """Pin one chunk directly (present or not); ``Pin.NONE`` drops the direct pin."""
        validate_chunk_id(chunk_id)
        with self._lock:
            self._index.pin_chunk(chunk_id, pin)

    def pin_chunks(self, chunk_ids: Iterable[str], pin: Pin, *, drop: bool = False) -> None:
        """Pin chunks directly at ``pin`` (present or not), in one transaction; ``drop``: remove instead those of
        their direct pins that are exactly ``pin`` (a different direct pin stays)."""
        ids = [validate_chunk_id(chunk_id) for chunk_id in chunk_ids]
        with self._lock:
            (self._index.unpin_chunks if drop else self._index.pin_chunks)(ids, pin)

    def pinned_directly(self, pin: Pin) -> set[str]:
        """The chunks whose direct pin is exactly ``pin``."""
        with self._lock:
            return self._index.pinned_directly(pin)

    def pin_of(self, chunk_id: str) -> Pin:
        validate_chunk_id(chunk_id)
        with self._lock:
            return self._index.pin_of(chunk_id)
