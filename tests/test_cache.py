"""The chunk cache on real files and real SQLite: atomic verified writes, eviction, pins, reconcile, persistence."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from p2pchunks.cache.integrity import file_stamp
from p2pchunks.cache.store import ChunkCache, ReconcileReport
from p2pchunks.errors import BadChunkId, CacheFull, ChunkCorrupt, ChunkNotFound, ManifestNotFound
from p2pchunks.ids import chunk_id_of
from p2pchunks.policy.eviction import FarmHints, Pin

MANIFEST = "m" * 64


def chunk(n: int, size: int = 100, digest: int = 32) -> tuple[str, bytes]:
    """Chunk ``n``: ``size`` bytes, id of ``digest`` bytes (32 → 64 hex digits, 16 → 32)."""
    data = n.to_bytes(4, "big") * (size // 4) + b"x" * (size % 4)
    return chunk_id_of(data, digest), data


class Clock:
    """A settable clock that can be told to fail on its next call (a seam for exceptions mid-put)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.fail_next = False

    def __call__(self) -> float:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("clock failed")
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(tmp_path: Path, clock: Clock) -> Iterator[Callable[..., ChunkCache]]:
    """Open caches on ``tmp_path/cache`` (1000 B budget: high 900, low 800 unless told); all closed at the end."""
    opened: list[ChunkCache] = []

    def open_cache(**kwargs: Any) -> ChunkCache:
        kwargs.setdefault("budget_bytes", 1000)
        kwargs.setdefault("clock", clock)
        cache = ChunkCache(tmp_path / "cache", **kwargs)
        opened.append(cache)
        return cache

    yield open_cache
    for cache in opened:
        cache.close()


def rows(cache: ChunkCache, sql: str = "SELECT id, last_access FROM chunks ORDER BY id") -> list[tuple[Any, ...]]:
    """Read the index through a second connection: what is really committed."""
    with closing(sqlite3.connect(cache.directory / "index.sqlite3")) as db:
        return db.execute(sql).fetchall()


def visible_files(cache: ChunkCache) -> list[str]:
    return sorted(str(p.relative_to(cache.chunk_dir)) for p in cache.chunk_dir.rglob("*") if p.is_file())


def fill(cache: ChunkCache, clock: Clock, ids: Sequence[int], size: int = 100) -> list[str]:
    out = []
    for n in ids:
        clock.now += 1
        chunk_id, data = chunk(n, size)
        assert cache.put(chunk_id, data)
        out.append(chunk_id)
    return out


@pytest.mark.parametrize("digest", [16, 32], ids=["32-hex", "64-hex"])
def test_put_get_round_trip(make: Callable[..., ChunkCache], digest: int) -> None:
    cache = make()
    chunk_id, data = chunk(1, 123, digest)
    assert len(chunk_id) == digest * 2
    assert not cache.has(chunk_id)
    assert cache.put(chunk_id, data) is True
    assert cache.has(chunk_id)
    assert cache.get(chunk_id) == data
    path, size = cache.locate(chunk_id)
    assert path == cache.directory / "chunks" / chunk_id[:2] / chunk_id[2:4] / chunk_id
    assert (path.read_bytes(), size) == (data, 123)
    assert cache.put(chunk_id, data) is False  # already there
    assert cache.usage().chunks == 1
    assert cache.usage().bytes == 123
    assert visible_files(cache) == [f"{chunk_id[:2]}/{chunk_id[2:4]}/{chunk_id}"]


def test_unknown_and_bad_ids(make: Callable[..., ChunkCache]) -> None:
    cache = make()
    chunk_id, data = chunk(1)
    with pytest.raises(ChunkNotFound):
        cache.get(chunk_id)
    with pytest.raises(ChunkNotFound):
        cache.locate(chunk_id)
    for bad in ("../../etc/passwd", chunk_id.upper(), chunk_id[:-1]):
        with pytest.raises(BadChunkId):
            cache.put(bad, data)
        with pytest.raises(BadChunkId):
            cache.has(bad)
    assert visible_files(cache) == []


