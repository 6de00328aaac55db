"""The chunk cache: content-addressed chunk files on disk and their SQLite index.

Owns: the files under ``<directory>/chunks/ab/cd/<id>`` (the rfs layout, shared with libtorrent, which reads and
writes the same files), atomic verified writes, protection of chunks in use, applying the eviction plan, and
reconciling the index (``<directory>/index.sqlite3``, :mod:`p2pchunks.cacheindex`: sizes, accesses, pins direct
and through manifests) with what is really on disk. It must not know HTTP or libtorrent: it only learns of
libtorrent's files through ``adopt`` and tells the swarm of evictions through evict listeners.

Invariants: a chunk is in the index only once its verified bytes sit, complete, at its final path; a write that
fails at any point leaves neither a visible file nor a row. A cache hit never writes: last-access stamps are
batched in memory and flushed by ``put``, ``gc``, ``close`` and ``flush_access``.

Concurrency: the class is synchronous and thread-safe (trio callers use ``trio.to_thread.run_sync``). One index
(one SQLite connection), guarded by one lock; hashing and writing the bytes of a new chunk happen outside it.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from ..errors import CacheFull, ChunkCorrupt, ChunkNotFound
from ..ids import Verifier, chunk_relpath, default_verifier, is_chunk_id, validate_chunk_id
from ..policy.eviction import EvictionPlan, Pin, Watermarks, effective_budget, plan_eviction
from .index import CacheEntry, CacheIndex

log = logging.getLogger(__name__)
_T = TypeVar("_T", bytes, int)

TEMP_PREFIX = ".tmp-"
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
__all__ = ["TEMP_PREFIX", "CacheEntry", "ChunkCache", "ReconcileReport", "Usage"]


@dataclass(frozen=True)
class Usage:
    chunks: int
    bytes: int
    budget_bytes: int
    high_bytes: int
    low_bytes: int


@dataclass(frozen=True)
class ReconcileReport:
    """``adopted``: valid unindexed files now indexed; ``removed_files``: unindexed files deleted (bad content, or
    not a chunk at its place); ``dropped_rows``: rows whose file was gone or corrupt; ``corrupt``: files that failed
    verification, indexed or not (all deleted); ``temp_removed``: leftover ``.tmp-`` files of interrupted writes."""

    adopted: int
    removed_files: int
    dropped_rows: int
    corrupt: int
    temp_removed: int


def _disk_full(chunk_id: str, size: int, detail: str | None) -> CacheFull:
    return CacheFull(f"chunk {chunk_id} ({size} B) does not fit: the cache's disk is full ({detail})")


class ChunkCache:
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
        self._index = CacheIndex(self.directory / "index.sqlite3")
        self._count, self._used = self._index.totals()
        self._closed = False

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
            return self._size_locked(chunk_id) is not None

    def get(self, chunk_id: str) -> bytes:
        """The chunk's bytes (not re-verified: ``reconcile(full=True)`` does that); records the access."""
        return self._serve(chunk_id, Path.read_bytes)[1]

    def locate(self, chunk_id: str) -> tuple[Path, int]:
        """``(path, size)`` of a cached chunk, for zero-copy serving; records the access."""
        return self._serve(chunk_id, lambda path: path.stat().st_size)

    def verify(self, chunk_id: str) -> bool:
        """Re-hash a cached chunk's file: True if intact; a damaged one is dropped (row and file) and False.

        For chunks whose file another writer may have touched: libtorrent writes peers' blocks straight into these
        files, so a piece that fails its hash may have scribbled over a chunk already indexed. ChunkNotFound if the
        chunk is not cached.
        """
        path, size = self._indexed(chunk_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        if len(data) == size and self._verifier(chunk_id, data):
            return True
        log.warning("cache entry %s: its file %s was damaged after it was cached: dropped", chunk_id, path)
        self.remove(chunk_id)
        return False

    def _serve(self, chunk_id: str, read: Callable[[Path], _T]) -> tuple[Path, _T]:
        """Read a hit and record the access; an entry whose file vanished or changed size is dropped."""
        path, size = self._indexed(chunk_id)
        try:
            found = read(path)
        except FileNotFoundError:
            found = None
        if found is None or (len(found) if isinstance(found, bytes) else found) != size:
            log.warning("cache entry %s: its file %s is missing or has the wrong size: dropped", chunk_id, path)
            self.remove(chunk_id)
            raise ChunkNotFound(chunk_id, "its file was missing or damaged")
        with self._lock:
            self._access[chunk_id] = self._clock()
        return path, found

    def _indexed(self, chunk_id: str) -> tuple[Path, int]:
        """The file and indexed size of a cached chunk; ChunkNotFound if it is not in the index."""
        with self._lock:
            size = self._size_locked(chunk_id)
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
            tmp = self._write_temp(final.parent, data)
        except OSError as error:
            if error.errno in _NO_SPACE:  # the disk filled behind the budget's back: a full cache, not a crash
                raise _disk_full(chunk_id, len(data), error.strerror) from error
            raise
        evicted: list[str] = []
        placed = False
        try:
            with self._lock:
                if self._index.size(chunk_id) is not None:
                    return False
                evicted = self._make_room_locked(chunk_id, len(data), strict=True)
                os.replace(tmp, final)
                placed = True
                self._sync_dir(final.parent)
                self._flush_locked()
                self._index.add(chunk_id, len(data), self._clock(), manifest_id)
                placed = False
                self._used += len(data)
                self._count += 1
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

    def _write_temp(self, directory: Path, data: bytes) -> Path:
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
        tmp = Path(name)
        self._temps.add(tmp.name)
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), 0o644)
                file.write(data)
                file.flush()
                if self._fsync:
                    os.fsync(file.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            self._temps.discard(tmp.name)
            raise
        return tmp

    def adopt(self, chunk_id: str, *, manifest_id: str | None = None) -> bool:
        """Index a file someone else (libtorrent) wrote at ``path_for(chunk_id)``; False if already indexed.

        Raises :class:`ChunkNotFound` if there is no file, :class:`ChunkCorrupt` (and deletes it) if it is bad.
        """
        path = self.path_for(chunk_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ChunkNotFound(chunk_id, "no file to adopt") from None
        if not self._verifier(chunk_id, data):
            path.unlink(missing_ok=True)
            raise ChunkCorrupt(chunk_id, "adopt")
        if self._fsync:
            with path.open("rb") as file:
                os.fsync(file.fileno())
            self._sync_dir(path.parent)
        evicted: list[str] = []
        try:
            with self._lock:
                fresh = self._index_locked(chunk_id, len(data), manifest_id)
                if fresh:
                    evicted = self._make_room_locked(chunk_id, 0, strict=False)
                return fresh
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

    # ---- manifests and pins --------------------------------------------------------------------------------

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

    def pin_of(self, chunk_id: str) -> Pin:
        validate_chunk_id(chunk_id)
        with self._lock:
            return self._index.pin_of(chunk_id)

    # ---- usage and eviction --------------------------------------------------------------------------------

    def usage(self) -> Usage:
        marks = self.marks
        with self._lock:
            return Usage(self._count, self._used, marks.budget_bytes, marks.high_bytes, marks.low_bytes)

    def entries(self, limit: int | None = None) -> list[CacheEntry]:
        """Cached chunks in eviction order (the next victim first)."""
        with self._lock:
            self._flush_locked()
            return self._index.entries(limit)

    @contextmanager
    def protecting(self, chunk_ids: Iterable[str]) -> Iterator[None]:
        """Keep ``chunk_ids`` from eviction while the block runs (nested blocks add up)."""
        ids = list(chunk_ids)
        with self._lock:
            self._protected.update(ids)
        try:
            yield
        finally:
            with self._lock:
                for chunk_id in ids:
                    self._protected[chunk_id] -= 1
                    if self._protected[chunk_id] <= 0:
                        del self._protected[chunk_id]

    def gc(self, *, dry_run: bool = False, force: bool = False) -> EvictionPlan:
        """Evict per the plan (only above the high watermark, unless ``force``); ``dry_run``: only plan."""
        with self._lock:
            self._flush_locked()
            plan = plan_eviction(
                self._index.candidates(), self._used, self.marks, protected=set(self._protected), force=force
            )
            evicted = [] if dry_run else self._delete_locked([victim.chunk_id for victim in plan.victims])
        self._notify(evicted)
        return plan

    def add_evict_listener(self, fn: Callable[[Sequence[str]], None]) -> None:
        self._listeners.append(fn)

    def flush_access(self) -> None:
        with self._lock:
            self._flush_locked()

    # ---- reconcile -----------------------------------------------------------------------------------------

    def reconcile(self, *, full: bool = False) -> ReconcileReport:
        """Make the index and the files agree (run at start-up; ``full``: also re-verify every indexed file)."""
        with self._lock:
            self._flush_locked()
            indexed = self._index.sizes()
        adopted = removed = corrupt = temps = 0
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
                size = path.stat().st_size
                if (full or size != indexed[name]) and not self._verifier(name, path.read_bytes()):
                    corrupt += 1
                    bad.append(name)
                elif size != indexed[name]:
                    with self._lock:
                        self._index.set_size(name, size)
            else:
                try:
                    adopted += self.adopt(name)
                except ChunkCorrupt:  # adopt deleted it
                    removed += 1
                    corrupt += 1
        gone = [chunk_id for chunk_id in indexed if chunk_id not in seen]
        with self._lock:
            dropped = self._delete_locked(gone + bad)
            self._count, self._used = self._index.totals()
        self._notify(dropped)
        return ReconcileReport(adopted, removed, len(dropped), corrupt, temps)

    def _files(self) -> Iterator[Path]:
        for root, _dirs, files in os.walk(self.chunk_dir):
            for name in files:
                yield Path(root, name)

    # ---- internals (``_locked``: the caller holds ``self._lock``) ---------------------------------------------

    def _size_locked(self, chunk_id: str) -> int | None:
        return self._index.size(chunk_id)

    def _index_locked(self, chunk_id: str, size: int, manifest_id: str | None) -> bool:
        fresh = self._index.add(chunk_id, size, self._clock(), manifest_id)
        if fresh:
            self._used += size
            self._count += 1
        return fresh

    def _make_room_locked(self, chunk_id: str, incoming: int, *, strict: bool) -> list[str]:
        """Evict so that ``incoming`` more bytes fit; ``strict``: raise CacheFull (evicting nothing) if they can't."""
        if self._used + incoming <= self.marks.high_bytes:
            return []
        self._flush_locked()
        protected = {*self._protected, chunk_id}
        plan = plan_eviction(self._index.candidates(), self._used, self.marks, protected=protected, incoming=incoming)
        if strict and plan.used_after + incoming > self.marks.budget_bytes:
            raise CacheFull(
                f"chunk {chunk_id} ({incoming} B) does not fit: {plan.used_after} B of {self.marks.budget_bytes} B "
                "would stay in use after evicting everything allowed"
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

    def _sync_dir(self, directory: Path) -> None:
        if self._fsync:
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _notify(self, chunk_ids: Sequence[str]) -> None:
        if not chunk_ids:
            return
        for listener in list(self._listeners):
            try:
                listener(list(chunk_ids))
            except Exception:
                log.exception("evict listener %r failed", listener)
