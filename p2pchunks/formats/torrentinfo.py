"""The BitTorrent v2 torrent of an image: one file per distinct chunk, one chunk per piece.

The torrent is named ``chunks``; its files are ``chunks/<ab>/<cd>/<id>`` (the cache layout, so a libtorrent
session whose save path is a cache directory reads and writes the cache's own files), and the piece length is the
smallest power of two ≥ the largest chunk, so piece *i* is exactly one chunk. Pieces follow the sorted file tree
(libtorrent's order). Built with libtorrent from the chunk bytes (deterministic: same chunks → same infohash) and
checked against a manifest's chunks when one is decoded.

Must not know: manifests' other fields, networking, the cache.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import libtorrent as lt

from .. import ids
from ..errors import BadManifest
from .bencoding import bdecode

TORRENT_NAME = b"chunks"
MIN_PIECE_LENGTH = 16 * 1024
_INFO_KEYS = frozenset({b"file tree", b"meta version", b"name", b"piece length"})


def piece_length_for(largest_chunk: int) -> int:
    """The smallest power of two ≥ max(16 KiB, ``largest_chunk``)."""
    return max(MIN_PIECE_LENGTH, 1 << max(0, largest_chunk - 1).bit_length())


def build_torrent_info(directory: Path, chunks: Iterable[tuple[str, int]]) -> dict[bytes, object]:
    """The deterministic v2 info dict of the distinct ``chunks``, hashed from ``<directory>/chunks/ab/cd/<id>``."""
    sizes: dict[str, int] = {}
    for chunk_id, size in chunks:
        if not ids.is_chunk_id(chunk_id) or not isinstance(size, int) or size <= 0:
            raise BadManifest(f"torrent: bad chunk {chunk_id!r:.80} of size {size!r}")
        if sizes.setdefault(chunk_id, size) != size:
            raise BadManifest(f"chunk {chunk_id} appears with sizes {sizes[chunk_id]} and {size}")
    if not sizes:
        raise BadManifest("a torrent needs at least one chunk")
    entries = []
    for chunk_id in sorted(sizes):
        relpath = PurePosixPath("chunks", ids.chunk_relpath(chunk_id))
        local = Path(directory, relpath)
        try:
            actual = local.stat().st_size
        except OSError as error:
            raise BadManifest(f"cannot hash chunk {chunk_id}: {error.strerror or error}") from None
        if actual != sizes[chunk_id]:
            raise BadManifest(f"chunk file {local} has {actual} bytes, the manifest says {sizes[chunk_id]}")
        entries.append(lt.create_file_entry(str(relpath), sizes[chunk_id]))
    creator = lt.create_torrent(entries, piece_length_for(max(sizes.values())), lt.create_torrent.v2_only)
    try:
        lt.set_piece_hashes(creator, str(directory))
    except RuntimeError as error:
        raise BadManifest(f"cannot hash the chunks under {directory}: {error}") from None
    torrent = bdecode(lt.bencode(creator.generate()))
    info = torrent[b"info"] if isinstance(torrent, dict) else None
    if not isinstance(info, dict):
        raise BadManifest("libtorrent produced a torrent without an info dict")
    return info


def pieces_of_info(info: dict[bytes, object], sizes: dict[str, int]) -> tuple[str, ...]:
    """Check ``info`` against the distinct chunks; return the chunk id of each piece, in piece order."""
    if not isinstance(info, dict) or set(info) != _INFO_KEYS:
        raise BadManifest(f"info must hold exactly {sorted(_INFO_KEYS)}")
    if info[b"meta version"] != 2 or info[b"name"] != TORRENT_NAME:
        raise BadManifest("info must describe a v2 torrent named 'chunks'")
    expected = piece_length_for(max(sizes.values()))
    if info[b"piece length"] != expected:
        raise BadManifest(f"info piece length {info[b'piece length']!r} is not {expected}")
    pieces: list[str] = []
    for ab, level1 in _sorted_dir(info[b"file tree"], "file tree"):
        for cd, level2 in _sorted_dir(level1, ab):
            for name, node in _sorted_dir(level2, f"{ab}/{cd}"):
                where = f"info file tree {ab}/{cd}/{name[:70]}"
                if not ids.is_chunk_id(name) or name[0:2] != ab or name[2:4] != cd:
                    raise BadManifest(f"{where}: not a chunk path")
                leaf = node.get(b"") if isinstance(node, dict) and len(node) == 1 else None
                if not isinstance(leaf, dict) or set(leaf) != {b"length", b"pieces root"}:
                    raise BadManifest(f"{where}: want one file with 'length' and 'pieces root'")
                root = leaf[b"pieces root"]
                if not isinstance(root, bytes) or len(root) != 32:
                    raise BadManifest(f"{where}: 'pieces root' must be 32 bytes")
                if name not in sizes:
                    raise BadManifest(f"{where}: not a chunk of any file")
                if leaf[b"length"] != sizes[name]:
                    raise BadManifest(f"{where}: length {leaf[b'length']!r} but the chunk has {sizes[name]} bytes")
                pieces.append(name)
    if len(pieces) != len(sizes):
        raise BadManifest(f"info has {len(pieces)} pieces for {len(sizes)} distinct chunks")
    return tuple(pieces)


def _sorted_dir(node: object, where: str) -> list[tuple[str, object]]:
    if not isinstance(node, dict) or not node:
        raise BadManifest(f"info {where}: want a non-empty directory")
    try:  # the leaves check the names: a chunk id below its own ab/cd
        return [(key.decode("ascii"), node[key]) for key in sorted(node)]
    except (AttributeError, TypeError, UnicodeDecodeError):
        raise BadManifest(f"info {where}: entries must be ASCII byte strings") from None