def test_corrupt_data_rejected(make: Callable[..., ChunkCache]) -> None:
    cache = make()
    chunk_id, data = chunk(1)
    with pytest.raises(ChunkCorrupt):
        cache.put(chunk_id, data + b"!")
    assert not cache.has(chunk_id)
    assert visible_files(cache) == []
    assert rows(cache) == []


def test_verifier_failure_leaves_nothing(make: Callable[..., ChunkCache]) -> None:
    def exploding(chunk_id: str, data: bytes) -> bool:
        raise OSError("verifier crashed")

    cache = make(verifier=exploding)
    chunk_id, data = chunk(1)
    with pytest.raises(OSError, match="verifier crashed"):
        cache.put(chunk_id, data)
    assert visible_files(cache) == []
    assert rows(cache) == []


def test_failing_rename_leaves_nothing(make: Callable[..., ChunkCache]) -> None:
    cache = make()
    chunk_id, data = chunk(1)
    cache.path_for(chunk_id).mkdir(parents=True)  # os.replace of the written temp file onto it fails
    with pytest.raises(IsADirectoryError):
        cache.put(chunk_id, data)
    leftovers = [p for p in cache.chunk_dir.rglob("*") if p.is_file()]
    assert leftovers == []
    assert rows(cache) == []
    assert not cache.has(chunk_id)
    assert cache.usage().bytes == 0


def test_failure_after_rename_removes_the_file(make: Callable[..., ChunkCache], clock: Clock) -> None:
    cache = make()
    chunk_id, data = chunk(1)
    clock.fail_next = True  # the index insert asks the clock, after the file is in place
    with pytest.raises(RuntimeError, match="clock failed"):
        cache.put(chunk_id, data)
    assert visible_files(cache) == []
    assert rows(cache) == []
    assert not cache.has(chunk_id)
    assert cache.usage().chunks == 0
    assert cache.put(chunk_id, data) is True  # and the cache still works
    assert rows(cache) == [(chunk_id, clock.now)]


def test_eviction_lru_down_to_low_watermark(make: Callable[..., ChunkCache], clock: Clock) -> None:
    cache = make()
    evicted: list[list[str]] = []
    cache.add_evict_listener(lambda ids: evicted.append(list(ids)))
    ids = fill(cache, clock, range(9))  # 900 B: at the high watermark, nothing goes
    assert evicted == []
    assert cache.usage().bytes == 900
    clock.now += 1
    cache.get(ids[0])  # the oldest becomes the most recent
    fill(cache, clock, [9])  # 900 + 100 > 900: evict until 800 - 100 = 700 B are left
    assert evicted == [[ids[1], ids[2]]]
    assert [cache.has(i) for i in ids[:4]] == [True, False, False, True]
    assert not cache.path_for(ids[1]).exists()
    usage = cache.usage()
    assert (usage.chunks, usage.bytes) == (8, 800)
    assert (usage.budget_bytes, usage.high_bytes, usage.low_bytes) == (1000, 900, 800)


def test_pins_order_eviction(make: Callable[..., ChunkCache], clock: Clock) -> None:
    cache = make()
    ids = fill(cache, clock, range(9))
    cache.record_manifest(MANIFEST, "image", ids[0:3], Pin.OFFICIAL)  # oldest three: official
    cache.pin_chunk(ids[3], Pin.USER)
    cache.pin_chunk(ids[4], Pin.USER)
    assert [cache.pin_of(i) for i in ids[:6]] == [Pin.OFFICIAL] * 3 + [Pin.USER] * 2 + [Pin.NONE]
    big_id, big = chunk(100, 500)  # 900 + 500: must get down to 300 B held, so six chunks go
    assert cache.put(big_id, big)
    # unpinned (LRU) first, then user-pinned, official last
    assert [cache.has(i) for i in ids] == [True, True, True, False, False, False, False, False, False]
    assert cache.usage().bytes == 800
    assert cache.gc(force=True).victims == ()


