"""Flist rewriting: the copy names the new store, blocks and tree stay, the source is never touched."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import tarfile
from contextlib import closing
from pathlib import Path

import pytest

from p2pchunks.errors import BadConfig, BadFlist
from p2pchunks.zos.flist import FlistImage, read_flist
from p2pchunks.zos.flistrewrite import parse_zdb_target, rewrite_fl, rewrite_flist, rewrite_flist_v1
from p2pchunks.zos.flistwrite import write_fl, write_flist_v1

CHUNK = 1000


def make_tree(root: Path) -> Path:
    src = root / "src"
    if src.exists():  # both fixtures share one tree
        return src
    (src / "boot").mkdir(parents=True)
    (src / "boot" / "vmlinuz").write_bytes(os.urandom(3 * CHUNK + 7))
    (src / "etc").mkdir()
    (src / "etc" / "hostname").write_bytes(b"node\n")
    os.symlink("boot/vmlinuz", src / "kernel")
    return src


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_content(a: FlistImage, b: FlistImage) -> None:
    assert a.version == b.version
    assert a.files == b.files  # paths, kinds, sizes, modes, link targets and every block id and key


@pytest.fixture
def v2(tmp_path: Path) -> Path:
    out = tmp_path / "image.fl"
    route = "zdb://hub.threefold.me:9900/default"
    write_fl(make_tree(tmp_path), out, tmp_path / "hub", route_url=route, chunk_size=CHUNK)
    with closing(sqlite3.connect(out)) as db:  # a sharded flist: two routes
        db.execute("UPDATE route SET end = 127")
        db.execute("INSERT INTO route (start, end, url) VALUES (128, 255, 'zdb://other.hub:9900/x')")
        db.commit()
    return out


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    out = tmp_path / "image.flist"
    backend = {"host": "hub.threefold.me", "port": 9900, "namespace": "default", "password": "secret", "socket": None}
    write_flist_v1(make_tree(tmp_path), out, tmp_path / "hub", backend=backend, chunk_size=CHUNK)
    return out


def test_rewrite_fl_replaces_routes_and_keeps_blocks(v2: Path, tmp_path: Path) -> None:
    before = digest(v2)
    dst = tmp_path / "out" / "proxied.fl"
    rewrite_fl(v2, dst, "zdb://127.0.0.1:9910/default")
    assert digest(v2) == before
    original, rewritten = read_flist(v2), read_flist(dst)
    assert len(original.routes) == 2
    assert rewritten.routes == ((0, 255, "zdb://127.0.0.1:9910/default"),)
    same_content(original, rewritten)
    assert rewritten.tags == original.tags
    assert not list(dst.parent.glob(".*partial"))
    with closing(sqlite3.connect(dst)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_rewrite_flist_v1_replaces_backend(v1: Path, tmp_path: Path) -> None:
    before = digest(v1)
    dst = tmp_path / "proxied.flist"
    rewrite_flist_v1(v1, dst, "127.0.0.1", 9910, "hub")
    assert digest(v1) == before
    original, rewritten = read_flist(v1), read_flist(dst)
    assert original.backend is not None
    assert original.backend["host"] == "hub.threefold.me"
    assert rewritten.backend == {"host": "127.0.0.1", "port": 9910, "namespace": "hub"}  # password, socket dropped
    same_content(original, rewritten)
    with tarfile.open(dst, "r:gz") as tar:
        assert tar.getnames() == ["./flistdb.sqlite3"]  # the member name rfs v1 extracts, as 0-flist writes it


@pytest.mark.parametrize(
    ("target", "v2_url", "v1_backend"),
    [
        ("127.0.0.1:9910", "zdb://127.0.0.1:9910/default", {"host": "127.0.0.1", "port": 9910, "namespace": "default"}),
        ("127.0.0.2:9911/hub", "zdb://127.0.0.2:9911/hub", {"host": "127.0.0.2", "port": 9911, "namespace": "hub"}),
        ("zdb://[::1]:9910/ns", "zdb://[::1]:9910/ns", {"host": "::1", "port": 9910, "namespace": "ns"}),
        ("localhost", "zdb://localhost:9900/default", {"host": "localhost", "port": 9900, "namespace": "default"}),
    ],
)
def test_rewrite_flist_sniffs_the_version(
    v1: Path, v2: Path, tmp_path: Path, target: str, v2_url: str, v1_backend: dict[str, object]
) -> None:
    assert rewrite_flist(v2, tmp_path / "a.fl", target) == 2
    assert read_flist(tmp_path / "a.fl").routes == ((0, 255, v2_url),)
    assert rewrite_flist(v1, tmp_path / "a.flist", target) == 1
    assert read_flist(tmp_path / "a.flist").backend == v1_backend


def test_parse_zdb_target_rejects_garbage() -> None:
    assert parse_zdb_target("h:1/ns").namespace == "ns"
    for bad in ("", ":9910", "h:notaport", "h:1/a/b"):
        with pytest.raises(BadConfig):
            parse_zdb_target(bad)


def test_refuses_to_overwrite_the_source(v2: Path, v1: Path) -> None:
    before = digest(v2), digest(v1)
    with pytest.raises(BadConfig):
        rewrite_fl(v2, v2, "zdb://127.0.0.1:9910/default")
    with pytest.raises(BadConfig):
        rewrite_flist_v1(v1, v1, "127.0.0.1", 9910, "default")
    assert (digest(v2), digest(v1)) == before


def test_bad_inputs_leave_nothing_behind(v2: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BadConfig):
        rewrite_fl(v2, out / "x.fl", "ftp://somewhere/")
    with pytest.raises(BadConfig):
        rewrite_flist_v1(v2, out / "x.flist", "127.0.0.1", 0, "default")
    with pytest.raises(BadFlist):
        rewrite_flist_v1(v2, out / "x.flist", "127.0.0.1", 9910, "default")  # an .fl is not a tar.gz
    not_flist = tmp_path / "plain.sqlite"
    with closing(sqlite3.connect(not_flist)) as db:
        db.execute("CREATE TABLE t (x)")
        db.commit()
    with pytest.raises(BadFlist):
        rewrite_fl(not_flist, out / "y.fl", "zdb://127.0.0.1:9910/default")
    with pytest.raises(BadFlist):
        rewrite_flist(tmp_path / "src" / "etc" / "hostname", out / "z.fl", "127.0.0.1:9910")
    assert list(out.iterdir()) == []


def hostile_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    "members",
    [
        [("../flistdb.sqlite3", b"x")],
        [("/etc/flistdb.sqlite3", b"x")],
        [("other", b"x")],
        [(f"m{i}", b"") for i in range(100)],
    ],
)
def test_v1_tar_members_are_checked(tmp_path: Path, members: list[tuple[str, bytes]]) -> None:
    src = hostile_tar(tmp_path / "bad.flist", members)
    with pytest.raises(BadFlist):
        rewrite_flist_v1(src, tmp_path / "out.flist", "127.0.0.1", 9910, "default")
    assert not (tmp_path / "out.flist").exists()
    assert not (tmp_path.parent / "flistdb.sqlite3").exists()
