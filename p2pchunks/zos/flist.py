"""Flist readers: an rfs image description (``.fl`` or ``.flist``) → a plain :class:`FlistImage`.

Owns the two on-disk formats, read-only, and the defences against hostile files:

* **v2** ``.fl`` (rfs 2): an SQLite file with tables ``inode(ino, parent, name, size, uid, gid, mode, rdev, ctime,
  mtime)`` (the root is ino 1, ``mode`` is the full ``st_mode``), ``extra(ino, data)`` (symlink targets),
  ``block(ino, id, key)`` (32-byte BLOBs; a file's blocks are its rows in insertion order), ``tag(key, value)``
  and ``route(start, end, url)`` (id first-byte ranges → store URLs).
* **v1** ``.flist`` (rfs 1 / 0-flist): a tar.gz holding ``flistdb.sqlite3``, whose ``entries(key, value)`` maps the
  hex BLAKE2b-128 of a directory's relative path ("" for the root) to a Cap'n Proto ``Dir`` message
  (``data/flist.capnp``), and an ``aclkey`` to an ``ACI`` message (the permission bits; missing → 0o444 as rfs 1);
  ``metadata(key, value)`` holds tags, ``backend`` being the zdb backend as JSON.

Every name is checked (no ``/``, ``.``, ``..``, NUL), every directory is visited at most once (so cycles and shared
sub-trees are refused), entry/block/size counts are capped by :class:`FlistLimits`, tar members are checked and
only ``flistdb.sqlite3`` is copied, into a temporary directory this module owns. Anything wrong raises
:class:`BadFlist`. ``files`` come in tree order: depth first, a directory right before its contents, siblings in
the order the flist stores them; the root itself is not listed. ``mode`` is the permission bits (``& 0o7777``).
This module must not know chunk stores, codecs, manifests or the network.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import sqlite3
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import capnp

from ..errors import BadFlist

Kind = Literal["file", "dir", "symlink", "special"]

V1_ROOT_KEY = hashlib.blake2b(b"", digest_size=16).hexdigest()
V1_DB_NAME = "flistdb.sqlite3"
_SQLITE_MAGIC = b"SQLite format 3\0"
_GZIP_MAGIC = b"\x1f\x8b"
_V2_TABLES = ("inode", "extra", "block", "tag", "route")


@dataclass(frozen=True)
class FlistBlock:
    id: str  # hex, 32 (v1) or 64 (v2) digits
    key: bytes


@dataclass(frozen=True)
class FlistFile:
    path: str  # relative posix
    kind: Kind
    size: int
    mode: int
    target: str | None
    blocks: tuple[FlistBlock, ...]


@dataclass(frozen=True)
class FlistImage:
    version: Literal[1, 2]
    files: tuple[FlistFile, ...]
    routes: tuple[tuple[int, int, str], ...]
    backend: dict[str, object] | None
    tags: dict[str, str]


@dataclass(frozen=True)
class FlistLimits:
    """Caps that keep a hostile flist from exhausting memory or time."""

    max_entries: int = 1_000_000
    max_blocks: int = 4_000_000  # 2 TiB of 512 KiB chunks
    max_depth: int = 256
    max_path: int = 4096
    max_db_bytes: int = 2 << 30
    max_record_bytes: int = 64 << 20
    max_rows: int = 4096  # tags, metadata and routes
    max_tar_members: int = 64


DEFAULT_LIMITS = FlistLimits()


def read_flist(path: Path, *, limits: FlistLimits = DEFAULT_LIMITS) -> FlistImage:
    """Read either generation, sniffed from the first bytes (SQLite header → ``.fl``, gzip → ``.flist``)."""
    head = _head(path)
    if head.startswith(_SQLITE_MAGIC):
        with _sqlite(path) as db:
            return _read_v2(db, limits) if "inode" in _tables(db) else _read_v1_db(db, limits)
    if head.startswith(_GZIP_MAGIC):
        return read_v1(path, limits=limits)
    raise BadFlist(f"{path}: neither an SQLite .fl nor a gzip .flist")


def read_fl(path: Path, *, limits: FlistLimits = DEFAULT_LIMITS) -> FlistImage:
    if not _head(path).startswith(_SQLITE_MAGIC):
        raise BadFlist(f"{path}: not an SQLite database")
    with _sqlite(path) as db:
        return _read_v2(db, limits)


def read_v1(path: Path, *, limits: FlistLimits = DEFAULT_LIMITS) -> FlistImage:
    """Read a v1 ``.flist`` (tar.gz) or its bare ``flistdb.sqlite3``."""
    if _head(path).startswith(_SQLITE_MAGIC):
        with _sqlite(path) as db:
            return _read_v1_db(db, limits)
    with tempfile.TemporaryDirectory(prefix="p2pchunks-flist-") as tmp:
        db_path = Path(tmp) / V1_DB_NAME
        extract_db(path, db_path, limits)
        with _sqlite(db_path) as db:
            return _read_v1_db(db, limits)


# --- shared helpers -------------------------------------------------------------------------------------------------


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(_SQLITE_MAGIC))
    except OSError as error:
        raise BadFlist(f"{path}: cannot read: {error.strerror}") from None


@contextmanager
def _sqlite(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection; any SQLite failure inside the block becomes :class:`BadFlist`."""
    try:
        with closing(sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True)) as db:
            budget = [20_000]  # × 100k VM steps: bounds the time a crafted database can take

            def progress() -> int:
                budget[0] -= 1
                return int(budget[0] < 0)

            db.set_progress_handler(progress, 100_000)
            yield db
    except sqlite3.Error as error:
        raise BadFlist(f"{path}: SQLite: {error}") from None
    except UnicodeDecodeError:  # a TEXT value that is not UTF-8 (rfs writes names lossily, so always UTF-8)
        raise BadFlist(f"{path}: SQLite text that is not UTF-8") from None


def _tables(db: sqlite3.Connection) -> set[str]:
    return {name for name, kind in db.execute("SELECT name, type FROM sqlite_master") if kind == "table"}


def _require(db: sqlite3.Connection, names: tuple[str, ...]) -> None:
    missing = [name for name in names if name not in _tables(db)]
    if missing:
        raise BadFlist(f"missing tables: {', '.join(missing)}")


def _count(db: sqlite3.Connection, table: str, cap: int) -> None:
    (count,) = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    if count > cap:
        raise BadFlist(f"table {table} has {count} rows, over the cap of {cap}")


def _child_path(parent: str, name: object, depth: int, limits: FlistLimits) -> str:
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        raise BadFlist(f"bad entry name {name!r} under {parent or '/'!r}")
    if len(name.encode("utf-8", "surrogateescape")) > 255:
        raise BadFlist(f"entry name over 255 bytes under {parent or '/'!r}")
    path = f"{parent}/{name}" if parent else name
    if len(path) > limits.max_path or depth > limits.max_depth:
        raise BadFlist(f"path too long or too deep: {path[:120]!r}…")
    return path


def _int(value: object, what: str, low: int = 0, high: int = (1 << 63) - 1) -> int:
    if not isinstance(value, int) or not low <= value <= high:
        raise BadFlist(f"{what}: not an integer in [{low}, {high}]: {value!r}")
    return value


def _text(value: object, what: str, cap: int = 4096) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    if not isinstance(value, str) or len(value) > cap or "\0" in value:
        raise BadFlist(f"{what}: not a text of at most {cap} characters")
    return value


def _block(block_id: object, key: object, size: int) -> FlistBlock:
    if not (isinstance(block_id, bytes) and isinstance(key, bytes) and len(block_id) == len(key) == size):
        raise BadFlist(f"block id and key must be {size}-byte blobs")
    return FlistBlock(id=block_id.hex(), key=key)


# --- v2 -------------------------------------------------------------------------------------------------------------

_V2_KINDS: dict[int, Kind] = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFBLK: "special",
    stat.S_IFCHR: "special",
    stat.S_IFIFO: "special",
    stat.S_IFSOCK: "special",
}


def _read_v2(db: sqlite3.Connection, limits: FlistLimits) -> FlistImage:
    _require(db, _V2_TABLES)
    _count(db, "inode", limits.max_entries + 1)
    _count(db, "block", limits.max_blocks)
    _count(db, "route", limits.max_rows)
    _count(db, "tag", limits.max_rows)
    nodes: dict[int, tuple[str, int, int]] = {}
    children: dict[int, list[int]] = {}
    for ino, parent, name, size, mode in db.execute("SELECT ino, parent, name, size, mode FROM inode ORDER BY ino"):
        nodes[ino] = (name, _int(size, f"inode {ino} size"), _int(mode, f"inode {ino} mode", high=0xFFFFFFFF))
        children.setdefault(parent, []).append(ino)
    if 1 not in nodes:
        raise BadFlist("no root inode (ino 1)")
    order: list[tuple[int, str, Kind]] = []
    seen = {1}
    stack: list[tuple[Iterator[int], str, int]] = [(iter(children.get(1, ())), "", 0)]
    while stack:
        inos, parent, depth = stack[-1]
        ino = next(inos, None)
        if ino is None:
            stack.pop()
            continue
        if ino in seen:
            raise BadFlist(f"inode {ino} is its own ancestor (cycle)")
        seen.add(ino)
        name, _, mode = nodes[ino]
        path = _child_path(parent, name, depth + 1, limits)
        kind = _V2_KINDS.get(stat.S_IFMT(mode))
        if kind is None:
            raise BadFlist(f"{path!r}: unknown file type in mode {mode:#o}")
        order.append((ino, path, kind))
        if kind == "dir":
            stack.append((iter(children.get(ino, ())), path, depth + 1))
    _unique([path for _, path, _ in order])
    return FlistImage(
        version=2,
        files=_v2_files(db, nodes, order),
        routes=_v2_routes(db),
        backend=None,
        tags={_text(k, "tag key", 255): _text(v, "tag value") for k, v in db.execute("SELECT key, value FROM tag")},
    )


def _v2_files(
    db: sqlite3.Connection, nodes: dict[int, tuple[str, int, int]], order: list[tuple[int, str, Kind]]
) -> tuple[FlistFile, ...]:
    wanted = {ino for ino, _, kind in order if kind in ("file", "symlink")}
    blocks: dict[int, list[FlistBlock]] = {}
    for ino, block_id, key in db.execute("SELECT ino, id, key FROM block ORDER BY ino, rowid"):
        if ino in wanted:
            blocks.setdefault(ino, []).append(_block(block_id, key, 32))
    targets = {ino: data for ino, data in db.execute("SELECT ino, data FROM extra") if ino in wanted}
    files = []
    for ino, path, kind in order:
        _, size, mode = nodes[ino]
        target = _text(targets.get(ino), f"{path!r} link target") if kind == "symlink" else None
        chunks = tuple(blocks.get(ino, ())) if kind == "file" else ()
        files.append(FlistFile(path=path, kind=kind, size=size, mode=mode & 0o7777, target=target, blocks=chunks))
    return tuple(files)


def _v2_routes(db: sqlite3.Connection) -> tuple[tuple[int, int, str], ...]:
    routes = []
    for start, end, url in db.execute("SELECT start, end, url FROM route ORDER BY rowid"):
        low, high = _int(start, "route start", high=255), _int(end, "route end", high=255)
        if low > high:
            raise BadFlist(f"route range {low}-{high} is empty")
        routes.append((low, high, _text(url, "route url", 2048)))
    return tuple(routes)


# --- v1 -------------------------------------------------------------------------------------------------------------

_Entry = tuple[str, Kind, int, str, str | None, tuple[FlistBlock, ...], str | None]
"""(name, kind, size, aclkey, link target, blocks, sub-directory key) of one ``Inode`` of a ``Dir``."""


@functools.cache
def v1_schema() -> Any:
    """The compiled v1 capnp schema (``data/flist.capnp``), loaded once."""
    with resources.as_file(resources.files(__package__).joinpath("data/flist.capnp")) as schema_path:
        return capnp.load(str(schema_path))


def _parse(struct: Any, data: object, what: str, convert: Callable[[Any], Any], limits: FlistLimits) -> Any:
    """Parse one unpacked capnp message and convert it to plain data while the reader is alive."""
    if not isinstance(data, bytes) or len(data) > limits.max_record_bytes:
        raise BadFlist(f"{what}: not a capnp message of at most {limits.max_record_bytes} bytes")
    try:
        with struct.from_bytes(data, traversal_limit_in_words=4 * (len(data) // 8) + 1024, nesting_limit=16) as root:
            return convert(root)
    except BadFlist:
        raise
    except Exception as error:  # pycapnp raises KjException, UnicodeDecodeError, … on malformed messages
        raise BadFlist(f"{what}: bad capnp message: {type(error).__name__}: {str(error)[:160]}") from None


def _dir_entries(root: Any) -> list[_Entry]:
    entries: list[_Entry] = []
    for inode in root.contents:
        attributes = inode.attributes
        which = str(attributes.which())
        blocks: tuple[FlistBlock, ...] = ()
        target = subdir = None
        if which == "dir":
            kind: Kind = "dir"
            subdir = str(attributes.dir.key)
        elif which == "file":
            kind = "file"
            blocks = tuple(_block(bytes(b.hash), bytes(b.key), 16) for b in attributes.file.blocks)
        elif which == "link":
            kind, target = "symlink", str(attributes.link.target)
        else:
            kind = "special"
        entries.append((str(inode.name), kind, int(inode.size), str(inode.aclkey), target, blocks, subdir))
    return entries


def _read_v1_db(db: sqlite3.Connection, limits: FlistLimits) -> FlistImage:
    _require(db, ("entries",))
    _count(db, "entries", limits.max_entries + limits.max_rows)
    tags: dict[str, str] = {}
    if "metadata" in _tables(db):
        _count(db, "metadata", limits.max_rows)
        tags = {
            _text(k, "metadata key", 255): _text(v, "metadata value")
            for k, v in db.execute("SELECT key, value FROM metadata")
        }
    schema = v1_schema()
    modes: dict[str, int] = {}

    def record(key: str) -> object:
        row = db.execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def mode_of(aclkey: str) -> int:
        if aclkey not in modes:
            data = record(aclkey)
            modes[aclkey] = 0o444 if data is None else _parse(schema.ACI, data, f"ACI {aclkey}", _aci_mode, limits)
        return modes[aclkey]

    files: list[FlistFile] = []
    blocks_seen = 0
    seen = {V1_ROOT_KEY}
    stack: list[tuple[Iterator[_Entry], str, int]] = [(iter(_v1_dir(record, V1_ROOT_KEY, schema, limits)), "", 0)]
    while stack:
        entries, parent, depth = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        name, kind, size, aclkey, target, blocks, subdir = entry
        path = _child_path(parent, name, depth + 1, limits)
        if target is not None:
            target = _text(target, f"{path!r} link target")
        blocks_seen += len(blocks)
        if len(files) >= limits.max_entries or blocks_seen > limits.max_blocks:
            raise BadFlist(f"more than {limits.max_entries} entries or {limits.max_blocks} blocks")
        files.append(FlistFile(path, kind, size, mode_of(aclkey), target, blocks))
        if subdir is not None:
            if subdir in seen:
                raise BadFlist(f"directory {subdir} listed twice (cycle or shared sub-tree) at {path!r}")
            seen.add(subdir)
            stack.append((iter(_v1_dir(record, subdir, schema, limits)), path, depth + 1))
    _unique([item.path for item in files])
    return FlistImage(version=1, files=tuple(files), routes=(), backend=_backend(tags), tags=tags)


def _v1_dir(record: Callable[[str], object], key: str, schema: Any, limits: FlistLimits) -> list[_Entry]:
    data = record(key)
    if data is None:
        raise BadFlist(f"directory record {key} missing")
    entries: list[_Entry] = _parse(schema.Dir, data, f"directory {key}", _dir_entries, limits)
    return entries


def _aci_mode(root: Any) -> int:
    return int(root.mode) & 0o7777


def _unique(paths: list[str]) -> None:
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise BadFlist(f"duplicate entry {path!r}")
        seen.add(path)


def _backend(tags: dict[str, str]) -> dict[str, object] | None:
    if "backend" not in tags:
        return None
    try:
        backend = json.loads(tags["backend"])
    except ValueError:
        raise BadFlist("metadata backend is not JSON") from None
    if not isinstance(backend, dict):
        raise BadFlist("metadata backend is not a JSON object")
    return backend


def extract_db(src: Path, out: Path, limits: FlistLimits) -> str:
    """Copy ``flistdb.sqlite3`` out of the tar.gz ``src`` into ``out``; return its member name."""
    total = 0
    try:
        with tarfile.open(src, mode="r:gz") as tar:
            for index, member in enumerate(tar):
                parts = PurePosixPath(member.name).parts
                if index >= limits.max_tar_members or member.name.startswith("/") or ".." in parts:
                    raise BadFlist(f"{src}: unsafe or too many tar members ({member.name[:120]!r})")
                total += member.size
                if total > 2 * limits.max_db_bytes:
                    raise BadFlist(f"{src}: tar content over {2 * limits.max_db_bytes} bytes")
                if [part for part in parts if part != "."] != [V1_DB_NAME]:
                    continue
                source = tar.extractfile(member) if member.isreg() else None
                if source is None or member.size > limits.max_db_bytes:
                    raise BadFlist(f"{src}: {V1_DB_NAME} is not a regular file of at most {limits.max_db_bytes} bytes")
                with source, open(out, "wb") as sink:
                    shutil.copyfileobj(source, sink)
                return member.name
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise BadFlist(f"{src}: not a readable tar.gz: {error}") from None
    raise BadFlist(f"{src}: no {V1_DB_NAME} in the archive")