def test_official_evicted_only_as_a_last_resort(make: Callable[..., ChunkCache], clock: Clock) -> None:
    cache = make()
    ids = fill(cache, clock, range(9))
    cache.record_manifest(MANIFEST, "image", ids, Pin.OFFICIAL)
    fill(cache, clock, [50])
    assert [cache.has(i) for i in ids] == [False, False] + [True] * 7


def test_the_farms_last_copies_go_only_to_keep_the_budget(make: Callable[..., ChunkCache], clock: Clock) -> None:
    hints = FarmHints()
    cache = make(farm=hints)
    ids = fill(cache, clock, range(9))  # 900 B, ids[0] oldest
    cache.pin_chunks(ids[:6], Pin.OFFICIAL)  # six custody chunks, pinned directly
    hints.set_custody(frozenset(ids[:6]))
    hints.set_replicas({ids[3]: 1, ids[4]: 2, ids[5]: 1, ids[8]: 3})  # ids[0:3]: nobody else holds them
    big_id, big = chunk(77, 400)  # 1300 B: 500 B must go
    assert cache.put(big_id, big)
    # unpinned first (the most farm copies first: 8, then 6, 7), then official ones farm-mates hold (4, then 3)
    assert [cache.has(i) for i in ids] == [True, True, True, False, False, True, False, False, False]
    assert cache.last_copies_evicted == 0
    with cache.protecting([ids[5], big_id]):
        more_id, more = chunk(78, 200)  # 1000 B: only the farm's last copies could go, and the budget holds
        assert cache.put(more_id, more)
        assert all(cache.has(i) for i in ids[:3])
        with cache.protecting([more_id]):
            assert cache.gc(force=True).victims == ()  # nor does a gc pass take them
            last_id, last = chunk(79, 150)  # 1150 B would break the budget: the oldest last copies go
            assert cache.put(last_id, last)
    assert [cache.has(i) for i in ids[:3]] == [False, False, True]
    assert cache.last_copies_evicted == 2
    assert cache.usage().bytes == 950
    cache.pin_chunks(ids[:6], Pin.OFFICIAL, drop=True)
    cache.pin_chunk(ids[7], Pin.USER)
    cache.pin_chunks([ids[7]], Pin.OFFICIAL, drop=True)  # only exactly-official direct pins are dropped
    assert (cache.pinned_directly(Pin.OFFICIAL), cache.pin_of(ids[7])) == (set(), Pin.USER)


def test_protected_chunks_are_kept_and_cache_full(make: Callable[..., ChunkCache], clock: Clock) -> None:
    cache = make()
    ids = fill(cache, clock, range(9))
    with cache.protecting(ids[:2]), cache.protecting(ids[:1]):
        ids += fill(cache, clock, [9])
        assert cache.has(ids[0])
        assert cache.has(ids[1])
        assert not cache.has(ids[2])
        assert not cache.has(ids[3])
    with cache.protecting(ids[:1]), cache.protecting(ids):
        pass
    ids += fill(cache, clock, [10])  # 900 B
    plan = cache.gc(force=True, dry_run=True)
    assert [v.chunk_id for v in plan.victims] == [ids[0]]  # protection released after the blocks
    held = [i for i in ids if cache.has(i)]
    with cache.protecting(held):
        big_id, big = chunk(77, 300)  # 900 + 300 > budget and nothing may go
        with pytest.raises(CacheFull):
            cache.put(big_id, big)
        assert [cache.has(i) for i in held] == [True] * len(held)  # nothing evicted for a chunk that can't fit
    assert not cache.has(big_id)
    assert not cache.path_for(big_id).exists()
    assert not [p for p in cache.chunk_dir.rglob(".tmp-*")]


def test_chunk_larger_than_budget(make: Callable[..., ChunkCache]) -> None:
    cache = make()
    chunk_id, data = chunk(1, 1004)
    with pytest.raises(CacheFull):
        cache.put(chunk_id, data)
    assert visible_files(cache) == []
    assert rows(cache) == []


