"""An image's files written from its chunks as they arrive, in any order: the CLI's side of ``fetch --out``.

Owns the layout of an image on disk and its safety rules. ``prepare`` creates every regular file as a hidden
``.<name>.part`` beside its final path, sized up front, and maps each chunk id to every (file, offset) where the
manifest uses it; ``write`` puts one chunk at all its places (from several threads at once); ``finish`` sets the
modes, renames each ``.part`` over its final name and makes the symlinks, last, so that no write can go through
one; ``abort`` removes every ``.part`` file. Paths stay under the output directory: no absolute path, no ``..``,
and no directory that resolves outside it. Must not know HTTP or the agent: chunk ids and bytes in.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import BadManifest
from ..formats.manifest import FileEntry, Manifest


@dataclass(frozen=True)
class _File:
    part: Path
    target: Path
    entry: FileEntry


def safe_target(out: Path, path: str) -> Path:
    """``out/path`` for a manifest path that cannot leave ``out`` (BadManifest otherwise)."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise BadManifest(f"unsafe path in manifest: {path!r}")
    return out.joinpath(*pure.parts)


class ImageWriter:
    def __init__(self, manifest: Manifest, out: Path) -> None:
        self.manifest = manifest
        self.out = out
        self.bytes_written = 0
        self._files: list[_File] = []
        self._places: dict[str, list[tuple[_File, int]]] = {}
        self._pending: set[str] = set()
        self._lock = threading.Lock()

    @property
    def pending(self) -> list[str]:
        """The chunks not written yet, in the manifest's fetch order."""
        with self._lock:
            return [chunk_id for chunk_id in self.manifest.chunk_ids if chunk_id in self._pending]

    def prepare(self) -> None:
        """Create the directories and the sized ``.part`` files; on any failure, remove what was created."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            root = self.out.resolve()
            for entry in self.manifest.files:
                target = safe_target(self.out, entry.path)
                if entry.symlink is not None:
                    continue
                self._make_parent(target, root)
                file = _File(target.with_name(f".{target.name}.part"), target, entry)
                with open(file.part, "wb") as handle:
                    handle.truncate(entry.size)
                self._files.append(file)
                offset = 0
                for chunk in entry.chunks:
                    self._places.setdefault(chunk.id, []).append((file, offset))
                    offset += chunk.size
        except BaseException:
            self.abort()
            raise
        self._pending = set(self._places)

    def write(self, chunk_id: str, data: bytes) -> int:
        """Write ``chunk_id`` at every place the image uses it; the bytes written (0 if it was not wanted)."""
        with self._lock:
            if chunk_id not in self._pending:
                return 0
            self._pending.discard(chunk_id)
        try:
            expected = self.manifest.chunk_size_of(chunk_id)
            if len(data) != expected:
                raise BadManifest(f"chunk {chunk_id} has {len(data)} bytes, the manifest says {expected}")
            for file, offset in self._places[chunk_id]:
                _pwrite_all(file.part, data, offset)
        except BaseException:
            with self._lock:
                self._pending.add(chunk_id)
            raise
        written = len(data) * len(self._places[chunk_id])
        with self._lock:
            self.bytes_written += written
        return written

    def finish(self) -> None:
        """Every chunk is written: modes, renames, then the symlinks."""
        if self._pending:
            raise BadManifest(f"{len(self._pending)} chunks of {self.manifest.name} were never written")
        for file in self._files:
            os.chmod(file.part, file.entry.mode & 0o7777 or 0o644)
            os.replace(file.part, file.target)
        root = self.out.resolve()
        for entry in self.manifest.files:
            if entry.symlink is None:
                continue
            target = safe_target(self.out, entry.path)
            self._make_parent(target, root)
            if target.is_symlink() or target.exists():
                target.unlink()
            target.symlink_to(entry.symlink)

    def abort(self) -> None:
        """Remove every ``.part`` file (the final names are left as they were)."""
        for file in self._files:
            file.part.unlink(missing_ok=True)

    def _make_parent(self, target: Path, root: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(root):
            raise BadManifest(f"{target.relative_to(self.out)}: its directory leads outside {self.out}")


def _pwrite_all(path: Path, data: bytes, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    finally:
        os.close(fd)
