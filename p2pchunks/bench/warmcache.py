"""A warm agent cache built straight on disk, for the benchmarks: N manifests of random 512 KiB chunks, indexed.

Owns nothing an agent does: it writes what an agent that fetched these images would have left (chunk files in
the rfs layout, the SQLite index with a manifest reference per chunk, ``manifests/<id>.p2p``), fast, without fsync.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..cache.store import ChunkCache
from ..formats.manifest import ChunkRef, FileEntry, Manifest, build_manifest
from ..ids import chunk_id_of

CHUNK = 512 * 1024


@dataclass(frozen=True)
class WarmCache:
    directory: Path
    manifests: tuple[Manifest, ...]

    @property
    def chunks(self) -> int:
        return sum(len(m.piece_ids) for m in self.manifests)

    @property
    def bytes(self) -> int:
        return sum(m.unique_bytes for m in self.manifests)


def build_warm_cache(directory: Path, total_bytes: int, manifests: int, *, budget_bytes: int) -> WarmCache:
    """Fill ``directory`` with ``manifests`` images of about ``total_bytes`` in all (at least one chunk each)."""
    per_image = max(CHUNK, total_bytes // max(1, manifests))
    built: list[Manifest] = []
    with ChunkCache(directory, budget_bytes=budget_bytes, fsync=False) as cache:
        (directory / "manifests").mkdir(parents=True, exist_ok=True)
        for n in range(manifests):
            refs = []
            for _ in range(max(1, per_image // CHUNK)):
                data = os.urandom(CHUNK)
                chunk_id = chunk_id_of(data)
                cache.put(chunk_id, data)
                refs.append(ChunkRef(chunk_id, CHUNK))
            entry = FileEntry("disk.raw", CHUNK * len(refs), 0o644, tuple(refs))
            manifest = build_manifest(f"image{n}", "1", [entry], directory=directory, chunk_size=CHUNK)
            (directory / "manifests" / f"{manifest.manifest_id}.p2p").write_bytes(manifest.encode())
            cache.record_manifest(manifest.manifest_id, manifest.name, manifest.chunk_ids)
            built.append(manifest)
    return WarmCache(directory, tuple(built))