def test_gc_dry_run_and_force(make: Callable[..., ChunkCache], clock: Clock) -> None:
    cache = make()
    evicted: list[list[str]] = []
    cache.add_evict_listener(lambda ids: evicted.append(list(ids)))
    ids = fill(cache, clock, range(9))
    assert cache.gc().victims == ()
    plan = cache.gc(dry_run=True, force=True)
    assert [v.chunk_id for v in plan.victims] == [ids[0]]
    assert cache.has(ids[0])
    assert evicted == []
    plan = cache.gc(force=True)
    assert [v.chunk_id for v in plan.victims] == [ids[0]]
    assert not cache.has(ids[0])
    assert evicted == [[ids[0]]]
    assert cache.usage().bytes == 800


def test_access_times_batched_and_flushed(make: Callable[..., ChunkCache], clock: Clock) -> None:
    cache = make()
    chunk_id, data = chunk(1)
    cache.put(chunk_id, data)
    put_at = clock.now
    clock.now = 5000.0
    cache.get(chunk_id)
    cache.locate(chunk_id)
    assert rows(cache) == [(chunk_id, put_at)]  # a hit costs no write
    cache.flush_access()
    assert rows(cache) == [(chunk_id, 5000.0)]
    clock.now = 6000.0
    cache.get(chunk_id)
    cache.close()
    assert rows(cache) == [(chunk_id, 6000.0)]  # close flushes


def test_reopen_keeps_index_pins_and_manifests(make: Callable[..., ChunkCache], clock: Clock) -> None:
    cache = make()
    ids = fill(cache, clock, range(3))
    cache.record_manifest(MANIFEST, "image", ids[:2], Pin.USER)
    cache.pin_chunk(ids[2], Pin.OFFICIAL)
    cache.close()
    again = make()
    assert [again.has(i) for i in ids] == [True] * 3
    assert again.get(ids[1]) == chunk(1)[1]
    assert again.usage().chunks == 3
    assert again.usage().bytes == 300
    assert again.manifests() == [(MANIFEST, "image", Pin.USER)]
    assert [again.pin_of(i) for i in ids] == [Pin.USER, Pin.USER, Pin.OFFICIAL]
    assert [e.chunk_id for e in again.entries()] == [ids[0], ids[1], ids[2]]


def test_manifest_pins(make: Callable[..., ChunkCache], clock: Clock) -> None:
    cache = make()
    ids = fill(cache, clock, range(2))
    absent = chunk(99)[0]
    other = "o" * 64
    cache.record_manifest(MANIFEST, "image", [ids[0], absent], Pin.OFFICIAL)
    cache.record_manifest(other, "other", [ids[0]], Pin.USER)
    assert cache.pin_of(absent) == Pin.OFFICIAL  # references need not be present yet
    cache.record_manifest(MANIFEST, "image:2", [ids[0]])  # re-recording never lowers a pin
    assert cache.manifests() == [(MANIFEST, "image:2", Pin.OFFICIAL), (other, "other", Pin.USER)]
    cache.set_manifest_pin(MANIFEST, Pin.NONE)
    assert cache.pin_of(ids[0]) == Pin.USER  # max over the manifests referencing it
    cache.pin_chunk(ids[0], Pin.OFFICIAL)
    assert cache.pin_of(ids[0]) == Pin.OFFICIAL  # direct pin wins when higher
    cache.pin_chunk(ids[0], Pin.NONE)
    cache.forget_manifest(other)
    assert cache.pin_of(ids[0]) == Pin.NONE
    assert cache.has(ids[0])
    with pytest.raises(ManifestNotFound):
        cache.set_manifest_pin(other, Pin.USER)
    assert cache.put(*chunk(99), manifest_id=MANIFEST)
    entries = {e.chunk_id: e for e in cache.entries()}
    assert entries[absent].manifests == (MANIFEST,)
    assert entries[ids[1]].manifests == ()
    assert [e.chunk_id for e in cache.entries(limit=1)] == [ids[0]]


