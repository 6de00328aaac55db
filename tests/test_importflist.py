"""Importing flists: images written as rfs writes them, blobs fetched from a zdb or HTTP hub, manifests checked
against the flist they came from."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from p2pchunks.errors import BadConfig, ChunkCorrupt, ChunkNotFound, HubError
from p2pchunks.formats.manifest import ChunkRef, FileEntry, Manifest
from p2pchunks.http.server import Request, Response, serve_http
from p2pchunks.hub.client import HubClient
from p2pchunks.hub.server import open_hub_server
from p2pchunks.hub.stats import HubStats
from p2pchunks.ids import chunk_relpath
from p2pchunks.zos.flist import read_flist
from p2pchunks.zos.flistwrite import write_fl, write_flist_v1
from p2pchunks.zos.importflist import import_flist, manifest_name_for, pick_hot
from p2pchunks.zos.zdbserver import HubRootBackend, open_zdb_server

CHUNK = 4096
LIMIT = 30
NAME_RE = re.compile(r"\A[A-Za-z0-9._-]{1,128}\Z")


def make_tree(root: Path) -> Path:
    src = root / "src"
    (src / "boot").mkdir(parents=True)
    (src / "boot" / "vmlinuz-6.1").write_bytes(os.urandom(3 * CHUNK + 5))
    (src / "boot" / "initrd.img-6.1").write_bytes(os.urandom(2 * CHUNK))
    (src / "image.raw").write_bytes(os.urandom(6 * CHUNK) + bytes(2 * CHUNK))
    (src / "etc").mkdir()
    (src / "etc" / "motd").write_bytes(b"hello\n")
    (src / "etc" / "private").write_bytes(b"secret")
    os.chmod(src / "etc" / "private", 0o600)
    (src / "empty").write_bytes(b"")
    os.symlink("boot/vmlinuz-6.1", src / "vmlinuz")
    os.mkfifo(src / "fifo")
    return src


def write(kind: str, tmp_path: Path) -> tuple[Path, Path]:
    src, hub_root = make_tree(tmp_path), tmp_path / "hub"
    if kind == "v2":
        flist = tmp_path / "my image.fl"
        write_fl(src, flist, hub_root, route_url="zdb://hub.threefold.me:9900/default", chunk_size=CHUNK)
    else:
        flist = tmp_path / "my image.flist"
        write_flist_v1(src, flist, hub_root, backend={"host": "hub.threefold.me", "port": 9900}, chunk_size=CHUNK)
    return flist, hub_root


@asynccontextmanager
async def hub_for(transport: str, root: Path, stats: HubStats) -> AsyncIterator[str]:
    if transport == "zdb":
        async with open_zdb_server(HubRootBackend(root), stats=stats) as (_, url):
            yield url
    else:
        async with open_hub_server(root, stats=stats) as (_, url):
            yield url


@pytest.mark.parametrize(("kind", "transport"), [("v2", "zdb"), ("v1", "zdb"), ("v2", "http"), ("v1", "http")])
async def test_import_matches_the_flist(tmp_path: Path, kind: str, transport: str) -> None:
    flist, hub_root = write(kind, tmp_path)
    out = tmp_path / "seed"
    stats = HubStats()
    async with hub_for(transport, hub_root, stats) as url:
        with trio.fail_after(LIMIT):
            manifest = await import_flist(flist, hub=url, out_dir=out, version="7", concurrency=4)
        image = read_flist(flist)
        assert manifest.name == "my-image"
        assert manifest.version == "7"
        assert manifest.chunk_size == CHUNK
        # files and symlinks in tree order; directories and the fifo are left to the flist
        expected = [item for item in image.files if item.kind in ("file", "symlink")]
        assert [entry.path for entry in manifest.files] == [item.path for item in expected]
        for entry, item in zip(manifest.files, expected, strict=True):
            assert (entry.size, entry.mode, entry.symlink) == (item.size, item.mode, item.target)
            assert [(c.id, c.key) for c in entry.chunks] == [(b.id, b.key) for b in item.blocks]
            for chunk in entry.chunks:
                stored = (out / "chunks" / chunk_relpath(chunk.id)).read_bytes()
                assert stored == (hub_root / "chunks" / chunk_relpath(chunk.id)).read_bytes()
                assert chunk.size == len(stored)
        assert {e.path: e.mode for e in manifest.files}["etc/private"] == 0o600
        distinct = len(manifest.chunk_ids)
        assert stats.requests == distinct  # each distinct blob fetched once
        extra = manifest.extra[b"flist"]
        assert isinstance(extra, dict)
        assert extra[b"version"] == image.version
        assert extra[b"hub"] == url.encode()
        if kind == "v2":
            assert extra[b"routes"] == [[0, 255, b"zdb://hub.threefold.me:9900/default"]]
        else:
            assert extra[b"backend"] == b'{"host": "hub.threefold.me", "port": 9900}'
        # hot: the kernel and initrd, then the head of the disk image
        by_path = {entry.path: entry for entry in manifest.files}
        boot = [c.id for p in ("boot/initrd.img-6.1", "boot/vmlinuz-6.1") for c in by_path[p].chunks]
        assert list(manifest.hot[: len(boot)]) == boot
        assert list(manifest.hot[len(boot) :]) == list(dict.fromkeys(c.id for c in by_path["image.raw"].chunks))
        assert manifest.info is not None
        assert sorted(manifest.piece_ids) == list(manifest.piece_ids) == sorted(set(manifest.chunk_ids))
        written = out / "manifests" / "my-image.p2p"
        assert Manifest.decode(written.read_bytes()) == manifest
        # a second import fetches nothing: the blobs are there and verify
        before = stats.requests
        with trio.fail_after(LIMIT):
            again = await import_flist(flist, hub=url, out_dir=out, version="7")
        assert stats.requests == before
        assert again.manifest_id == manifest.manifest_id


async def test_flist_from_an_http_url(tmp_path: Path) -> None:
    flist, hub_root = write("v2", tmp_path)
    body = flist.read_bytes()

    async def handler(request: Request) -> Response:
        if request.path == "/flists/ubuntu-24.04.fl":
            return Response(200, [("content-type", "application/octet-stream")], body)
        return Response(404, [], b"no")

    async with trio.open_nursery() as nursery, open_zdb_server(HubRootBackend(hub_root)) as (_, hub):
        port = await nursery.start(serve_http, handler, "127.0.0.1", 0)
        with trio.fail_after(LIMIT):
            manifest = await import_flist(
                f"http://127.0.0.1:{port}/flists/ubuntu-24.04.fl", hub=hub, out_dir=tmp_path / "seed"
            )
            assert manifest.name == "ubuntu-24.04"
            assert manifest.extra[b"flist"][b"source"] == f"http://127.0.0.1:{port}/flists/ubuntu-24.04.fl".encode()  # type: ignore[index]
            with pytest.raises(HubError, match="404"):
                await import_flist(f"http://127.0.0.1:{port}/missing.fl", hub=hub, out_dir=tmp_path / "seed")
        nursery.cancel_scope.cancel()


async def test_missing_blob_fails_and_writes_no_manifest(tmp_path: Path) -> None:
    flist, hub_root = write("v2", tmp_path)
    victim = next(b.id for item in read_flist(flist).files for b in item.blocks)
    (hub_root / "chunks" / chunk_relpath(victim)).unlink()
    async with open_zdb_server(HubRootBackend(hub_root)) as (_, url):
        with trio.fail_after(LIMIT), pytest.raises(ChunkNotFound):
            await import_flist(flist, hub=url, out_dir=tmp_path / "seed")
    assert not (tmp_path / "seed" / "manifests").exists()
    assert not list((tmp_path / "seed").rglob("*.partial"))


async def test_corrupt_blob_is_refused(tmp_path: Path) -> None:
    flist, hub_root = write("v1", tmp_path)
    victim = next(b.id for item in read_flist(flist).files for b in item.blocks)
    path = hub_root / "chunks" / chunk_relpath(victim)
    path.write_bytes(path.read_bytes()[::-1])
    async with open_zdb_server(HubRootBackend(hub_root)) as (_, url), HubClient(url, retries=1, backoff=0) as client:
        with trio.fail_after(LIMIT), pytest.raises(ChunkCorrupt):
            await import_flist(flist, hub=url, out_dir=tmp_path / "seed", client=client)
    assert not (tmp_path / "seed" / "chunks" / chunk_relpath(victim)).exists()


def entry(path: str, *ids: str) -> FileEntry:
    return FileEntry(path, len(ids) * 10, 0o644, tuple(ChunkRef(i, 10, b"k" * 32) for i in ids))


def cid(n: int) -> str:
    return f"{n:064x}"


@pytest.mark.parametrize(
    ("files", "limit", "hot"),
    [
        ([entry("etc/a", cid(1)), entry("boot/vmlinuz", cid(2), cid(3))], 10, [2, 3]),
        ([entry("image.raw", cid(1), cid(2)), entry("boot/initrd.img", cid(3))], 10, [3, 1, 2]),
        ([entry("disk.img", cid(4)), entry("image.raw", cid(1), cid(2))], 10, [1, 2, 4]),
        ([entry("a", cid(1), cid(2)), entry("b", cid(2), cid(3)), entry("c", cid(4))], 3, [1, 2, 3]),
        ([entry("image.raw", *(cid(i) for i in range(1, 100)))], 5, [1, 2, 3, 4, 5]),
        ([entry("sub/image.raw", cid(1)), entry("x", cid(2))], 10, [1, 2]),  # not top level: plain order
        ([entry("vmlinuz", cid(7)), FileEntry("link", 0, 0o777, symlink="vmlinuz")], 10, [7]),
        ([entry("a", cid(1))], 0, []),
        ([], 10, []),
    ],
)
def test_pick_hot(files: list[FileEntry], limit: int, hot: list[int]) -> None:
    assert pick_hot(files, limit) == [cid(n) for n in hot]


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("/var/images/ubuntu-22.04.fl", "ubuntu-22.04"),
        ("zos.flist", "zos"),
        ("https://hub.threefold.me/tf-official-apps/my%20app:latest.flist", "my-app-latest"),
        ("http://h/x/base.fl?token=1", "base"),
        ("relative/dir/image.tar.flist", "image.tar"),
    ],
)
def test_manifest_name_for(source: str, name: str) -> None:
    assert manifest_name_for(source) == name


@given(st.text(max_size=300))
def test_manifest_name_for_is_always_a_valid_name_or_refused(source: str) -> None:
    try:
        name = manifest_name_for(source)
    except BadConfig:
        return
    assert NAME_RE.match(name)
