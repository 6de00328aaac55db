"""Filling the rfs block cache of a Zero-OS node ahead of rfs, so a stock rfs finds its blocks already local.

Owns the one contract p2pchunks shares with rfs (checked against rfs v1.1.1 and v2.0.6 ``src/cache/mod.rs``, and
zosbase ``pkg/flist``, where flistd runs rfs with ``--cache /var/cache/modules/flistd/cache``):

* a block lives at ``<cache>/<hex[0:2]>/<hex[2:4]>/<hex>``, ``hex`` being the block *id* (the hash of the stored,
  encrypted bytes: BLAKE2b-128 in v1, BLAKE2b-256 in v2), the same name for both generations;
* the file holds the block's DECRYPTED, decompressed plain bytes;
* rfs opens it create/read/write without truncating, takes an exclusive ``flock``, and treats any non-empty file
  as a hit without re-checking it; an empty file means "download me".

So a file must never be visible partial: we write a hidden temp file in the same directory, fsync it, and rename it
into place (rename is atomic; an rfs that already holds the old empty inode finishes its own download into it,
which is harmless). A non-empty file already there is left alone. Before writing we check the free space of the
file system (``statvfs``; ``min_free_bytes`` stays free) and an optional quota on the cache directory's total
size; a block that would not fit is not written (``skipped_for_space``). Every blob is verified against its id
before it is decoded, so nothing unverified reaches rfs.

Must not know: where blobs come from (``fill_image`` takes a ``get_blob`` callable), the agent, the swarm.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import trio

from ..config.schema import RfsSection
from ..errors import BadConfig, BadManifest, ChunkCorrupt, ChunkNotFound, ChunkUnavailable, HubError, first_error
from ..files import free_bytes, fsync_dir, write_temp
from ..formats.manifest import Manifest
from ..ids import chunk_relpath, default_verifier
from .codec import decode

__all__ = ["ZOS_RFS_CACHE", "FillOutcome", "FillReport", "FillStats", "RfsCacheFiller", "fill_image"]

log = logging.getLogger(__name__)

ZOS_RFS_CACHE = Path("/var/cache/modules/flistd/cache")
"""Where flistd points rfs (``--cache``) on a Zero-OS node."""
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_CHUNK_ERRORS = (ChunkNotFound, ChunkUnavailable, ChunkCorrupt, HubError)

FillOutcome = Literal["written", "present", "no_space"]


@dataclass
class FillStats:
    written: int = 0
    bytes_written: int = 0
    skipped_present: int = 0
    skipped_for_space: int = 0


class RfsCacheFiller:
    """Writes plain blocks into an rfs cache directory exactly as rfs would find them; thread-safe."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        quota_bytes: int | None = None,
        fsync: bool = True,
        min_free_bytes: int = RfsSection.min_free_bytes,
        free_space: Callable[[Path], int] = free_bytes,
        sync: Callable[[int], None] = os.fsync,
    ) -> None:
        if (quota_bytes is not None and quota_bytes < 0) or min_free_bytes < 0:
            raise BadConfig(f"quota_bytes and min_free_bytes must be ≥ 0, got {quota_bytes}, {min_free_bytes}")
        self.cache_dir = Path(cache_dir)
        self.quota_bytes = quota_bytes
        self.fsync = fsync
        self.min_free_bytes = min_free_bytes
        self.stats = FillStats()
        self._free_space = free_space
        self._sync = sync
        self._lock = threading.Lock()
        self._used: int | None = None  # bytes under cache_dir, counted once when a quota is set

    def path_for(self, chunk_id: str) -> Path:
        return self.cache_dir / chunk_relpath(chunk_id)

    def has(self, chunk_id: str) -> bool:
        """True if rfs would take the block as cached (a non-empty file at its path)."""
        try:
            return self.path_for(chunk_id).stat().st_size > 0
        except FileNotFoundError:
            return False

    def fill(self, chunk_id: str, blob: bytes, key: bytes) -> bool:
        """Put the plain bytes of ``blob`` where rfs looks for block ``chunk_id``.

        True when the block is in the cache afterwards (written now or already there); False when it did not fit.
        ChunkCorrupt if ``blob`` does not hash to ``chunk_id`` or does not decode with ``key``: nothing is written.
        """
        return self.fill_outcome(chunk_id, blob, key)[0] != "no_space"

    def fill_outcome(self, chunk_id: str, blob: bytes, key: bytes) -> tuple[FillOutcome, int]:
        """As :meth:`fill`, with what happened and how many plain bytes were written."""
        target = self.path_for(chunk_id)
        if self.has(chunk_id):
            with self._lock:
                self.stats.skipped_present += 1
            return "present", 0
        if not default_verifier(chunk_id, blob):
            raise ChunkCorrupt(chunk_id, "blob offered to the rfs cache")
        plain = decode(blob, key)
        if not self._reserve(chunk_id, len(plain)):
            return "no_space", 0
        try:
            fresh = self._write(target, plain)
        except OSError as error:
            self._release(len(plain))
            if error.errno in _NO_SPACE:
                self._no_space(chunk_id, len(plain), error.strerror or "no space")
                return "no_space", 0
            raise
        if not fresh:
            self._release(len(plain))
            with self._lock:
                self.stats.skipped_present += 1
            return "present", 0
        with self._lock:
            self.stats.written += 1
            self.stats.bytes_written += len(plain)
        return "written", len(plain)

    # --- space ------------------------------------------------------------------------------------------------

    def _reserve(self, chunk_id: str, size: int) -> bool:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        free = self._free_space(self.cache_dir)
        if free - size < self.min_free_bytes:
            self._no_space(chunk_id, size, f"{free} bytes free, {self.min_free_bytes} must stay free")
            return False
        if self.quota_bytes is None:
            return True
        with self._lock:
            if self._used is None:
                self._used = _usage(self.cache_dir)
            if self._used + size > self.quota_bytes:
                used = self._used
            else:
                self._used += size
                return True
        self._no_space(chunk_id, size, f"cache holds {used} bytes, quota {self.quota_bytes}")
        return False

    def _release(self, size: int) -> None:
        with self._lock:
            if self._used is not None:
                self._used -= size

    def _no_space(self, chunk_id: str, size: int, why: str) -> None:
        with self._lock:
            self.stats.skipped_for_space += 1
        log.warning("rfs cache %s: not writing block %s (%d bytes): %s", self.cache_dir, chunk_id, size, why)

    # --- the write ----------------------------------------------------------------------------------------------

    def _write(self, target: Path, plain: bytes) -> bool:
        """Temp file in the target's directory, fsync, atomic rename; the temp file never outlives a failure.
        False when a non-empty file appeared at ``target`` meanwhile (rfs finished first): it is kept."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = write_temp(target.parent, plain, fsync=self.fsync, prefix=f".{target.name[:16]}.", sync=self._sync)
        try:
            if self.has(target.name):  # rfs (or another filler) finished it meanwhile: keep theirs
                tmp.unlink()
                return False
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.fsync:
            try:
                fsync_dir(target.parent, self._sync)
            except OSError as error:  # the file is whole; a crash may lose the rename: a miss for rfs
                log.warning("rfs cache: fsync of %s failed: %s", target.parent, error)
        return True


def _usage(directory: Path) -> int:
    total = 0
    for root, _, names in os.walk(directory):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return total


# --- a whole image ------------------------------------------------------------------------------------------------


@dataclass
class FillReport:
    chunks: int = 0
    written: int = 0
    present: int = 0
    skipped_for_space: int = 0
    bytes_written: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    """Blocks that could not be had or were corrupt: chunk id → reason (rfs will fetch them itself)."""
    stopped_for_space: bool = False


def _file_order(manifest: Manifest) -> Iterator[tuple[str, bytes]]:
    seen: set[str] = set()
    for entry in manifest.files:
        for chunk in entry.chunks:
            if chunk.id not in seen:
                seen.add(chunk.id)
                yield chunk.id, chunk.key


async def fill_image(
    manifest: Manifest,
    filler: RfsCacheFiller,
    get_blob: Callable[[str], Awaitable[bytes]],
    *,
    concurrency: int = 8,
) -> FillReport:
    """Fill the rfs cache with every block of ``manifest`` in file order, ``concurrency`` at a time.

    Blocks already cached are not fetched. A block that cannot be had (ChunkNotFound, ChunkUnavailable, hub errors)
    or is corrupt is recorded in ``failed`` and skipped; once one block does not fit, no more are fetched.
    """
    if concurrency < 1:
        raise BadConfig(f"concurrency must be ≥ 1, got {concurrency}")
    order = list(_file_order(manifest))
    if any(not key for _, key in order):
        raise BadManifest(f"manifest {manifest.name} has blocks without keys: not imported from an flist")
    report = FillReport(chunks=len(order))
    pending = iter(order)

    async def worker() -> None:
        for chunk_id, key in pending:  # shared iterator: workers take blocks in file order
            if report.stopped_for_space:
                return
            if await trio.to_thread.run_sync(filler.has, chunk_id):
                report.present += 1
                continue
            try:
                blob = await get_blob(chunk_id)
                outcome, size = await trio.to_thread.run_sync(filler.fill_outcome, chunk_id, blob, key)
            except _CHUNK_ERRORS as error:
                report.failed[chunk_id] = str(error)
                continue
            if outcome == "written":
                report.written += 1
                report.bytes_written += size
            elif outcome == "present":
                report.present += 1
            else:
                report.skipped_for_space += 1
                report.stopped_for_space = True

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(min(concurrency, len(order))):
                nursery.start_soon(worker)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    if report.stopped_for_space:
        log.warning("rfs cache fill of %s stopped: out of space (%s)", manifest.name, report)
    return report