def test_put_links_to_manifest(make: Callable[..., ChunkCache], clock: Clock) -> None:
    cache = make()
    cache.record_manifest(MANIFEST, "image", [], Pin.USER)
    chunk_id, data = chunk(5)
    cache.put(chunk_id, data, manifest_id=MANIFEST)
    assert cache.pin_of(chunk_id) == Pin.USER
    cache.put(chunk_id, data, manifest_id="unknown")  # an unknown manifest is ignored
    assert cache.entries()[0].manifests == (MANIFEST,)


def test_remove_and_listener(make: Callable[..., ChunkCache], clock: Clock) -> None:
    cache = make()
    heard: list[list[str]] = []

    def broken(ids: Sequence[str]) -> None:
        raise RuntimeError("listener bug")

    cache.add_evict_listener(broken)  # a failing listener neither stops the others nor the removal
    cache.add_evict_listener(lambda ids: heard.append(list(ids)))
    (chunk_id,) = fill(cache, clock, [1])
    assert cache.remove(chunk_id) is True
    assert heard == [[chunk_id]]
    assert not cache.has(chunk_id)
    assert visible_files(cache) == []
    assert cache.remove(chunk_id) is False
    assert heard == [[chunk_id]]


def test_vanished_file_is_a_miss(make: Callable[..., ChunkCache], clock: Clock) -> None:
    cache = make()
    heard: list[list[str]] = []
    cache.add_evict_listener(lambda ids: heard.append(list(ids)))
    first, second = fill(cache, clock, [1, 2])
    cache.path_for(first).unlink()
    with pytest.raises(ChunkNotFound):
        cache.get(first)
    cache.path_for(second).write_bytes(b"short")
    with pytest.raises(ChunkNotFound):
        cache.locate(second)
    assert heard == [[first], [second]]
    assert rows(cache) == []
    assert visible_files(cache) == []


def test_adopt(make: Callable[..., ChunkCache], clock: Clock) -> None:
    cache = make()
    good_id, good = chunk(1)
    bad_id = chunk(2)[0]
    for chunk_id, data in ((good_id, good), (bad_id, b"not it")):
        cache.path_for(chunk_id).parent.mkdir(parents=True, exist_ok=True)
        cache.path_for(chunk_id).write_bytes(data)
    assert cache.adopt(good_id) is True
    assert cache.get(good_id) == good
    assert cache.adopt(good_id) is False
    with pytest.raises(ChunkCorrupt):
        cache.adopt(bad_id)
    assert not cache.path_for(bad_id).exists()
    assert not cache.has(bad_id)
    with pytest.raises(ChunkNotFound):
        cache.adopt(chunk(3)[0])
    assert cache.usage().bytes == 100


def test_adopt_evicts_others_over_high(make: Callable[..., ChunkCache], clock: Clock) -> None:
    cache = make()
    ids = fill(cache, clock, range(9))
    chunk_id, data = chunk(9)
    cache.path_for(chunk_id).parent.mkdir(parents=True, exist_ok=True)
    cache.path_for(chunk_id).write_bytes(data)
    assert cache.adopt(chunk_id)
    assert cache.has(chunk_id)
    assert not cache.has(ids[0])
    assert not cache.has(ids[1])
    assert cache.usage().bytes == 800


