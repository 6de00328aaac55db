"""Keeping the cache's files honest: verified re-reads, the scrub, and reconciling the index with the disk.

Owns the rules by which a cached file is trusted. Every file was hashed when it entered the cache, and its
*stamp* (inode, size, mtime, ctime) recorded then. A file whose stamp changed was written by something (a person,
a tool, a stray writer): it is hashed again before it is trusted, at start-up (``reconcile``) as at any time. A
file whose bytes rotted without any write (the disk or its controller) keeps its stamp: the scrub re-hashes every
file in turn, oldest verification first, at a bounded rate, and every read that hands bytes out hashes them
anyway (``ChunkCache.get``). A damaged file is dropped — row and file — and the cache's listeners are told, as
for an eviction, so the swarm stops claiming it and it can be fetched again.

This is the integrity half of :class:`p2pchunks.cache.store.ChunkCache` (a mixin over its lock and index); it
must not know HTTP, libtorrent or where a replacement comes from.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ChunkNotFound
from ..files import blake2b_file
from ..ids import Verifier, blake2b_verifier, is_chunk_id
from .index import CacheIndex

log = logging.getLogger(__name__)


def file_stamp(st: os.stat_result) -> str:
    """What changes whenever a file is written, replaced or touched (ctime cannot be set back by hand)."""
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


@dataclass(frozen=True)
class ReconcileReport:
    """``adopted``: valid unindexed files now indexed; ``removed_files``: unindexed files deleted (bad content, or
    not a chunk at its place); ``dropped_rows``: rows whose file was gone or corrupt; ``corrupt``: files that failed
    verification, indexed or not (all deleted); ``temp_removed``: leftover temp files of interrupted writes;
    ``rehashed``: indexed files hashed because their stamp changed (or ``full``)."""

    adopted: int
    removed_files: int
    dropped_rows: int
    corrupt: int
    temp_removed: int
    rehashed: int = 0


@dataclass(frozen=True)
class ScrubReport:
    checked: int
    bytes: int
    damaged: tuple[str, ...] = field(default=())


class Integrity:
    """Mixed into ChunkCache; the attributes below are ChunkCache's."""

    chunk_dir: Path
    damaged_found: int
    _lock: threading.Lock
    _index: CacheIndex
    _verifier: Verifier
    _clock: Callable[[], float]
    _temps: set[str]
    _count: int
    _used: int

    if TYPE_CHECKING:  # ChunkCache's, as the attributes above

        def path_for(self, chunk_id: str) -> Path: ...
        def adopt(self, chunk_id: str, *, manifest_id: str | None = None) -> bool: ...
        def _indexed(self, chunk_id: str) -> tuple[Path, int]: ...
        def _delete_locked(self, chunk_ids: Sequence[str]) -> list[str]: ...
        def _flush_locked(self) -> None: ...
        def _notify(self, chunk_ids: Sequence[str], *, damaged: bool = False) -> None: ...

    def verify(self, chunk_id: str) -> bool:
        """Hash a cached chunk's file again: True if intact (its integrity record is renewed); a damaged one is
        dropped (row and file, listeners told) and False. ChunkNotFound if the chunk is not cached."""
        path, size = self._indexed(chunk_id)
        try:
            stamp = file_stamp(path.stat())
            intact = self._hash_file(chunk_id, path) == size
        except FileNotFoundError:
            intact = False
        if intact:
            with self._lock:
                self._index.set_verified(chunk_id, self._clock(), stamp)
            return True
        log.warning("cache entry %s: its file %s was damaged after it was cached: dropped", chunk_id, path)
        self._drop_damaged(chunk_id)
        return False

    def scrub(self, max_bytes: int) -> ScrubReport:
        """Re-hash the chunks verified longest ago, about ``max_bytes`` of them (at least one), dropping damage."""
        with self._lock:
            average = self._used // self._count if self._count else 0
            queue = self._index.least_recently_verified(max(1, max_bytes // max(average, 1) + 1))
        checked = hashed = 0
        damaged: list[str] = []
        for chunk_id, size in queue:
            if checked and hashed + size > max_bytes:
                break
            try:
                if not self.verify(chunk_id):
                    damaged.append(chunk_id)
            except ChunkNotFound:  # evicted meanwhile
                continue
            checked += 1
            hashed += size
        return ScrubReport(checked, hashed, tuple(damaged))

    def reconcile(self, *, full: bool = False) -> ReconcileReport:
        """Make the index and the files agree (run at start-up): files whose stamp changed since they were hashed
        are hashed again (``full``: every file is); unindexed valid files are adopted, the rest removed."""
        from .store import TEMP_PREFIX

        with self._lock:
            self._flush_locked()
            indexed = self._index.stamps()
        adopted = removed = corrupt = temps = rehashed = 0
        seen: set[str] = set()
        bad: list[str] = []
        for path in self._files():
            name = path.name
            if name.startswith(TEMP_PREFIX):
                if name not in self._temps:
                    path.unlink(missing_ok=True)
                    temps += 1
            elif not is_chunk_id(name) or path != self.path_for(name):
                path.unlink(missing_ok=True)
                removed += 1
            elif name in indexed:
                seen.add(name)
                size, stamp = indexed[name]
                current = path.stat()
                if full or file_stamp(current) != stamp or current.st_size != size:
                    rehashed += 1
                    if self._hash_file(name, path) != size:
                        corrupt += 1
                        bad.append(name)
                    else:
                        with self._lock:
                            self._index.set_verified(name, self._clock(), file_stamp(current))
            else:
                try:
                    adopted += self.adopt(name)
                except Exception as error:  # adopt deleted a bad one; anything else: leave it, log it
                    if path.exists():
                        log.warning("cannot adopt %s: %s", path, error)
                    else:
                        removed += 1
                        corrupt += 1
        gone = [chunk_id for chunk_id in indexed if chunk_id not in seen]
        with self._lock:
            dropped = self._delete_locked(gone)
            damaged = self._delete_locked(bad)
            self._count, self._used = self._index.totals()
            self.damaged_found += len(damaged)
        self._notify(dropped)
        self._notify(damaged, damaged=True)
        return ReconcileReport(adopted, removed, len(dropped) + len(damaged), corrupt, temps, rehashed)

    def _files(self) -> Iterator[Path]:
        for root, _dirs, files in os.walk(self.chunk_dir):
            for name in files:
                yield Path(root, name)

    def _hash_file(self, chunk_id: str, path: Path) -> int | None:
        """The file's size if it hashes to ``chunk_id``, else None (read in blocks with the default verifier)."""
        if self._verifier is blake2b_verifier:
            digest, size = blake2b_file(path, len(chunk_id) // 2, limit=64 * 1024 * 1024)
            return size if digest == chunk_id else None
        data = path.read_bytes()
        return len(data) if self._verifier(chunk_id, data) else None

    def _drop_damaged(self, chunk_id: str) -> None:
        with self._lock:
            removed = self._delete_locked([chunk_id])  # row and file
            self.damaged_found += len(removed)
        self._notify(removed, damaged=True)
