"""Rewriting where an flist says its blocks live, so rfs fetches them from the agent (zdb or rfs HTTP store proxy).

Owns producing a copy of an flist whose store location is changed and nothing else (the blocks, keys, tree and
tags stay as they were; ``src`` is never opened for writing):

* **v2** ``.fl``: the ``route`` table (rfs 2 tries every route whose byte range covers a block id's first byte) is
  replaced by the single row ``(0, 255, url)``; the copy is switched to ``journal_mode=DELETE`` so it is one
  self-contained file, as flistd downloads it. ``url`` is a zdb (every rfs 2) or, for the rfs after v2.0.7, an
  HTTP store (``http(s)://HOST:PORT``) or an rfs server (``server://http/HOST:PORT``), as the agent's
  ``rfs.http_listen`` serves both.
* **v1** ``.flist``: the tar.gz is opened with the same care as ``flist`` (member count and size caps, no absolute
  or ``..`` names), only ``flistdb.sqlite3`` is kept, its ``metadata.backend`` JSON becomes ``{"host", "port",
  "namespace"}`` (``password`` when given) — rfs v1.1.1 (zos installs it as ``g8ufs``) prefers that backend to the
  ``--storage-url`` flistd passes — and it is re-packed as a new tar.gz.

Each result is read back with :func:`flist.read_flist` before it is renamed into place at ``dst``.

Must not know: the proxy, the agent, manifests.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from ..config.schema import join_hostport
from ..errors import BadConfig, BadFlist
from ..files import replacing
from ..hub.rfsstore import rfs_http_block_urls, rfs_server_base
from .flist import DEFAULT_LIMITS, V1_DB_NAME, FlistLimits, extract_db, read_flist
from .zdb import ZdbAddress, parse_zdb_url

__all__ = [
    "RFS_STORE_SCHEMES",
    "parse_zdb_target",
    "rewrite_fl",
    "rewrite_flist",
    "rewrite_flist_store",
    "rewrite_flist_v1",
    "zdb_url",
]

RFS_STORE_SCHEMES = frozenset({"zdb", "dir", "s3", "s3s", "s3s+tls", "http", "https", "server"})
"""Store URL schemes rfs 2 knows (``src/store/mod.rs``): v2.0.6, which zos ships, only the first five; the
development branch adds ``http``, ``https`` and ``server``."""
_SQLITE_MAGIC = b"SQLite format 3\0"
_GZIP_MAGIC = b"\x1f\x8b"


def parse_zdb_target(text: str) -> ZdbAddress:
    """``HOST:PORT[/NS]`` (or a full ``zdb://`` URL; port 9900 and namespace ``default`` when left out)."""
    return parse_zdb_url(text if text.startswith("zdb://") else f"zdb://{text}")


def zdb_url(address: ZdbAddress) -> str:
    password = f":{address.password}@" if address.password else ""
    return f"zdb://{password}{join_hostport(address.host, address.port)}/{address.namespace}"


def rewrite_flist(src: Path, dst: Path, zdb: str) -> Literal[1, 2]:
    """Point ``src`` (either generation, sniffed) at the zdb ``HOST:PORT[/NS]``; write ``dst``; return the version."""
    address = parse_zdb_target(zdb)
    head = _head(src)
    if head.startswith(_SQLITE_MAGIC):
        rewrite_fl(src, dst, zdb_url(address))
        return 2
    if head.startswith(_GZIP_MAGIC):
        rewrite_flist_v1(src, dst, address.host, address.port, address.namespace, password=address.password)
        return 1
    raise BadFlist(f"{src}: neither an SQLite .fl nor a gzip .flist")


def rewrite_flist_store(src: Path, dst: Path, url: str) -> Literal[1, 2]:
    """Point ``src`` at the store ``url`` (a v2 route, verbatim); a v1 ``.flist`` can only name a zdb."""
    if urlsplit(url).scheme.lower() == "zdb":
        return rewrite_flist(src, dst, url)
    if not _head(src).startswith(_SQLITE_MAGIC):
        raise BadConfig(f"{src}: rfs 1 reads blocks from a zdb only; give --zdb")
    rewrite_fl(src, dst, url)
    return 2


# --- v2 -------------------------------------------------------------------------------------------------------------


def rewrite_fl(src: Path, dst: Path, url: str) -> None:
    """Copy the rfs 2 ``.fl`` ``src`` to ``dst`` with one route, ``(0, 255, url)``."""
    scheme = urlsplit(url).scheme
    if scheme not in RFS_STORE_SCHEMES:
        raise BadConfig(f"store url {url!r}: rfs 2 knows {', '.join(sorted(RFS_STORE_SCHEMES))}")
    if scheme == "zdb":
        parse_zdb_url(url)
    elif scheme in ("http", "https"):
        rfs_http_block_urls(url, "0" * 64)
    elif scheme == "server":
        rfs_server_base(url)
    _check_paths(src, dst)
    if not _head(src).startswith(_SQLITE_MAGIC):
        raise BadFlist(f"{src}: not an SQLite .fl")

    def build(tmp: Path) -> None:
        shutil.copyfile(src, tmp)
        try:
            with closing(sqlite3.connect(tmp)) as db:
                tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if not {"inode", "block", "route"} <= tables:
                    raise BadFlist(f"{src}: not an rfs 2 flist (tables inode, block, route wanted)")
                db.execute("DELETE FROM route")
                db.execute("INSERT INTO route (start, end, url) VALUES (0, 255, ?)", (url,))
                db.commit()
                db.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error as error:
            raise BadFlist(f"{src}: SQLite: {error}") from None

    _produce(dst, build)


# --- v1 -------------------------------------------------------------------------------------------------------------


def rewrite_flist_v1(
    src: Path,
    dst: Path,
    host: str,
    port: int,
    namespace: str,
    *,
    password: str | None = None,
    limits: FlistLimits = DEFAULT_LIMITS,
) -> None:
    """Copy the rfs 1 ``.flist`` ``src`` to ``dst`` with ``metadata.backend`` = this zdb."""
    if not host or not 0 < port < 65536 or not namespace:
        raise BadConfig(f"bad zdb backend {host!r}:{port}/{namespace!r}")
    _check_paths(src, dst)
    backend: dict[str, object] = {"host": host, "port": port, "namespace": namespace}
    if password:
        backend["password"] = password

    def build(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="p2pchunks-rewrite-", dir=tmp.parent) as work:
            db_path = Path(work) / V1_DB_NAME
            arcname = extract_db(src, db_path, limits)
            try:
                with closing(sqlite3.connect(db_path)) as db:
                    db.execute("CREATE TABLE IF NOT EXISTS metadata (key VARCHAR(64) PRIMARY KEY, value TEXT)")
                    db.execute("DELETE FROM metadata WHERE key = 'backend'")
                    db.execute("INSERT INTO metadata (key, value) VALUES ('backend', ?)", (json.dumps(backend),))
                    db.commit()
                    db.execute("PRAGMA journal_mode=DELETE")
            except sqlite3.Error as error:
                raise BadFlist(f"{src}: SQLite: {error}") from None
            with tarfile.open(tmp, "w:gz") as tar:
                tar.add(db_path, arcname=arcname)

    _produce(dst, build)


# --- shared ---------------------------------------------------------------------------------------------------------


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(_SQLITE_MAGIC))
    except OSError as error:
        raise BadFlist(f"{path}: cannot read: {error.strerror}") from None


def _check_paths(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise BadFlist(f"{src}: not a file")
    if dst.exists() and os.path.samefile(src, dst):
        raise BadConfig(f"{dst} is {src}: the source flist is never modified, pick another destination")


def _produce(dst: Path, build: Callable[[Path], None]) -> None:
    """Run ``build(tmp)`` on a temp file next to ``dst``, check the result reads as an flist, rename it to ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with replacing(dst, fsync=False) as tmp:
        build(tmp)
        read_flist(tmp)