def test_reconcile(make: Callable[..., ChunkCache], clock: Clock) -> None:
    cache = make()
    heard: list[str] = []
    cache.add_evict_listener(heard.extend)
    ids = fill(cache, clock, range(4))
    cache.path_for(ids[0]).unlink()  # deleted behind its back
    cache.path_for(ids[1]).write_bytes(b"garbage, wrong size")  # corrupted, size differs
    stray_id, stray = chunk(10)  # a valid chunk dropped in
    stray_path = cache.path_for(stray_id)
    stray_path.parent.mkdir(parents=True, exist_ok=True)
    stray_path.write_bytes(stray)
    junk_id = chunk(11)[0]
    cache.path_for(junk_id).parent.mkdir(parents=True, exist_ok=True)
    cache.path_for(junk_id).write_bytes(b"junk")  # dropped in, invalid
    temp = cache.path_for(ids[2]).parent / ".tmp-leftover"
    temp.write_bytes(b"half a chunk")
    misplaced = cache.chunk_dir / stray_id  # a valid name, but not at its place
    misplaced.write_bytes(stray)

    report = cache.reconcile()
    assert report == ReconcileReport(adopted=1, removed_files=2, dropped_rows=2, corrupt=2, temp_removed=1, rehashed=1)
    assert sorted(heard) == sorted(ids[:2])
    assert [cache.has(i) for i in [*ids, stray_id, junk_id]] == [False, False, True, True, True, False]
    assert not temp.exists()
    assert not misplaced.exists()
    assert not cache.path_for(junk_id).exists()
    assert cache.usage().chunks == 3
    assert cache.usage().bytes == 300
    assert cache.get(stray_id) == stray
    assert cache.reconcile() == ReconcileReport(0, 0, 0, 0, 0)


def test_reconcile_rehashes_a_file_written_since_it_was_verified(make: Callable[..., ChunkCache], clock: Clock) -> None:
    cache = make()
    heard: list[str] = []
    cache.add_evict_listener(heard.extend)
    ids = fill(cache, clock, range(2))
    path = cache.path_for(ids[0])
    damaged = bytearray(path.read_bytes())
    damaged[7] ^= 0xFF
    path.write_bytes(damaged)  # same size, one byte flipped: the write changed the file's stamp
    assert cache.reconcile() == ReconcileReport(0, 0, 1, 1, 0, rehashed=1)
    assert not cache.has(ids[0])
    assert not path.exists()
    assert cache.has(ids[1])
    assert heard == [ids[0]]
    assert cache.damaged_found == 1
    assert cache.reconcile() == ReconcileReport(0, 0, 0, 0, 0)  # unchanged files are not hashed again
    assert cache.reconcile(full=True) == ReconcileReport(0, 0, 0, 0, 0, rehashed=1)


def flip_silently(cache: ChunkCache, chunk_id: str) -> None:
    """Rot at rest: flip a byte, then give the index the file's new stamp (as if no write had happened)."""
    path = cache.path_for(chunk_id)
    damaged = bytearray(path.read_bytes())
    damaged[5] ^= 0x01
    path.write_bytes(damaged)
    with closing(sqlite3.connect(cache.directory / "index.sqlite3")) as db, db:
        db.execute("UPDATE chunks SET stamp = ? WHERE id = ?", (file_stamp(path.stat()), chunk_id))


def test_a_verified_read_drops_rot_and_never_returns_wrong_bytes(make: Callable[..., ChunkCache], clock: Clock) -> None:
    cache = make()
    heard: list[str] = []
    cache.add_evict_listener(heard.extend)
    first, second = fill(cache, clock, [1, 2])
    flip_silently(cache, first)
    assert cache.reconcile() == ReconcileReport(0, 0, 0, 0, 0)  # the stamp says nothing changed
    with pytest.raises(ChunkCorrupt, match="rot at rest"):
        cache.get(first)
    assert heard == [first]
    assert not cache.has(first)
    assert not cache.path_for(first).exists()
    assert cache.get(second) == chunk(2)[1]
    assert cache.damaged_found == 1


def test_the_scrub_finds_silent_rot_oldest_verification_first(make: Callable[..., ChunkCache], clock: Clock) -> None:
    cache = make()
    heard: list[str] = []
    cache.add_evict_listener(heard.extend)
    ids = fill(cache, clock, range(6))
    flip_silently(cache, ids[4])
    clock.now += 10
    first = cache.scrub(250)  # 100-byte chunks: two fit in 250 bytes, the first two verified
    assert (first.checked, first.bytes, first.damaged) == (2, 200, ())
    clock.now += 10
    second = cache.scrub(400)  # the four verified longest ago, rot included
    assert second.checked == 4
    assert second.damaged == (ids[4],)
    assert heard == [ids[4]]
    assert cache.usage().chunks == 5
    clock.now += 10
    assert cache.scrub(100).checked == 1  # at least one per step, never zero


