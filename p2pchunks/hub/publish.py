"""Publishing: cut a file or a directory tree into chunks under a hub root and write its manifest.

Owns the walk of the source (sorted, symlinks recorded and never followed, empty files kept, permission bits
kept), the streaming cut into ``chunk_size`` pieces (one chunk in memory at a time), the idempotent atomic writes of
``<hub_root>/chunks/ab/cd/<id>`` (only chunks that are missing) and of ``<hub_root>/manifests/<name>.p2p``, and the
mapping of hot paths (boot-critical files, in the order they are needed) to hot chunk ids. Also the small parsers
the CLI needs: hot lists (one path per line) and sizes (``512KiB``).

Must not know: HTTP, the agent, the torrent beyond ``manifest.build_manifest``.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import nacl.signing

from .. import ids
from ..errors import BadConfig, BadManifest
from ..files import atomic_write
from ..formats.manifest import MAX_CHUNK_BYTES, ChunkRef, FileEntry, Manifest, build_manifest, check_path

__all__ = ["PublishResult", "parse_size", "publish", "read_hot_list"]

DEFAULT_CHUNK_SIZE = 512 * 1024


@dataclass
class PublishResult:
    manifest: Manifest
    manifest_path: Path
    chunks_total: int  # distinct chunks of the image
    chunks_written: int  # of those, the ones that were not in the hub root yet
    bytes_read: int  # bytes of regular files read from the source
    seconds: float
    skipped: tuple[str, ...] = ()  # paths of entries that are neither file, directory nor symlink


def publish(
    source: Path | str,
    hub_root: Path | str,
    *,
    name: str | None = None,
    version: str = "0",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    hot_paths: Sequence[str] = (),
    signing_key: nacl.signing.SigningKey | None = None,
) -> PublishResult:
    """Chunk ``source`` (a file or a tree) into ``hub_root`` and write ``manifests/<name>.p2p``."""
    started = time.perf_counter()
    source, hub_root = Path(source), Path(hub_root)
    if not 0 < chunk_size <= MAX_CHUNK_BYTES:
        raise BadConfig(f"chunk size must be from 1 to {MAX_CHUNK_BYTES} bytes, got {chunk_size}")
    name = name if name is not None else source.name
    writer = _ChunkWriter(hub_root / "chunks")
    files: list[FileEntry] = []
    skipped: list[str] = []
    for relpath, path, st in _walk(source):
        if stat.S_ISLNK(st.st_mode):
            files.append(FileEntry(relpath, 0, stat.S_IMODE(st.st_mode), symlink=_utf8(os.readlink(path), relpath)))
        elif stat.S_ISREG(st.st_mode):
            chunks, size = _cut(path, chunk_size, writer)
            files.append(FileEntry(relpath, size, stat.S_IMODE(st.st_mode), chunks))
        else:
            skipped.append(relpath)
    hot = _hot_chunks(files, hot_paths)
    manifest = build_manifest(name, version, files, directory=hub_root, chunk_size=chunk_size, hot=hot)
    if signing_key is not None:
        manifest = manifest.signed(signing_key)
    manifest_path = hub_root / "manifests" / f"{manifest.name}.p2p"
    blob = manifest.encode()
    if not (manifest_path.is_file() and manifest_path.read_bytes() == blob):
        _write_atomic(manifest_path, blob)
    return PublishResult(
        manifest=manifest,
        manifest_path=manifest_path,
        chunks_total=len(manifest.chunk_ids),
        chunks_written=writer.written,
        bytes_read=writer.bytes_read,
        seconds=time.perf_counter() - started,
        skipped=tuple(skipped),
    )


def _walk(source: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """``(image path, local path, lstat)`` of ``source`` itself if it is a file, else of every entry below it."""
    try:
        top = source.stat()
    except OSError as error:
        raise BadManifest(f"cannot publish {source}: {error.strerror or error}") from None
    if stat.S_ISDIR(top.st_mode):
        yield from _walk_dir("", source)
    else:
        yield _utf8(source.name, str(source)), source, top


def _walk_dir(prefix: str, directory: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Depth first, entries sorted by name bytes; symlinks are reported, never followed."""
    with os.scandir(directory) as scan:
        entries = sorted(scan, key=lambda entry: os.fsencode(entry.name))
    for entry in entries:
        relpath = _utf8(prefix + entry.name, entry.path)
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_dir(relpath + "/", Path(entry.path))
        else:
            yield relpath, Path(entry.path), st


def _utf8(text: str, where: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadManifest(f"{where!r}: name is not valid UTF-8") from None
    return text


class _ChunkWriter:
    """Stores chunks at ``<root>/ab/cd/<id>`` unless already there; counts what it wrote and read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written = 0
        self.bytes_read = 0

    def put(self, data: bytes) -> str:
        self.bytes_read += len(data)
        chunk_id = ids.chunk_id_of(data)
        target = self.root / ids.chunk_relpath(chunk_id)
        try:
            if target.stat().st_size == len(data):
                return chunk_id
        except FileNotFoundError:
            pass
        _write_atomic(target, data)
        self.written += 1
        return chunk_id


def _cut(path: Path, chunk_size: int, writer: _ChunkWriter) -> tuple[tuple[ChunkRef, ...], int]:
    chunks = []
    size = 0
    with path.open("rb") as fh:
        while data := fh.read(chunk_size):
            chunks.append(ChunkRef(writer.put(data), len(data)))
            size += len(data)
    return tuple(chunks), size


def _write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, data, fsync=False)


# --- hot paths ------------------------------------------------------------------------------------------------


def _hot_chunks(files: Sequence[FileEntry], hot_paths: Sequence[str]) -> list[str]:
    """The chunk ids of ``hot_paths``' files, in that order, each id once."""
    by_path = {entry.path: entry for entry in files}
    hot: dict[str, None] = {}
    for raw in hot_paths:
        path = normalize_image_path(raw)
        entry = by_path.get(path)
        if entry is None:
            raise BadManifest(f"hot path {raw!r} is not a file of the image")
        if entry.symlink is not None:
            raise BadManifest(f"hot path {raw!r} is a symlink; name the file it points to")
        hot.update(dict.fromkeys(chunk.id for chunk in entry.chunks))
    return list(hot)


def normalize_image_path(raw: str) -> str:
    """``/boot/kernel`` and ``./boot/kernel`` → ``boot/kernel`` (image paths are relative to the root)."""
    path = raw.strip()
    while path.startswith("./"):
        path = path[2:]
    path = path.lstrip("/")
    try:
        return check_path(path)
    except BadManifest:
        raise BadManifest(f"hot path {raw!r} is not a valid image path") from None


def read_hot_list(path: Path | str) -> list[str]:
    """Image paths, one per line; blank lines and ``#`` comments are ignored."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            out.append(text)
    return out


# --- sizes ----------------------------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3}
_SIZE_RE = re.compile(r"\A\s*([0-9]+)\s*([A-Za-z]*)\s*\Z")


def parse_size(text: str | int) -> int:
    """``512KiB``, ``1M``, ``4096`` → bytes (K/M/G and KiB/MiB/GiB are powers of 1024)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE_RE.match(str(text))
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _UNITS:
            raise BadConfig(f"bad size {text!r}: want a number with an optional B, K, KiB, M, MiB, G or GiB")
        value = int(match.group(1)) * _UNITS[unit]
    if value <= 0:
        raise BadConfig(f"bad size {text!r}: must be positive")
    return value
