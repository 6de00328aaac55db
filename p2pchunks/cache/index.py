"""The chunk cache's SQLite index: which chunks are cached, their size and last access, pins, manifest refs.

Owns: the schema of ``index.sqlite3`` (WAL, ``synchronous=NORMAL``) and every SQL statement about it, including
the effective pin of a chunk (the highest of its direct pin and the pins of the manifests that reference it) and
each chunk's integrity record: when its file was last hashed and the file's *stamp* then (inode, size, mtime and
ctime), so that a file changed since (by anything but bit rot) is noticed with one ``stat``.
Must not know files, hashing or eviction policy: :class:`p2pchunks.cache.ChunkCache` does, and holds its lock
around every call here (this class is not thread-safe on its own). Each method that changes rows is one
transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ManifestNotFound
from ..policy.eviction import Candidate, Pin

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (id TEXT PRIMARY KEY, size INTEGER NOT NULL, last_access REAL NOT NULL,
    verified_at REAL NOT NULL DEFAULT 0, stamp TEXT NOT NULL DEFAULT '') WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pins (chunk_id TEXT PRIMARY KEY, pin INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS manifests (id TEXT PRIMARY KEY, name TEXT NOT NULL, pin INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS refs (manifest_id TEXT NOT NULL, chunk_id TEXT NOT NULL,
    PRIMARY KEY (manifest_id, chunk_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refs_by_chunk ON refs (chunk_id);
"""
# Version 1 had no integrity record: its chunks get an empty stamp, so the next reconcile hashes each once.
MIGRATIONS = {
    1: "ALTER TABLE chunks ADD COLUMN verified_at REAL NOT NULL DEFAULT 0; "
    "ALTER TABLE chunks ADD COLUMN stamp TEXT NOT NULL DEFAULT '';",
}
_IN_BATCH = 500  # ids per ``IN (...)``: far below SQLite's variable limit
# A chunk's pin: the highest of its direct pin and the pins of the manifests that reference it.
PIN_SQL = """MAX(COALESCE((SELECT pin FROM pins WHERE chunk_id = c.id), 0),
    COALESCE((SELECT MAX(m.pin) FROM refs r JOIN manifests m ON m.id = r.manifest_id WHERE r.chunk_id = c.id), 0))"""


@dataclass(frozen=True)
class CacheEntry:
    chunk_id: str
    size: int
    last_access: float
    pin: Pin
    manifests: tuple[str, ...]