def test_an_index_of_version_1_is_migrated_and_rehashed_once(tmp_path: Path, clock: Clock) -> None:
    directory = tmp_path / "cache"
    chunk_id, data = chunk(1)
    (directory / "chunks" / chunk_id[:2] / chunk_id[2:4]).mkdir(parents=True)
    (directory / "chunks" / chunk_id[:2] / chunk_id[2:4] / chunk_id).write_bytes(data)
    with closing(sqlite3.connect(directory / "index.sqlite3")) as db, db:
        db.executescript(
            "CREATE TABLE chunks (id TEXT PRIMARY KEY, size INTEGER NOT NULL, last_access REAL NOT NULL) WITHOUT ROWID;"
            "PRAGMA user_version = 1;"
        )
        db.execute("INSERT INTO chunks VALUES (?, ?, ?)", (chunk_id, len(data), 5.0))
    with ChunkCache(directory, budget_bytes=1000, clock=clock) as cache:
        assert cache.reconcile() == ReconcileReport(0, 0, 0, 0, 0, rehashed=1)
        assert cache.reconcile() == ReconcileReport(0, 0, 0, 0, 0)
        assert cache.get(chunk_id) == data
    assert rows(cache, "PRAGMA user_version") == [(2,)]


def test_held_strays_and_room(make: Callable[..., ChunkCache], clock: Clock) -> None:
    cache = make()
    ids = fill(cache, clock, range(3))
    absent = [chunk(n)[0] for n in range(10, 12)]
    assert cache.held([*ids, *absent, ids[0]]) == set(ids)
    stray_id, _ = chunk(10)
    cache.path_for(stray_id).parent.mkdir(parents=True, exist_ok=True)
    cache.path_for(stray_id).write_bytes(b"half a piece")
    assert cache.remove_stray(ids[0]) is False  # indexed: not a stray
    assert cache.remove_stray(stray_id) is True
    assert not cache.path_for(stray_id).exists()
    assert cache.remove_stray(stray_id) is False
    assert cache.room_for() == 1000
    with cache.protecting(ids[:2]):
        assert cache.room_for() == 800
    assert cache.room_for() == 1000


def test_adopt_hashes_a_large_file_in_blocks(make: Callable[..., ChunkCache]) -> None:
    cache = make(budget_bytes=64 * 2**20)
    data = os.urandom(3 * 2**20 + 17)
    chunk_id = chunk_id_of(data)
    cache.path_for(chunk_id).parent.mkdir(parents=True, exist_ok=True)
    cache.path_for(chunk_id).write_bytes(data)
    assert cache.adopt(chunk_id) is True
    assert cache.get(chunk_id) == data
    cache.path_for(chunk_id).write_bytes(data + b"x")
    assert cache.verify(chunk_id) is False
    assert not cache.has(chunk_id)


def test_budget_percent_of_filesystem(make: Callable[..., ChunkCache], tmp_path: Path) -> None:
    cache = make(budget_bytes=None, budget_percent=50.0)
    stat = os.statvfs(tmp_path)
    assert cache.usage().budget_bytes == stat.f_blocks * stat.f_frsize // 2
    both = make(budget_bytes=1234, budget_percent=50.0)
    assert both.usage().budget_bytes == 1234


def test_concurrent_puts_from_threads(make: Callable[..., ChunkCache]) -> None:
    cache = make(budget_bytes=10**6, fsync=False)
    chunks = [chunk(n) for n in range(40)]
    errors: list[BaseException] = []

    def worker(part: list[tuple[str, bytes]]) -> None:
        try:
            for chunk_id, data in part:
                cache.put(chunk_id, data)
                assert cache.get(chunk_id) == data
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(chunks[i::4] + chunks[:10],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert cache.usage().chunks == 40
    assert len(rows(cache)) == 40
    assert len(visible_files(cache)) == 40
