"""Files, once: the atomic write every writer of p2pchunks uses, directory fsync, and hashing a file in blocks.

An atomic write puts the bytes in a hidden temp file beside the target (same directory, so the rename is atomic
on every POSIX filesystem), optionally fsyncs it, renames it over the target and fsyncs the directory: a reader
sees the old file or the whole new one, never a part, and after a crash the temp file is all that can be left
(its name starts with ``.`` and ends with ``.partial``, so sweepers can find it). A file that something else
builds at a path (sqlite, tarfile) gets the same treatment from :func:`replacing`. Hashing reads a file in fixed
blocks into one reused buffer, so verifying a chunk costs a few hundred KiB of memory at most, never its size.

Must not know chunks, the cache or any format: paths and bytes only.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["PARTIAL_SUFFIX", "atomic_write", "blake2b_file", "fsync_dir", "replacing", "write_temp"]

Sync = Callable[[int], None]
"""``os.fsync`` (a seam for tests that make it fail)."""

PARTIAL_SUFFIX = ".partial"
HASH_BLOCK = 256 * 1024


def write_temp(
    directory: Path,
    data: bytes | memoryview,
    *,
    fsync: bool = True,
    mode: int = 0o644,
    prefix: str,
    sync: Sync = os.fsync,
) -> Path:
    """Write ``data`` to a new hidden temp file in ``directory`` (fsynced unless told not to) and return its path.

    The first half of an atomic write, for callers that must do something between writing and renaming (the
    cache makes room under its lock). The file never outlives a failure here.
    """
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=PARTIAL_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            if fsync:
                sync(file.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def atomic_write(
    target: Path,
    data: bytes | memoryview,
    *,
    fsync: bool = True,
    mode: int = 0o644,
    prefix: str | None = None,
    replace: Callable[[Path, Path], object] = os.replace,
) -> None:
    """Write ``data`` to ``target`` so that no reader ever sees a partial file.

    ``prefix``: the temp file's name start (default ``.<target name>.``); ``replace``: the rename (a seam for
    tests that fail it). The temp file never outlives a failure.
    """
    tmp = write_temp(target.parent, data, fsync=fsync, mode=mode, prefix=prefix or _prefix(target))
    try:
        replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(target.parent)


@contextmanager
def replacing(target: Path, *, fsync: bool = True, mode: int = 0o644, prefix: str | None = None) -> Iterator[Path]:
    """A hidden temp path beside ``target`` for something else to build the new file at (sqlite, tarfile, a
    copy); when the block ends it is chmodded to ``mode``, fsynced (unless told not to) and renamed over
    ``target``; when the block raises it is removed."""
    tmp = write_temp(target.parent, b"", fsync=False, mode=mode, prefix=prefix or _prefix(target))
    try:
        yield tmp
        os.chmod(tmp, mode)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(target.parent)


def _prefix(target: Path) -> str:
    return f".{target.name[:40]}."


def fsync_dir(directory: Path, sync: Sync = os.fsync) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        sync(fd)
    finally:
        os.close(fd)


def blake2b_file(path: Path, digest_size: int, *, limit: int) -> tuple[str, int]:
    """The BLAKE2b hex digest and size of the file at ``path``, read in blocks (``limit``: read no further).

    Raises ``FileNotFoundError`` (and other ``OSError``) as ``open`` does.
    """
    digest = hashlib.blake2b(digest_size=digest_size)
    buffer = bytearray(HASH_BLOCK)
    view = memoryview(buffer)
    size = 0
    with open(path, "rb", buffering=0) as file:
        while size <= limit:
            n = file.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
            size += n
    return digest.hexdigest(), size


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system of ``path``."""
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize
