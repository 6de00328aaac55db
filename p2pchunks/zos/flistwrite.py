"""Flist writers: a directory tree → an rfs image plus its encoded chunks in a hub root, the way rfs writes them.

Owns producing both generations for tests, the netsim and the demo (the readers live in ``flist``):

* :func:`write_fl` writes an rfs 2 ``.fl`` as ``rfs pack`` does: the five tables; one route ``(0, 255, url)``; the
  root inode first (ino 1, name ``/``, parent 0), then each directory's non-directory children as they are met
  and its sub-directories later (last found, first written); ``mode`` the full ``st_mode`` from ``lstat``; symlink
  targets in ``extra``; one ``block`` row per chunk in file order; chunks encoded with :func:`codec.encode_v2`.
* :func:`write_flist_v1` writes an rfs 1 / 0-flist ``.flist`` as 0-flist does: a tar.gz holding
  ``./flistdb.sqlite3`` with ``entries`` (one unpacked capnp ``Dir`` per directory keyed by the hex BLAKE2b-128 of
  its relative path, the root naming itself as parent; one ``ACI`` per distinct permission set keyed by the hex
  BLAKE2b-64 of ``user:…\\ngroup:…\\nmode:0o…\\nuid:…\\ngid:…``) and ``metadata`` (``backend`` as JSON); chunks
  encoded with :func:`codec.encode_v1`; specials carry ``"major,minor"`` or ``"(nothing)"``.

Chunks go to ``<blob_store>/chunks/<ab>/<cd>/<id>`` (the hub root layout), written atomically, once each. Both
return the distinct blobs in first-use order (their bytes included: meant for small trees). Siblings are taken in
name order so output is deterministic. This module must not know manifests, caches or the network.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import sqlite3
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from ..files import atomic_write, replacing
from ..ids import chunk_relpath
from .codec import Blob, encode_v1, encode_v2
from .flist import V1_DB_NAME, v1_schema

CHUNK_SIZE = 512 * 1024

_V2_SCHEMA = """
CREATE TABLE inode (
    ino INTEGER PRIMARY KEY AUTOINCREMENT, parent INTEGER, name VARCHAR(255), size INTEGER,
    uid INTEGER, gid INTEGER, mode INTEGER, rdev INTEGER, ctime INTEGER, mtime INTEGER
);
CREATE INDEX parents ON inode (parent);
CREATE INDEX names ON inode (name);
CREATE TABLE extra (ino INTEGER PRIMARY KEY, data VARCHAR(4096));
CREATE TABLE block (ino INTEGER, id VARCHAR(32), key VARCHAR(32));
CREATE INDEX block_ino ON block (ino);
CREATE TABLE tag (key VARCHAR(10) PRIMARY KEY, value VARCHAR(255));
CREATE TABLE route (start integer, end integer, url VARCHAR(2048));
"""

_V1_SCHEMA = """
CREATE TABLE entries (key VARCHAR(64) PRIMARY KEY, value BLOB);
CREATE INDEX entries_index ON entries (key);
CREATE TABLE metadata (key VARCHAR(64) PRIMARY KEY, value TEXT);
"""

_SPECIAL_TYPES = {stat.S_IFSOCK: "socket", stat.S_IFBLK: "block", stat.S_IFCHR: "chardev", stat.S_IFIFO: "fifopipe"}


class _Blobs:
    """Encodes chunks, stores each distinct blob once under the hub root layout, remembers first-use order."""

    def __init__(self, root: Path, encode: Callable[[bytes], Blob], chunk_size: int) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.root = root / "chunks"
        self.encode = encode
        self.chunk_size = chunk_size
        self.blobs: dict[str, Blob] = {}

    def file(self, path: Path) -> Iterator[Blob]:
        with open(path, "rb") as handle:
            while chunk := handle.read(self.chunk_size):
                yield self.put(self.encode(chunk))

    def put(self, blob: Blob) -> Blob:
        if blob.id not in self.blobs:
            self.blobs[blob.id] = blob
            target = self.root / chunk_relpath(blob.id)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(target, blob.data, fsync=False)
        return blob


def _children(directory: Path) -> list[tuple[str, Path, os.stat_result]]:
    return [(entry.name, Path(entry.path), entry.stat(follow_symlinks=False)) for entry in _scan(directory)]


def _scan(directory: Path) -> list[os.DirEntry[str]]:
    with os.scandir(directory) as entries:
        return sorted(entries, key=lambda entry: entry.name)


# --- v2 -------------------------------------------------------------------------------------------------------------


def write_fl(
    source_dir: Path, out: Path, blob_store: Path, *, route_url: str, chunk_size: int = CHUNK_SIZE
) -> list[Blob]:
    """Write ``source_dir`` as an rfs 2 ``.fl`` at ``out`` (replaced if present) and its chunks under ``blob_store``."""
    blobs = _Blobs(blob_store, encode_v2, chunk_size)
    out.unlink(missing_ok=True)
    with closing(sqlite3.connect(out)) as db:
        db.executescript(_V2_SCHEMA)
        db.execute("INSERT INTO route (start, end, url) VALUES (?, ?, ?)", (0, 255, route_url))
        pending: list[tuple[int, str, Path, os.stat_result]] = [(0, "/", source_dir, os.stat(source_dir))]
        while pending:
            parent, name, path, info = pending.pop()
            current = _v2_inode(db, parent, name, info, None)
            for child_name, child, child_info in _children(path):
                if stat.S_ISDIR(child_info.st_mode):
                    pending.append((current, child_name, child, child_info))
                    continue
                target = os.fsencode(os.readlink(child)) if stat.S_ISLNK(child_info.st_mode) else None
                ino = _v2_inode(db, current, child_name, child_info, target)
                if stat.S_ISREG(child_info.st_mode):
                    for blob in blobs.file(child):
                        db.execute(
                            "INSERT INTO block (ino, id, key) VALUES (?, ?, ?)", (ino, bytes.fromhex(blob.id), blob.key)
                        )
        db.commit()
    return list(blobs.blobs.values())


def _v2_inode(db: sqlite3.Connection, parent: int, name: str, info: os.stat_result, data: bytes | None) -> int:
    cursor = db.execute(
        "INSERT INTO inode (parent, name, size, uid, gid, mode, rdev, ctime, mtime) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            parent,
            name,
            info.st_size,
            info.st_uid,
            info.st_gid,
            info.st_mode,
            info.st_rdev,
            int(info.st_ctime),
            int(info.st_mtime),
        ),
    )
    ino = cursor.lastrowid
    assert ino is not None
    if data is not None:
        db.execute("INSERT INTO extra (ino, data) VALUES (?, ?)", (ino, data))
    return ino


# --- v1 -------------------------------------------------------------------------------------------------------------


def v1_dir_key(relative: str) -> str:
    """The ``entries`` key of a directory: hex BLAKE2b-128 of its relative path ("" for the root)."""
    return hashlib.blake2b(relative.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def _name(lookup: Callable[[int], Any], ident: int) -> str:
    try:
        return str(lookup(ident)[0])
    except KeyError:
        return str(ident)  # as 0-flist does when the id has no name


def _u32(value: float) -> int:
    return min(max(int(value), 0), 0xFFFFFFFF)


class _V1Writer:
    def __init__(self, db: sqlite3.Connection, blobs: _Blobs) -> None:
        self.db = db
        self.blobs = blobs
        self.schema = v1_schema()
        self.acis: set[str] = set()

    def aci(self, info: os.stat_result) -> str:
        uname, gname = _name(pwd.getpwuid, info.st_uid), _name(grp.getgrgid, info.st_gid)
        mode = stat.S_IMODE(info.st_mode)
        text = f"user:{uname}\ngroup:{gname}\nmode:0o{mode:o}\nuid:{info.st_uid}\ngid:{info.st_gid}"
        key = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
        if key not in self.acis:
            self.acis.add(key)
            message = self.schema.ACI.new_message(uname=uname, gname=gname, mode=mode, uid=info.st_uid, gid=info.st_gid)
            self.db.execute("INSERT OR REPLACE INTO entries (key, value) VALUES (?, ?)", (key, message.to_bytes()))
        return key

    def directory(
        self, relative: str, path: Path, info: os.stat_result, parent_key: str
    ) -> list[tuple[str, Path, os.stat_result, str]]:
        """Write one ``Dir`` record; return its sub-directories, still to be written."""
        key = v1_dir_key(relative)
        children = _children(path)
        record = self.schema.Dir.new_message(
            name=path.name if relative else "",
            location=relative,
            parent=parent_key,
            size=4096,
            aclkey=self.aci(info),
            modificationTime=_u32(info.st_mtime),
            creationTime=_u32(info.st_ctime),
        )
        contents = record.init("contents", len(children))
        subdirs = []
        for inode, (name, child, child_info) in zip(contents, children, strict=True):
            child_relative = f"{relative}/{name}" if relative else name
            self.inode(inode, name, child, child_info, child_relative)
            if stat.S_ISDIR(child_info.st_mode):
                subdirs.append((child_relative, child, child_info, key))
        self.db.execute("INSERT OR REPLACE INTO entries (key, value) VALUES (?, ?)", (key, record.to_bytes()))
        return subdirs

    def inode(self, inode: Any, name: str, path: Path, info: os.stat_result, relative: str) -> None:
        inode.name = name
        inode.size = info.st_size
        inode.aclkey = self.aci(info)
        inode.modificationTime = _u32(info.st_mtime)
        inode.creationTime = _u32(info.st_ctime)
        mode = info.st_mode
        if stat.S_ISDIR(mode):
            inode.attributes.init("dir").key = v1_dir_key(relative)
        elif stat.S_ISLNK(mode):
            inode.attributes.init("link").target = os.readlink(path)
        elif stat.S_ISREG(mode):
            file = inode.attributes.init("file")
            file.blockSize = 128  # ignored by every reader
            blocks = list(self.blobs.file(path))
            if blocks:
                for entry, blob in zip(file.init("blocks", len(blocks)), blocks, strict=True):
                    entry.hash = bytes.fromhex(blob.id)
                    entry.key = blob.key
        else:
            special = inode.attributes.init("special")
            special.type = _SPECIAL_TYPES.get(stat.S_IFMT(mode), "unknown")
            is_device = stat.S_ISBLK(mode) or stat.S_ISCHR(mode)
            data = f"{os.major(info.st_rdev)},{os.minor(info.st_rdev)}" if is_device else "(nothing)"
            special.data = data.encode()


def write_flist_v1(
    source_dir: Path,
    out: Path,
    blob_store: Path,
    *,
    backend: dict[str, object] | None,
    chunk_size: int = CHUNK_SIZE,
) -> list[Blob]:
    """Write ``source_dir`` as an rfs 1 ``.flist`` (tar.gz) at ``out`` and its chunks under ``blob_store``."""
    blobs = _Blobs(blob_store, encode_v1, chunk_size)
    with tempfile.TemporaryDirectory(prefix="p2pchunks-flistwrite-") as tmp:
        db_path = Path(tmp) / V1_DB_NAME
        with closing(sqlite3.connect(db_path)) as db:
            db.executescript(_V1_SCHEMA)
            writer = _V1Writer(db, blobs)
            pending = [("", source_dir, os.stat(source_dir), v1_dir_key(""))]
            while pending:
                pending.extend(writer.directory(*pending.pop()))
            if backend is not None:
                db.execute("INSERT INTO metadata (key, value) VALUES (?, ?)", ("backend", json.dumps(backend)))
            db.commit()
        with replacing(out, fsync=False) as partial, tarfile.open(partial, "w:gz") as tar:
            tar.add(db_path, arcname=f"./{V1_DB_NAME}")
    return list(blobs.blobs.values())
