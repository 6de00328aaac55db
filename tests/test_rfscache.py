"""The rfs cache filler: images written as rfs writes them, blobs served by a zdb hub and fetched with HubClient,
then the plain files rebuilt from the rfs cache exactly as rfs reads it (``<cache>/ab/cd/<block id>``)."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio

from p2pchunks.errors import BadConfig, BadManifest, ChunkCorrupt, ChunkNotFound, ChunkUnavailable
from p2pchunks.formats.manifest import Manifest
from p2pchunks.hub.client import HubClient
from p2pchunks.hub.publish import publish
from p2pchunks.ids import chunk_relpath
from p2pchunks.zos.codec import decode
from p2pchunks.zos.flist import FlistImage, read_flist
from p2pchunks.zos.flistwrite import write_fl, write_flist_v1
from p2pchunks.zos.importflist import import_flist
from p2pchunks.zos.rfscache import FillReport, RfsCacheFiller, fill_image
from p2pchunks.zos.zdbserver import HubRootBackend, open_zdb_server

CHUNK = 4096
LIMIT = 30


def make_tree(root: Path) -> Path:
    src = root / "src"
    (src / "boot").mkdir(parents=True)
    (src / "boot" / "vmlinuz").write_bytes(os.urandom(5 * CHUNK + 11))
    (src / "image.raw").write_bytes(os.urandom(9 * CHUNK) + bytes(3 * CHUNK))  # zero chunks dedup
    (src / "etc").mkdir()
    (src / "etc" / "motd").write_bytes(b"hello\n" * 100)
    (src / "etc" / "copy").write_bytes(b"hello\n" * 100)
    (src / "empty").write_bytes(b"")
    os.symlink("boot/vmlinuz", src / "kernel")
    return src


class Image:
    def __init__(self, src: Path, flist: Path, image: FlistImage, manifest: Manifest, url: str) -> None:
        self.src, self.flist, self.image, self.manifest, self.url = src, flist, image, manifest, url

    def plain_size(self) -> int:
        seen: dict[str, int] = {}
        for item in self.image.files:
            for index, block in enumerate(item.blocks):
                seen[block.id] = min(CHUNK, item.size - index * CHUNK)
        return sum(seen.values())


@pytest.fixture(params=["v2", "v1"])
async def image(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Image]:
    src = make_tree(tmp_path)
    hub_root = tmp_path / "hub"
    if request.param == "v2":
        flist = tmp_path / "image.fl"
        write_fl(src, flist, hub_root, route_url="zdb://hub.threefold.me:9900/default", chunk_size=CHUNK)
    else:
        flist = tmp_path / "image.flist"
        backend = {"host": "hub.threefold.me", "port": 9900, "namespace": "default"}
        write_flist_v1(src, flist, hub_root, backend=backend, chunk_size=CHUNK)
    async with open_zdb_server(HubRootBackend(hub_root)) as (_, url):
        with trio.fail_after(LIMIT):
            manifest = await import_flist(flist, hub=url, out_dir=tmp_path / "seed")
        yield Image(src, flist, read_flist(flist), manifest, url)


async def fill(image: Image, filler: RfsCacheFiller, **kwargs: int) -> FillReport:
    async with HubClient(image.url) as client:
        with trio.fail_after(LIMIT):
            return await fill_image(image.manifest, filler, client.get_chunk, **kwargs)


def rebuild(image: Image, cache: Path) -> dict[str, bytes]:
    """What rfs serves for each regular file: its blocks' cache files, concatenated."""
    return {
        item.path: b"".join((cache / chunk_relpath(block.id)).read_bytes() for block in item.blocks)
        for item in image.image.files
        if item.kind == "file"
    }


def cache_files(cache: Path) -> list[Path]:
    return sorted(path for path in cache.rglob("*") if path.is_file())


async def test_filled_cache_rebuilds_the_source_byte_for_byte(image: Image, tmp_path: Path) -> None:
    cache = tmp_path / "rfs-cache"
    filler = RfsCacheFiller(cache, min_free_bytes=0)
    report = await fill(image, filler)
    files = rebuild(image, cache)
    assert files == {path: (image.src / path).read_bytes() for path in files}
    assert set(files) == {"boot/vmlinuz", "image.raw", "etc/motd", "etc/copy", "empty"}
    distinct = len(image.manifest.chunk_ids)
    assert report.chunks == report.written == distinct
    assert report.bytes_written == image.plain_size()
    assert not report.failed
    assert not report.stopped_for_space
    assert len(cache_files(cache)) == distinct  # no temp file left
    assert all(path.stat().st_mode & 0o777 == 0o644 for path in cache_files(cache))
    again = await fill(image, filler)
    assert again.present == distinct
    assert again.written == 0


