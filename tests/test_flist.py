"""Flist writers and readers: rfs-shaped images round-trip a real tree; hostile files are refused as BadFlist."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import sqlite3
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pchunks.errors import BadFlist
from p2pchunks.ids import chunk_relpath
from p2pchunks.zos.codec import Blob, decode
from p2pchunks.zos.flist import (
    V1_ROOT_KEY,
    FlistFile,
    FlistImage,
    FlistLimits,
    read_fl,
    read_flist,
    read_v1,
    v1_schema,
)
from p2pchunks.zos.flistwrite import v1_dir_key, write_fl, write_flist_v1

CHUNK = 1000
BACKEND = {"host": "127.0.0.1", "port": 9900, "namespace": "hub"}


def make_tree(root: Path) -> Path:
    src = root / "src"
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "empty-dir").mkdir()
    (src / "empty-file").write_bytes(b"")
    (src / "a" / "many-blocks.bin").write_bytes(os.urandom(10 * CHUNK + 321))
    (src / "a" / "b" / "exact.bin").write_bytes(os.urandom(3 * CHUNK))
    (src / "a" / "b" / "c" / "deep.txt").write_bytes(b"deep\n")
    (src / "dup1").write_bytes(b"same bytes" * 300)
    (src / "dup2").write_bytes(b"same bytes" * 300)
    (src / "é ü.txt").write_bytes(b"unicode name")
    (src / "private").write_bytes(b"secret")
    os.chmod(src / "private", 0o600)
    os.chmod(src / "a" / "b", 0o700)
    os.symlink("a/many-blocks.bin", src / "rel-link")
    os.symlink("/nonexistent/target", src / "abs-link")
    os.mkfifo(src / "fifo")
    return src


def write(kind: str, src: Path, out_dir: Path) -> tuple[Path, list[Blob]]:
    hub = out_dir / "hub"
    if kind == "v2":
        out = out_dir / "image.fl"
        return out, write_fl(src, out, hub, route_url="http://127.0.0.1:8080/", chunk_size=CHUNK)
    out = out_dir / "image.flist"
    return out, write_flist_v1(src, out, hub, backend=BACKEND, chunk_size=CHUNK)


def source_entries(src: Path) -> dict[str, tuple[str, int, int, str | None]]:
    """(kind, size, permission bits, link target) of every entry under ``src``, by relative path."""
    found: dict[str, tuple[str, int, int, str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(src):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            relative = path.relative_to(src).as_posix()
            mode = info.st_mode
            if stat.S_ISDIR(mode):
                found[relative] = ("dir", 0, stat.S_IMODE(mode), None)
            elif stat.S_ISLNK(mode):
                found[relative] = ("symlink", 0, stat.S_IMODE(mode), os.readlink(path))
            elif stat.S_ISREG(mode):
                found[relative] = ("file", info.st_size, stat.S_IMODE(mode), None)
            else:
                found[relative] = ("special", 0, stat.S_IMODE(mode), None)
    return found


def described(image: FlistImage) -> dict[str, tuple[str, int, int, str | None]]:
    return {f.path: (f.kind, f.size if f.kind == "file" else 0, f.mode, f.target) for f in image.files}


def reassemble(hub: Path, item: FlistFile) -> bytes:
    return b"".join(decode((hub / "chunks" / chunk_relpath(b.id)).read_bytes(), b.key) for b in item.blocks)


@pytest.fixture(params=["v1", "v2"])
def written(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path, Path, list[Blob]]:
    src = make_tree(tmp_path)
    out, blobs = write(request.param, src, tmp_path)
    return request.param, src, out, blobs


def test_write_then_read_gives_the_same_tree(written: tuple[str, Path, Path, list[Blob]]) -> None:
    kind, src, out, _ = written
    image = read_flist(out)
    assert image.version == (1 if kind == "v1" else 2)
    assert described(image) == source_entries(src)


def test_blocks_in_order_reassemble_every_file(written: tuple[str, Path, Path, list[Blob]]) -> None:
    kind, src, out, blobs = written
    hub = out.parent / "hub"
    image = read_flist(out)
    files = [f for f in image.files if f.kind == "file"]
    assert len(files) == 8
    for item in files:
        content = (src / item.path).read_bytes()
        assert len(item.blocks) == -(-len(content) // CHUNK)
        assert reassemble(hub, item) == content
        for block in item.blocks:
            assert len(block.id) == (32 if kind == "v1" else 64)
            assert len(block.key) == (16 if kind == "v1" else 32)
    stored = {p.name for p in (hub / "chunks").rglob("*") if p.is_file()}
    assert stored == {b.id for b in blobs} == {b.id for f in files for b in f.blocks}
    assert len(blobs) == len({b.id for b in blobs})  # distinct, dup1/dup2 share theirs
    by_path = {f.path: f for f in files}
    assert by_path["dup1"].blocks == by_path["dup2"].blocks
    for blob in blobs:
        stored_bytes = (hub / "chunks" / chunk_relpath(blob.id)).read_bytes()
        assert stored_bytes == blob.data
        assert hashlib.blake2b(stored_bytes, digest_size=len(blob.id) // 2).hexdigest() == blob.id


def test_files_come_in_tree_order(written: tuple[str, Path, Path, list[Blob]]) -> None:
    _, _, out, _ = written
    paths = [f.path for f in read_flist(out).files]
    kinds = {f.path: f.kind for f in read_flist(out).files}
    for index, path in enumerate(paths):
        if "/" in path:
            assert path.rsplit("/", 1)[0] in paths[:index]
        if kinds[path] == "dir":  # a directory's descendants directly follow it
            below = [i for i, p in enumerate(paths) if p.startswith(path + "/")]
            assert below == list(range(index + 1, index + 1 + len(below)))


def test_v2_tables_are_as_rfs_writes_them(tmp_path: Path) -> None:
    src = make_tree(tmp_path)
    out, _ = write("v2", src, tmp_path)
    with closing(sqlite3.connect(out)) as db:
        root = db.execute("SELECT ino, parent, name, mode FROM inode ORDER BY ino LIMIT 1").fetchone()
        assert root[:3] == (1, 0, "/")
        assert stat.S_ISDIR(root[3])
        assert db.execute("SELECT typeof(id), length(id), typeof(key), length(key) FROM block").fetchall()[0] == (
            "blob",
            32,
            "blob",
            32,
        )
        mode = db.execute("SELECT mode FROM inode WHERE name = 'private'").fetchone()[0]
        assert mode == stat.S_IFREG | 0o600  # the full st_mode
        assert db.execute("SELECT data FROM extra").fetchall() == [(b"/nonexistent/target",), (b"a/many-blocks.bin",)]
    image = read_fl(out)
    assert image.routes == ((0, 255, "http://127.0.0.1:8080/"),)
    assert image.backend is None
    assert image.tags == {}
    sql(out, "INSERT INTO tag (key, value) VALUES ('version', '0.1')", "INSERT INTO route VALUES (0, 127, 'zdb://h1')")
    image = read_fl(out)
    assert image.tags == {"version": "0.1"}
    assert image.routes == ((0, 255, "http://127.0.0.1:8080/"), (0, 127, "zdb://h1"))


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_wide_directories_read_within_the_default_limits(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "wide"
    src.mkdir()
    for index in range(3000):
        (src / f"file-with-a-longish-name-{index:05d}").write_bytes(b"")
    out, blobs = write(kind, src, tmp_path)
    image = read_flist(out)
    assert blobs == []
    assert sorted(f.path for f in image.files) == sorted(p.name for p in src.iterdir())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=300))
def test_any_stored_name_reads_back_exactly_or_is_bad_flist(tmp_path: Path, name: str) -> None:
    path = tmp_path / "names.fl"
    if not path.exists():
        src = tmp_path / "names-src"
        src.mkdir()
        (src / "victim").write_bytes(b"")
        write_fl(src, path, tmp_path / "hub", route_url="http://127.0.0.1:1/")
    with closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE inode SET name = ? WHERE ino = 2", (name,))
        db.commit()
    try:
        (item,) = read_flist(path).files
    except BadFlist:
        assert (
            name in ("", ".", "..") or "/" in name or "\0" in name or len(name.encode("utf-8", "surrogatepass")) > 255
        )
    else:
        assert item.path == name


def extract_v1_db(flist: Path, into: Path) -> Path:
    with tarfile.open(flist, "r:gz") as tar:
        assert tar.getnames() == ["./flistdb.sqlite3"]
        source = tar.extractfile("./flistdb.sqlite3")
        assert source is not None
        with source:
            (into / "flistdb.sqlite3").write_bytes(source.read())
    return into / "flistdb.sqlite3"


def test_v1_keys_are_blake2b_of_paths_and_metadata_holds_the_backend(tmp_path: Path) -> None:
    assert V1_ROOT_KEY == "cae66941d9efbd404e4d88758ea67670"  # rfs 1's ROOT_HASH
    src = make_tree(tmp_path)
    out, _ = write("v1", src, tmp_path)
    db_path = extract_v1_db(out, tmp_path)
    dirs = ["", "a", "a/b", "a/b/c", "empty-dir"]
    with closing(sqlite3.connect(db_path)) as db:
        keys = {key for (key,) in db.execute("SELECT key FROM entries")}
        assert {hashlib.blake2b(d.encode(), digest_size=16).hexdigest() for d in dirs} <= keys
        assert {v1_dir_key(d) for d in dirs} <= keys
        assert all(len(k) in (16, 32) for k in keys)  # ACIs: 8-byte hashes, dirs: 16-byte hashes
        (value,) = db.execute("SELECT value FROM entries WHERE key = ?", (v1_dir_key("a/b"),)).fetchone()
        with v1_schema().Dir.from_bytes(value) as record:
            assert (record.name, record.location, record.parent) == ("b", "a/b", v1_dir_key("a"))
            assert sorted(i.name for i in record.contents) == ["c", "exact.bin"]
    image = read_flist(out)
    assert image.backend == BACKEND
    assert json.loads(image.tags["backend"]) == BACKEND
    assert image.routes == ()
    assert described(read_v1(db_path)) == described(image) == described(read_flist(db_path))


def test_read_fl_refuses_a_v1_image(tmp_path: Path) -> None:
    out, _ = write("v1", make_tree(tmp_path), tmp_path)
    with pytest.raises(BadFlist, match="not an SQLite"):
        read_fl(out)


# --- hostile input ----------------------------------------------------------------------------------------------


@pytest.fixture
def fl(tmp_path: Path) -> Path:
    src = make_tree(tmp_path)
    out, _ = write("v2", src, tmp_path)
    return out


def sql(path: Path, *statements: str) -> Path:
    with closing(sqlite3.connect(path)) as db:
        for statement in statements:
            db.execute(statement)
        db.commit()
    return path


V2_MUTATIONS = {
    "dotdot name": ("UPDATE inode SET name = '..' WHERE name = 'a'", "bad entry name"),
    "dot name": ("UPDATE inode SET name = '.' WHERE name = 'a'", "bad entry name"),
    "slash in name": ("UPDATE inode SET name = 'x/y' WHERE name = 'dup1'", "bad entry name"),
    "empty name": ("UPDATE inode SET name = '' WHERE name = 'dup1'", "bad entry name"),
    "nul in name": ("UPDATE inode SET name = 'x' || char(0) WHERE name = 'dup1'", "bad entry name"),
    "long name": ("UPDATE inode SET name = printf('%.300c', 'x') WHERE name = 'dup1'", "over 255"),
    "duplicate": ("UPDATE inode SET name = 'dup1' WHERE name = 'dup2'", "duplicate"),
    "root cycle": ("UPDATE inode SET parent = 1 WHERE ino = 1", "cycle"),
    "no root": ("DELETE FROM inode WHERE ino = 1", "no root"),
    "untyped mode": ("UPDATE inode SET mode = 420 WHERE name = 'dup1'", "unknown file type"),
    "negative size": ("UPDATE inode SET size = -1 WHERE name = 'dup1'", "size"),
    "text size": ("UPDATE inode SET size = 'big' WHERE name = 'dup1'", "size"),
    "short block id": ("UPDATE block SET id = x'0102'", "32-byte"),
    "hex text block id": ("UPDATE block SET id = hex(id)", "32-byte"),
    "missing link target": ("DELETE FROM extra", "link target"),
    "route over 255": ("UPDATE route SET end = 256", "route end"),
    "empty route": ("UPDATE route SET start = 9, end = 3", "empty"),
    "missing table": ("DROP TABLE tag", "missing tables: tag"),
    "view instead of table": ("DROP TABLE route", "missing tables: route"),
    "renamed table": ("ALTER TABLE block RENAME TO blocks", "missing tables: block"),
    "bad column": ("ALTER TABLE inode RENAME COLUMN mode TO perms", "SQLite"),
    "non-utf8 name": ("UPDATE inode SET name = CAST(x'ff41' AS TEXT) WHERE name = 'dup1'", "UTF-8"),
}


@pytest.mark.parametrize("case", sorted(V2_MUTATIONS))
def test_hostile_fl_is_bad_flist(fl: Path, case: str) -> None:
    statement, message = V2_MUTATIONS[case]
    sql(fl, statement)
    if case == "view instead of table":
        sql(fl, "CREATE VIEW route AS SELECT 0 AS start, 255 AS end, 'x' AS url")
    with pytest.raises(BadFlist, match=message):
        read_flist(fl)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (FlistLimits(max_entries=5), "inode has"),
        (FlistLimits(max_blocks=5), "block has"),
        (FlistLimits(max_depth=2), "too deep"),
        (FlistLimits(max_path=10), "too deep"),
    ],
    ids=["entries", "blocks", "depth", "path"],
)
def test_limits_are_enforced(fl: Path, limits: FlistLimits, message: str) -> None:
    with pytest.raises(BadFlist, match=message):
        read_flist(fl, limits=limits)
    assert read_flist(fl).files  # and the defaults read it


@pytest.mark.parametrize(
    "content",
    [b"", b"not an flist at all", b"SQLite format 3\0" + b"\x00" * 200, gzip.compress(b"not a tar")],
    ids=["empty", "text", "truncated sqlite", "gzip not tar"],
)
def test_garbage_is_bad_flist(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.fl"
    path.write_bytes(content)
    with pytest.raises(BadFlist):
        read_flist(path)


def test_missing_file_is_bad_flist(tmp_path: Path) -> None:
    with pytest.raises(BadFlist, match="cannot read"):
        read_flist(tmp_path / "absent.fl")


def test_sqlite_without_flist_tables_is_bad_flist(tmp_path: Path) -> None:
    path = sql(tmp_path / "other.sqlite", "CREATE TABLE unrelated (x)")
    with pytest.raises(BadFlist, match="missing tables: entries"):
        read_flist(path)


@pytest.fixture
def v1db(tmp_path: Path) -> Path:
    out, _ = write("v1", make_tree(tmp_path), tmp_path)
    return extract_v1_db(out, tmp_path)


def edit_dir(db_path: Path, key: str, change: Callable[[Any], None]) -> None:
    with closing(sqlite3.connect(db_path)) as db:
        (value,) = db.execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        with v1_schema().Dir.from_bytes(value) as record:
            builder = record.as_builder()
        change(builder)
        db.execute("UPDATE entries SET value = ? WHERE key = ?", (builder.to_bytes(), key))
        db.commit()


def entry_named(record: Any, name: str) -> Any:
    return next(i for i in record.contents if i.name == name)


def set_key(name: str, key: str) -> Callable[[Any], None]:
    return lambda record: setattr(entry_named(record, name).attributes.dir, "key", key)


def set_name(old: str, new: str) -> Callable[[Any], None]:
    return lambda record: setattr(entry_named(record, old), "name", new)


V1_DIR_EDITS: dict[str, tuple[str, Callable[[Any], None], str]] = {
    "subdir points at root": (V1_ROOT_KEY, set_key("a", V1_ROOT_KEY), "listed twice"),
    "shared sub-tree": (V1_ROOT_KEY, set_key("empty-dir", v1_dir_key("a")), "listed twice"),
    "dangling subdir": (V1_ROOT_KEY, set_key("a", "00" * 16), "missing"),
    "dotdot name": (V1_ROOT_KEY, set_name("dup1", ".."), "bad entry name"),
    "slash name": (v1_dir_key("a"), set_name("many-blocks.bin", "../../etc"), "bad entry name"),
    "duplicate": (V1_ROOT_KEY, set_name("dup1", "dup2"), "duplicate"),
    "short block hash": (
        V1_ROOT_KEY,
        lambda r: setattr(entry_named(r, "dup1").attributes.file.blocks[0], "hash", b"\x01"),
        "16-byte",
    ),
}


@pytest.mark.parametrize("case", sorted(V1_DIR_EDITS))
def test_hostile_v1_directory_records_are_bad_flist(v1db: Path, case: str) -> None:
    key, change, message = V1_DIR_EDITS[case]
    edit_dir(v1db, key, change)
    with pytest.raises(BadFlist, match=message):
        read_v1(v1db)


V1_SQL_EDITS = {
    "garbage record": (f"UPDATE entries SET value = x'00112233445566778899' WHERE key = '{V1_ROOT_KEY}'", "capnp"),
    "text record": (f"UPDATE entries SET value = 'hello' WHERE key = '{V1_ROOT_KEY}'", "capnp"),
    "no root": (f"DELETE FROM entries WHERE key = '{V1_ROOT_KEY}'", "missing"),
    "backend not json": ("UPDATE metadata SET value = '{oops' WHERE key = 'backend'", "not JSON"),
    "backend not object": ("UPDATE metadata SET value = '[1, 2]' WHERE key = 'backend'", "not a JSON object"),
    "no entries table": ("DROP TABLE entries", "missing tables: entries"),
}


@pytest.mark.parametrize("case", sorted(V1_SQL_EDITS))
def test_hostile_v1_tables_are_bad_flist(v1db: Path, case: str) -> None:
    statement, message = V1_SQL_EDITS[case]
    sql(v1db, statement)
    with pytest.raises(BadFlist, match=message):
        read_v1(v1db)


def test_v1_missing_acl_reads_as_0444_like_rfs1(v1db: Path) -> None:
    sql(v1db, "DELETE FROM entries WHERE length(key) = 16")  # the ACIs (8-byte hashes)
    image = read_v1(v1db)
    assert {f.mode for f in image.files} == {0o444}


def test_v1_without_metadata_table_has_no_backend(v1db: Path) -> None:
    sql(v1db, "DROP TABLE metadata")
    image = read_v1(v1db)
    assert image.backend is None
    assert image.tags == {}
    assert image.files


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def reg(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([(reg("../flistdb.sqlite3"), b"x")], "unsafe"),
        ([(reg("./../../evil"), b"x")], "unsafe"),
        ([(reg("/etc/flistdb.sqlite3"), b"x")], "unsafe"),
        ([(reg("other.txt"), b"x")], "no flistdb.sqlite3"),
        ([(link("flistdb.sqlite3", "/etc/passwd"), None)], "not a regular file"),
        ([(reg(f"f{i}"), b"") for i in range(70)], "too many"),
        ([(reg("flistdb.sqlite3"), b"not sqlite")], "SQLite"),
    ],
    ids=["dotdot", "nested dotdot", "absolute", "no db", "symlink db", "too many", "db not sqlite"],
)
def test_hostile_tar_is_bad_flist_and_writes_nothing_outside(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], message: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    path = make_tar(work / "bad.flist", members)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(BadFlist, match=message):
        read_flist(path)
    assert sorted(tmp_path.rglob("*")) == before


def test_oversized_tar_member_is_refused(tmp_path: Path, v1db: Path) -> None:
    size = v1db.stat().st_size
    path = make_tar(tmp_path / "big.flist", [(reg("./flistdb.sqlite3"), v1db.read_bytes())])
    assert read_flist(path, limits=FlistLimits(max_db_bytes=size)).version == 1
    with pytest.raises(BadFlist, match=f"at most {size - 1} bytes"):
        read_flist(path, limits=FlistLimits(max_db_bytes=size - 1))
    with pytest.raises(BadFlist, match="tar content over"):  # what all members add up to is capped too
        read_flist(path, limits=FlistLimits(max_db_bytes=size // 3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_images_read_or_raise_bad_flist_only(tmp_path: Path, data: st.DataObject) -> None:
    for image in mutation_sources(tmp_path):
        raw = bytearray(image.read_bytes())
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        target = tmp_path / f"mutated-{image.name}"
        target.write_bytes(bytes(raw))
        try:
            image_read = read_flist(target)
        except BadFlist:
            continue
        for item in image_read.files:  # whatever survives is still a safe, relative tree
            parts = item.path.split("/")
            assert all(part not in ("", ".", "..") for part in parts)


def mutation_sources(tmp_path: Path) -> Iterator[Path]:
    cache = tmp_path / "sources"
    if not cache.exists():
        cache.mkdir()
        src = cache / "src"
        (src / "d").mkdir(parents=True)
        (src / "d" / "f").write_bytes(b"data" * 300)
        os.symlink("d/f", src / "l")
        write_fl(src, cache / "m.fl", cache / "hub", route_url="http://127.0.0.1:1/", chunk_size=CHUNK)
        write_flist_v1(src, cache / "m.flist", cache / "hub", backend=None, chunk_size=CHUNK)
        shutil.copy(extract_v1_db(cache / "m.flist", cache), cache / "m.sqlite3")
    yield from (cache / "m.fl", cache / "m.flist", cache / "m.sqlite3")
