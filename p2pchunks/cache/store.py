"""The chunk cache: content-addressed chunk files on disk and their SQLite index.

Owns: the files under ``<directory>/chunks/ab/cd/<id>`` (the rfs layout, shared with libtorrent, which reads and
writes the same files), atomic verified writes, protection of chunks in use, applying the eviction plan, and the
index (``<directory>/index.sqlite3``, :mod:`p2pchunks.cache.index`). Keeping the files honest — verified reads,
the scrub, reconciling at start-up — is :mod:`p2pchunks.cache.integrity`'s half of the same class, pins and
manifest references :mod:`p2pchunks.cache.pins`'s; what the farm holds comes in as ``FarmHints``. It must not
know HTTP or libtorrent: it learns of libtorrent's files through ``adopt`` and tells whoever listens (the swarm)
of every chunk that leaves the index, evicted or found damaged.

Invariants: a chunk is in the index only once its verified bytes sit, complete and durable, at its final path; a
write that fails at any point leaves neither a visible file nor a row. No byte is handed out unverified: ``get``
hashes the file it reads. A cache hit writes nothing: last-access stamps are batched in memory and flushed by
``put``, ``gc``, ``close`` and ``flush_access``.

Concurrency: the class is synchronous and thread-safe (trio callers use ``trio.to_thread.run_sync``). One index
(one SQLite connection), guarded by one lock; hashing and writing the bytes of a chunk happen outside it.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from ..errors import CacheFull, ChunkCorrupt, ChunkNotFound
from ..files import fsync_dir, write_temp
from ..ids import Verifier, chunk_relpath, default_verifier, validate_chunk_id
from ..policy.eviction import EvictionPlan, FarmHints, Watermarks, effective_budget, plan_eviction
from .index import CacheEntry, CacheIndex
from .integrity import Integrity, ReconcileReport, ScrubReport, file_stamp
from .pins import Pins

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
Adopted = Literal["fresh", "held", "corrupt", "missing"]
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
__all__ = ["TEMP_PREFIX", "Adopted", "CacheEntry", "ChunkCache", "ReconcileReport", "ScrubReport", "Usage"]


@dataclass(frozen=True)
class Usage:
    chunks: int
    bytes: int
    budget_bytes: int
    high_bytes: int
    low_bytes: int


def _disk_full(chunk_id: str, size: int, detail: str | None) -> CacheFull:
    return CacheFull(f"chunk {chunk_id} ({size} B) does not fit: the cache's disk is full ({detail})")


class ChunkCache(Integrity, Pins):
    def __init__(
        self,
        directory: Path,
        *,
        budget_bytes: int | None = None,
        budget_percent: float | None = None,
        high: float = 0.90,
        low: float = 0.80,
        verifier: Verifier = default_verifier,
        clock: Callable[[], float] = time.time,
        fsync: bool = True,
        farm: FarmHints | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.chunk_dir = self.directory / "chunks"
        self.chunk_dir.mkdir(parents=True, exist_ok=True)
        stat = os.statvfs(self.directory)
        budget = effective_budget(budget_bytes, budget_percent, stat.f_blocks * stat.f_frsize)
        self.marks = Watermarks(budget, high, low)
        self._verifier = verifier
        self._clock = clock
        self._fsync = fsync
        self._lock = threading.Lock()
        self._access: dict[str, float] = {}
        self._protected: Counter[str] = Counter()
        self._temps: set[str] = set()
        self._listeners: list[Callable[[Sequence[str]], None]] = []
        self._damage_listeners: list[Callable[[Sequence[str]], None]] = []
        self._index = CacheIndex(self.directory / "index.sqlite3")
        self._count, self._used = self._index.totals()
        self._closed = False
        self.damaged_found = 0
        """Indexed chunks whose file was found damaged (by a read, the scrub or a reconcile) and dropped."""
        self.farm = farm or FarmHints()
        self.last_copies_evicted = 0
        """Chunks evicted that were the farm's last copy of this node's custody (only to keep the budget)."""

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self._flush_locked()
            finally:
                self._closed = True
                self._index.close()

    def __enter__(self) -> ChunkCache:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # ---- reading -------------------------------------------------------------------------------------------

    def path_for(self, chunk_id: str) -> Path:
        return self.chunk_dir / chunk_relpath(chunk_id)

    def has(self, chunk_id: str) -> bool:
        validate_chunk_id(chunk_id)
        with self._lock:
            return self._index.size(chunk_id) is not None

    def held(self, chunk_ids: Iterable[str]) -> set[str]:
        """Which of ``chunk_ids`` are cached (a few queries, whatever their number)."""
        ids = list(dict.fromkeys(chunk_ids))
        with self._lock:
            return set(self._index.sizes(ids))

    def get(self, chunk_id: str) -> bytes:
        """The chunk's bytes, hashed as they are read; records the access.

        A file that does not hash to its id is dropped (row and file, listeners told) and ``ChunkCorrupt`` raised:
        the caller fetches it again. ``ChunkNotFound`` if it is not cached (or its file vanished).
        """
        path, size = self._indexed(chunk_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = None
        if data is None or len(data) != size:
            log.warning("cache entry %s: its file %s is missing or has the wrong size: dropped", chunk_id, path)
            self._drop_damaged(chunk_id)
            raise ChunkNotFound(chunk_id, "its file was missing or damaged")
        if not self._verifier(chunk_id, data):
            log.warning("cache entry %s: its file %s does not hash to its id (rot at rest): dropped", chunk_id, path)
            self._drop_damaged(chunk_id)
            raise ChunkCorrupt(chunk_id, "the cache (rot at rest, dropped)")
        with self._lock:
            self._access[chunk_id] = self._clock()
        return data

    def locate(self, chunk_id: str) -> tuple[Path, int]:
        """``(path, size)`` of a cached chunk (for HEAD: nothing is read, so nothing is verified)."""
        path, size = self._indexed(chunk_id)
        try:
            if path.stat().st_size == size:
                return path, size
        except FileNotFoundError:
            pass
        log.warning("cache entry %s: its file %s is missing or has the wrong size: dropped", chunk_id, path)
        self._drop_damaged(chunk_id)
        raise ChunkNotFound(chunk_id, "its file was missing or damaged")

    def _indexed(self, chunk_id: str) -> tuple[Path, int]:
        """The file and indexed size of a cached chunk; ChunkNotFound if it is not in the index."""
        validate_chunk_id(chunk_id)
        with self._lock:
            size = self._index.size(chunk_id)
        if size is None:
            raise ChunkNotFound(chunk_id, "not in the cache")
        return self.path_for(chunk_id), size

    # ---- writing -------------------------------------------------------------------------------------------

    def put(self, chunk_id: str, data: bytes, *, manifest_id: str | None = None) -> bool:
        """Verify, make room, write atomically, index. False if the chunk was already cached.

        Raises :class:`ChunkCorrupt` (nothing written) or :class:`CacheFull` (it cannot fit even after eviction).
        """
        final = self.path_for(chunk_id)
        with self._lock:
            if self._index.size(chunk_id) is not None:
                self._index.ref(manifest_id, chunk_id)
                return False
        if not self._verifier(chunk_id, data):
            raise ChunkCorrupt(chunk_id, "put")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = write_temp(final.parent, data, fsync=self._fsync, prefix=TEMP_PREFIX)
        except OSError as error:
            if error.errno in _NO_SPACE:  # the disk filled behind the budget's back: a full cache, not a crash
                raise _disk_full(chunk_id, len(data), error.strerror) from error
            raise
        self._temps.add(tmp.name)
        evicted: list[str] = []
        placed = False
        try:
            with self._lock:
                if self._index.size(chunk_id) is not None:
                    return False
                evicted = self._make_room_locked(chunk_id, len(data), strict=True)
                os.replace(tmp, final)
                placed = True
                if self._fsync:
                    fsync_dir(final.parent)
                self._flush_locked()
                self._index_locked([(chunk_id, len(data), file_stamp(final.stat()))], manifest_id)
                placed = False
                return True
        except sqlite3.OperationalError as error:
            if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise _disk_full(chunk_id, len(data), str(error)) from error
            raise
        finally:
            if placed:
                final.unlink(missing_ok=True)
            tmp.unlink(missing_ok=True)
            self._temps.discard(tmp.name)
            self._notify(evicted)

    def adopt(self, chunk_id: str, *, manifest_id: str | None = None) -> bool:
        """Index a file someone else (libtorrent) wrote at ``path_for(chunk_id)``; False if already indexed.

        The file is hashed in blocks (never whole in memory) and made durable before it is indexed. Raises
        :class:`ChunkNotFound` if there is no file, :class:`ChunkCorrupt` (and deletes it) if it is bad.
        """
        outcome = self.adopt_many([chunk_id], manifest_id=manifest_id)[chunk_id]
        if outcome == "missing":
            raise ChunkNotFound(chunk_id, "no file to adopt")
        if outcome == "corrupt":
            raise ChunkCorrupt(chunk_id, "adopt")
        return outcome == "fresh"

    def adopt_many(self, chunk_ids: Sequence[str], *, manifest_id: str | None = None) -> dict[str, Adopted]:
        """``adopt`` for a batch: each file hashed and fsynced, each directory fsynced once, one index transaction.

        Per id: ``fresh`` (indexed now), ``held`` (was indexed), ``corrupt`` (deleted) or ``missing`` (no file).
        """
        outcome: dict[str, Adopted] = {}
        rows: list[tuple[str, int, str]] = []
        directories: set[Path] = set()
        for chunk_id in chunk_ids:
            path = self.path_for(chunk_id)
            try:
                size = self._hash_file(chunk_id, path)
            except FileNotFoundError:
                outcome[chunk_id] = "missing"
                continue
            if size is None:
                path.unlink(missing_ok=True)
                outcome[chunk_id] = "corrupt"
                continue
            if self._fsync:
                with path.open("rb") as file:
                    os.fsync(file.fileno())
                directories.add(path.parent)
            rows.append((chunk_id, size, file_stamp(path.stat())))
        for directory in directories:
            fsync_dir(directory)
        evicted: list[str] = []
        try:
            with self._lock:
                fresh = self._index_locked(rows, manifest_id)
                added = set(fresh)
                for chunk_id, _, _ in rows:
                    outcome[chunk_id] = "fresh" if chunk_id in added else "held"
                if fresh:
                    evicted = self._make_room_locked(fresh[0], 0, strict=False, keep=added)
                return outcome
        finally:
            self._notify(evicted)

    def remove(self, chunk_id: str) -> bool:
        """Delete a chunk's file and row; True if there was either."""
        path = self.path_for(chunk_id)
        with self._lock:
            removed = self._delete_locked([chunk_id])
            had_file = path.exists()
            path.unlink(missing_ok=True)
        self._notify(removed)
        return bool(removed) or had_file

    def remove_stray(self, chunk_id: str) -> bool:
        """Delete the file of a chunk that is *not* indexed (what a failed piece left behind); True if one was."""
        path = self.path_for(chunk_id)
        with self._lock:
            if self._index.size(chunk_id) is not None or not path.exists():
                return False
            path.unlink(missing_ok=True)
        return True

    # ---- usage and eviction --------------------------------------------------------------------------------

    def usage(self) -> Usage:
        marks = self.marks
        with self._lock:
            return Usage(self._count, self._used, marks.budget_bytes, marks.high_bytes, marks.low_bytes)

    def entries(self, limit: int | None = None) -> list[CacheEntry]:
        """Cached chunks by pin level, then least recently used, then id: the eviction order less the farm's
        hints (``FarmHints``: replicas and last copies), which only an eviction plan weighs."""
        with self._lock:
            self._flush_locked()
            return self._index.entries(limit)

    @contextmanager
    def protecting(self, chunk_ids: Iterable[str]) -> Iterator[None]:
        """Keep ``chunk_ids`` from eviction while the block runs (nested blocks add up)."""
        ids = list(chunk_ids)
        self.protect(ids)
        try:
            yield
        finally:
            self.release(ids)

    def protect(self, chunk_ids: Iterable[str]) -> None:
        """Keep ``chunk_ids`` from eviction until :meth:`release`d (as many times as protected)."""
        with self._lock:
            self._protected.update(chunk_ids)

    def release(self, chunk_ids: Iterable[str]) -> None:
        with self._lock:
            for chunk_id in chunk_ids:
                self._protected[chunk_id] -= 1
                if self._protected[chunk_id] <= 0:
                    del self._protected[chunk_id]

    def gc(self, *, dry_run: bool = False, force: bool = False) -> EvictionPlan:
        """Evict per the plan (only above the high watermark, unless ``force``); ``dry_run``: only plan."""
        with self._lock:
            self._flush_locked()
            plan = self._plan_locked(set(self._protected), 0, force=force)
            evicted = [] if dry_run else self._evict_locked(plan)
        self._notify(evicted)
        return plan

    def room_for(self) -> int:
        """Bytes that could be added now if everything evictable went (nothing is evicted): the budget less what
        is protected."""
        with self._lock:
            kept = sum(self._index.sizes(list(self._protected)).values())
        return max(0, self.marks.budget_bytes - kept)

    def add_evict_listener(self, fn: Callable[[Sequence[str]], None]) -> None:
        """``fn(ids)`` is called (from whichever thread removed them) for every chunk that leaves the index."""
        self._listeners.append(fn)

    def add_damage_listener(self, fn: Callable[[Sequence[str]], None]) -> None:
        """``fn(ids)`` is called for every chunk dropped because its file was found damaged (after the evict
        listeners, which hear of it too)."""
        self._damage_listeners.append(fn)

    def flush_access(self) -> None:
        with self._lock:
            self._flush_locked()

    # ---- internals (``_locked``: the caller holds ``self._lock``) ---------------------------------------------

    def _index_locked(self, rows: Sequence[tuple[str, int, str]], manifest_id: str | None) -> list[str]:
        """Index ``(id, size, stamp)`` rows of verified files and count the new ones in; the ids that were new."""
        sizes = {chunk_id: size for chunk_id, size, _ in rows}
        fresh = self._index.add_many(rows, self._clock(), manifest_id)
        self._used += sum(sizes[chunk_id] for chunk_id in fresh)
        self._count += len(fresh)
        return fresh

    def _make_room_locked(
        self, chunk_id: str, incoming: int, *, strict: bool, keep: AbstractSet[str] = frozenset()
    ) -> list[str]:
        """Evict so that ``incoming`` more bytes fit; ``strict``: raise CacheFull (evicting nothing) if they can't.

        ``chunk_id`` and ``keep`` (chunks just added) are never the victims."""
        if self._used + incoming <= self.marks.high_bytes:
            return []
        self._flush_locked()
        plan = self._plan_locked({*self._protected, chunk_id, *keep}, incoming)
        if strict and plan.used_after + incoming > self.marks.budget_bytes:
            raise CacheFull(
                f"chunk {chunk_id} ({incoming} B) does not fit: {plan.used_after} B of {self.marks.budget_bytes} B "
                "would stay in use after evicting everything allowed"
            )
        return self._evict_locked(plan)

    def _plan_locked(self, protected: AbstractSet[str], incoming: int, *, force: bool = False) -> EvictionPlan:
        candidates = self.farm.annotate(self._index.candidates())
        return plan_eviction(candidates, self._used, self.marks, protected=protected, incoming=incoming, force=force)

    def _evict_locked(self, plan: EvictionPlan) -> list[str]:
        if plan.last_copies:
            self.last_copies_evicted += plan.last_copies
            log.warning(
                "evicting %d chunks that are the farm's last copy of this node's custody: the cache's budget "
                "would break otherwise",
                plan.last_copies,
            )
        return self._delete_locked([victim.chunk_id for victim in plan.victims])

    def _delete_locked(self, chunk_ids: Sequence[str]) -> list[str]:
        """Delete files and rows; return the ids that had a row."""
        for chunk_id in chunk_ids:
            self.path_for(chunk_id).unlink(missing_ok=True)
            self._access.pop(chunk_id, None)
        deleted = self._index.delete(chunk_ids)
        self._used -= sum(size for _, size in deleted)
        self._count -= len(deleted)
        return [chunk_id for chunk_id, _ in deleted]

    def _flush_locked(self) -> None:
        self._index.touch(self._access)
        self._access.clear()

    def _notify(self, chunk_ids: Sequence[str], *, damaged: bool = False) -> None:
        if not chunk_ids:
            return
        for listener in [*self._listeners, *(self._damage_listeners if damaged else ())]:
            try:
                listener(list(chunk_ids))
            except Exception:
                log.exception("evict listener %r failed", listener)