async def test_real_statvfs_with_default_reserve(image: Image, tmp_path: Path) -> None:
    filler = RfsCacheFiller(tmp_path / "c", fsync=False)  # the real free space, 512 MiB kept free
    report = await fill(image, filler)
    assert report.written == len(image.manifest.chunk_ids)


async def test_quota_is_respected_and_what_is_written_is_whole(image: Image, tmp_path: Path) -> None:
    cache = tmp_path / "rfs-cache"
    (cache / "zz").mkdir(parents=True)
    (cache / "zz" / "unrelated").write_bytes(b"x" * CHUNK)  # counted against the quota
    quota = CHUNK + image.plain_size() // 2
    filler = RfsCacheFiller(cache, quota_bytes=quota, min_free_bytes=0)
    report = await fill(image, filler, concurrency=1)
    assert report.stopped_for_space
    assert report.skipped_for_space == 1
    assert 0 < report.written < len(image.manifest.chunk_ids)
    assert filler.stats.skipped_for_space == 1
    assert sum(path.stat().st_size for path in cache_files(cache)) <= quota
    blobs = {chunk.id: chunk.key for entry in image.manifest.files for chunk in entry.chunks}
    for path in cache_files(cache):
        if path.name in blobs:
            blob = (tmp_path / "seed" / "chunks" / chunk_relpath(path.name)).read_bytes()
            assert path.read_bytes() == decode(blob, blobs[path.name])


async def test_no_free_space_writes_nothing(image: Image, tmp_path: Path) -> None:
    cache = tmp_path / "rfs-cache"
    filler = RfsCacheFiller(cache, min_free_bytes=1024, free_space=lambda path: 1024 + 10)
    report = await fill(image, filler)
    assert report.stopped_for_space
    assert report.written == 0
    assert cache_files(cache) == []


def blob_of(image: Image, chunk_id: str, tmp_path: Path) -> bytes:
    return (tmp_path / "seed" / "chunks" / chunk_relpath(chunk_id)).read_bytes()