class CacheIndex:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version and version < SCHEMA_VERSION:
                for step in range(version, SCHEMA_VERSION):
                    self._db.executescript(MIGRATIONS[step])
            self._db.executescript(SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    # ---- chunks ----------------------------------------------------------------------------------------------

    def size(self, chunk_id: str) -> int | None:
        row = self._db.execute("SELECT size FROM chunks WHERE id = ?", (chunk_id,)).fetchone()
        return None if row is None else int(row[0])

    def stamps(self) -> dict[str, tuple[int, str]]:
        """``id → (size, stamp)`` of every indexed chunk."""
        return {i: (size, stamp) for i, size, stamp in self._db.execute("SELECT id, size, stamp FROM chunks")}

    def sizes(self, chunk_ids: Sequence[str]) -> dict[str, int]:
        """``id → size`` of those of ``chunk_ids`` that are indexed (one query per few hundred ids)."""
        found: dict[str, int] = {}
        for start in range(0, len(chunk_ids), _IN_BATCH):
            batch = chunk_ids[start : start + _IN_BATCH]
            marks = ",".join("?" * len(batch))
            found.update(self._db.execute(f"SELECT id, size FROM chunks WHERE id IN ({marks})", batch))
        return found

    def least_recently_verified(self, limit: int) -> list[tuple[str, int]]:
        """``(id, size)`` of the ``limit`` chunks hashed longest ago: the scrub's next ones."""
        rows = self._db.execute("SELECT id, size FROM chunks ORDER BY verified_at, id LIMIT ?", (limit,))
        return [(chunk_id, int(size)) for chunk_id, size in rows]

    def set_verified(self, chunk_id: str, at: float, stamp: str) -> None:
        with self._db:
            self._db.execute("UPDATE chunks SET verified_at = ?, stamp = ? WHERE id = ?", (at, stamp, chunk_id))

    def totals(self) -> tuple[int, int]:
        """(chunks, bytes) indexed."""
        count, used = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM chunks").fetchone()
        return int(count), int(used)

    def add_many(self, rows: Sequence[tuple[str, int, str]], at: float, manifest_id: str | None) -> list[str]:
        """Index ``(id, size, stamp)`` rows of chunks just verified at ``at``, and their manifest refs, in one
        transaction; the ids that were new (a ref is recorded for those already indexed too)."""
        fresh: list[str] = []
        with self._db:
            for chunk_id, size, stamp in rows:
                added = self._db.execute(
                    "INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?, ?)", (chunk_id, size, at, at, stamp)
                ).rowcount
                if added:
                    fresh.append(chunk_id)
                self._ref(manifest_id, chunk_id)
        return fresh

    def ref(self, manifest_id: str | None, chunk_id: str) -> None:
        """Record that a known manifest references ``chunk_id`` (unknown manifests are ignored)."""
        with self._db:
            self._ref(manifest_id, chunk_id)

    def _ref(self, manifest_id: str | None, chunk_id: str) -> None:
        if manifest_id is not None:
            self._db.execute(
                "INSERT OR IGNORE INTO refs SELECT id, ? FROM manifests WHERE id = ?", (chunk_id, manifest_id)
            )

    def delete(self, chunk_ids: Sequence[str]) -> list[tuple[str, int]]:
        """Drop rows; return ``(id, size)`` of those that existed."""
        deleted: list[tuple[str, int]] = []
        with self._db:
            for chunk_id in chunk_ids:
                size = self.size(chunk_id)
                if size is not None:
                    self._db.execute("DELETE FROM chunks WHERE id = ?", (chunk_id,))
                    deleted.append((chunk_id, size))
        return deleted

    def touch(self, accesses: Mapping[str, float]) -> None:
        """Write batched last-access stamps."""
        if accesses:
            with self._db:
                self._db.executemany(
                    "UPDATE chunks SET last_access = ? WHERE id = ?", [(at, i) for i, at in accesses.items()]
                )

    def candidates(self) -> list[Candidate]:
        rows = self._db.execute(f"SELECT c.id, c.size, c.last_access, {PIN_SQL} FROM chunks c").fetchall()
        return [Candidate(chunk_id, size, at, Pin(pin)) for chunk_id, size, at, pin in rows]

    def entries(self, limit: int | None) -> list[CacheEntry]:
        """Cached chunks by pin level, then least recently used, then id: the eviction order less the farm's
        hints (``FarmHints``: replicas and last copies), which only an eviction plan weighs."""
        rows = self._db.execute(
            f"SELECT c.id, c.size, c.last_access, {PIN_SQL} AS pin, (SELECT group_concat(manifest_id, ' ') "
            "FROM (SELECT manifest_id FROM refs WHERE chunk_id = c.id ORDER BY manifest_id)) "
            "FROM chunks c ORDER BY pin, c.last_access, c.id LIMIT ?",
            (-1 if limit is None else limit,),
        ).fetchall()
        return [
            CacheEntry(i, size, at, Pin(pin), tuple(refs.split()) if refs else ()) for i, size, at, pin, refs in rows
        ]

    # ---- manifests and pins ----------------------------------------------------------------------------------

    def record_manifest(self, manifest_id: str, name: str, chunk_ids: Iterable[str], pin: Pin) -> None:
        """Reference ``chunk_ids`` (present or not) from a manifest. Never lowers an existing pin of it."""
        with self._db:
            self._db.execute(
                "INSERT INTO manifests VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                "pin = MAX(pin, excluded.pin)",
                (manifest_id, name, int(pin)),
            )
            self._db.executemany("INSERT OR IGNORE INTO refs VALUES (?, ?)", ((manifest_id, c) for c in chunk_ids))

    def set_manifest_pin(self, manifest_id: str, pin: Pin) -> None:
        with self._db:
            if self._db.execute("UPDATE manifests SET pin = ? WHERE id = ?", (int(pin), manifest_id)).rowcount == 0:
                raise ManifestNotFound(f"no manifest {manifest_id!r} in the cache index")

    def forget_manifest(self, manifest_id: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM refs WHERE manifest_id = ?", (manifest_id,))
            self._db.execute("DELETE FROM manifests WHERE id = ?", (manifest_id,))

    def manifests(self) -> list[tuple[str, str, Pin]]:
        rows = self._db.execute("SELECT id, name, pin FROM manifests ORDER BY name, id").fetchall()
        return [(manifest_id, name, Pin(pin)) for manifest_id, name, pin in rows]

    def pin_chunk(self, chunk_id: str, pin: Pin) -> None:
        with self._db:
            if pin is Pin.NONE:
                self._db.execute("DELETE FROM pins WHERE chunk_id = ?", (chunk_id,))
            else:
                self._db.execute("INSERT OR REPLACE INTO pins VALUES (?, ?)", (chunk_id, int(pin)))

    def pin_chunks(self, chunk_ids: Iterable[str], pin: Pin) -> None:
        """Pin chunks directly at ``pin`` (one transaction)."""
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO pins VALUES (?, ?)", ((c, int(pin)) for c in chunk_ids))

    def unpin_chunks(self, chunk_ids: Iterable[str], pin: Pin) -> None:
        """Drop the direct pins of ``chunk_ids`` that are exactly ``pin`` (others stay)."""
        with self._db:
            self._db.executemany("DELETE FROM pins WHERE chunk_id = ? AND pin = ?", ((c, int(pin)) for c in chunk_ids))

    def pinned_directly(self, pin: Pin) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT chunk_id FROM pins WHERE pin = ?", (int(pin),))}

    def pin_of(self, chunk_id: str) -> Pin:
        (pin,) = self._db.execute(f"SELECT {PIN_SQL} FROM (SELECT ? AS id) c", (chunk_id,)).fetchone()
        return Pin(pin)


def read_held(path: Path) -> set[str]:
    """The chunk ids indexed in the index file at ``path``, read without writing (another process may own it)."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {row[0] for row in db.execute("SELECT id FROM chunks")}
    finally:
        db.close()