def first_chunk(image: Image) -> tuple[str, bytes]:
    chunk = next(entry.chunks[0] for entry in image.manifest.files if entry.chunks)
    return chunk.id, chunk.key


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
async def test_failed_fsync_leaves_no_partial_file(image: Image, tmp_path: Path, code: int) -> None:
    cache = tmp_path / "rfs-cache"

    def failing_sync(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    filler = RfsCacheFiller(cache, min_free_bytes=0, sync=failing_sync)
    chunk_id, key = first_chunk(image)
    blob = blob_of(image, chunk_id, tmp_path)
    if code == errno.EIO:
        with pytest.raises(OSError, match="Input/output"):
            filler.fill(chunk_id, blob, key)
    else:
        assert filler.fill(chunk_id, blob, key) is False
        assert filler.stats.skipped_for_space == 1
    assert cache_files(cache) == []
    assert filler.stats.written == 0


async def test_corrupt_blob_is_refused_before_decoding(image: Image, tmp_path: Path) -> None:
    cache = tmp_path / "rfs-cache"
    filler = RfsCacheFiller(cache, min_free_bytes=0)
    chunk_id, key = first_chunk(image)
    blob = bytearray(blob_of(image, chunk_id, tmp_path))
    blob[0] ^= 1
    with pytest.raises(ChunkCorrupt):
        filler.fill(chunk_id, bytes(blob), key)
    with pytest.raises(ChunkCorrupt):  # right blob, wrong key: verifies, but does not decode
        filler.fill(chunk_id, blob_of(image, chunk_id, tmp_path), bytes(len(key)))
    assert cache_files(cache) == []


async def test_failures_are_recorded_and_the_rest_is_filled(image: Image, tmp_path: Path) -> None:
    cache = tmp_path / "rfs-cache"
    ids = list(dict.fromkeys(c.id for e in image.manifest.files for c in e.chunks))
    bad = {ids[0]: ChunkNotFound(ids[0]), ids[1]: ChunkUnavailable(ids[1])}

    async def get_blob(chunk_id: str) -> bytes:
        if chunk_id in bad:
            raise bad[chunk_id]
        data = blob_of(image, chunk_id, tmp_path)
        return data[::-1] if chunk_id == ids[2] else data  # corrupt

    with trio.fail_after(LIMIT):
        report = await fill_image(image.manifest, RfsCacheFiller(cache, min_free_bytes=0), get_blob)
    assert set(report.failed) == {ids[0], ids[1], ids[2]}
    assert report.written == len(ids) - 3
    assert {path.name for path in cache_files(cache)} == set(ids[3:])


async def test_existing_files_follow_rfs_rules(image: Image, tmp_path: Path) -> None:
    cache = tmp_path / "rfs-cache"
    ids = list(dict.fromkeys(c.id for e in image.manifest.files for c in e.chunks))
    kept, empty = cache / chunk_relpath(ids[0]), cache / chunk_relpath(ids[1])
    for path in (kept, empty):
        path.parent.mkdir(parents=True, exist_ok=True)
    kept.write_bytes(b"whatever rfs put there")  # non-empty: a hit for rfs, left alone
    empty.write_bytes(b"")  # empty: rfs would download it, so do we
    fetched: list[str] = []

    async def get_blob(chunk_id: str) -> bytes:
        fetched.append(chunk_id)
        return blob_of(image, chunk_id, tmp_path)

    with trio.fail_after(LIMIT):
        report = await fill_image(image.manifest, RfsCacheFiller(cache, min_free_bytes=0), get_blob, concurrency=1)
    assert kept.read_bytes() == b"whatever rfs put there"
    assert empty.stat().st_size > 0
    assert report.present == 1
    assert ids[0] not in fetched
    assert fetched == ids[1:]  # file order, one at a time


async def test_parallel_and_bounded(image: Image, tmp_path: Path) -> None:
    concurrency = 3
    inflight = peak = 0
    gate = trio.Event()

    async def get_blob(chunk_id: str) -> bytes:
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        if peak >= concurrency:
            gate.set()
        await gate.wait()
        inflight -= 1
        return blob_of(image, chunk_id, tmp_path)

    filler = RfsCacheFiller(tmp_path / "rfs-cache", min_free_bytes=0, fsync=False)
    with trio.fail_after(LIMIT):
        report = await fill_image(image.manifest, filler, get_blob, concurrency=concurrency)
    assert peak == concurrency
    assert report.written == len(image.manifest.chunk_ids)


async def test_manifest_without_keys_is_refused(tmp_path: Path) -> None:
    src = make_tree(tmp_path)
    manifest = publish(src, tmp_path / "hub", name="plain", chunk_size=CHUNK).manifest

    async def get_blob(chunk_id: str) -> bytes:
        raise AssertionError("must not fetch")

    getter: Callable[[str], Awaitable[bytes]] = get_blob
    with pytest.raises(BadManifest):
        await fill_image(manifest, RfsCacheFiller(tmp_path / "c", min_free_bytes=0), getter)


async def test_disk_error_mid_image_stops_the_fill_and_leaves_only_whole_files(image: Image, tmp_path: Path) -> None:
    cache = tmp_path / "rfs-cache"
    calls = 0

    def sync_failing_on_the_third_file(fd: int) -> None:  # calls: file, directory, file, directory, file
        nonlocal calls
        calls += 1
        if calls == 5:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)

    filler = RfsCacheFiller(cache, min_free_bytes=0, sync=sync_failing_on_the_third_file)
    with pytest.raises(OSError, match="Input/output"):
        await fill(image, filler, concurrency=1)
    keys = {chunk.id: chunk.key for entry in image.manifest.files for chunk in entry.chunks}
    written = cache_files(cache)
    assert len(written) == 2
    assert all(path.name in keys for path in written)  # no temp file survived
    for path in written:
        assert path.read_bytes() == decode(blob_of(image, path.name, tmp_path), keys[path.name])
    assert filler.stats.written == len(written)


async def test_rfs_finishing_first_wins(image: Image, tmp_path: Path) -> None:
    cache = tmp_path / "rfs-cache"
    chunk_id, key = first_chunk(image)
    target = cache / chunk_relpath(chunk_id)

    def rfs_writes_meanwhile(fd: int) -> None:  # our temp file is being synced when rfs completes its download
        if not target.exists():
            target.write_bytes(b"rfs's own copy")

    filler = RfsCacheFiller(cache, min_free_bytes=0, sync=rfs_writes_meanwhile)
    assert filler.fill(chunk_id, blob_of(image, chunk_id, tmp_path), key) is True
    assert target.read_bytes() == b"rfs's own copy"
    assert cache_files(cache) == [target]
    assert (filler.stats.written, filler.stats.skipped_present) == (0, 1)


@pytest.mark.parametrize("kwargs", [{"quota_bytes": -1}, {"min_free_bytes": -1}])
def test_bad_settings_are_refused(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(BadConfig):
        RfsCacheFiller(tmp_path, **kwargs)  # type: ignore[arg-type]
