"""The BitTorrent v2 torrent of an image: one file per distinct chunk, one chunk per piece.

The torrent is named ``chunks``; its files are ``chunks/<ab>/<cd>/<id>`` (the cache layout, so a libtorrent
session whose save path is a cache directory reads and writes the cache's own files), and the piece length is the
smallest power of two ≥ the largest chunk, so piece *i* is exactly one chunk. Pieces follow the sorted file tree
(libtorrent's order). Computed here from the chunk bytes as BEP 52 defines it (deterministic: same chunks → same
infohash; ``tests/test_torrentinfo.py`` proves it byte for byte against libtorrent) and checked against a
manifest's chunks when one is decoded.

BEP 52 in the three lines we need: a file's ``pieces root`` is the root of a binary SHA-256 merkle tree over its
16 KiB blocks (the last one may be short), with zero hashes (32 zero bytes) as leaves up to the next power of two;
a file no larger than a piece needs no ``piece layers`` entry, and every chunk here is no larger than a piece.

Must not know: manifests' other fields, networking, the cache, libtorrent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from .. import ids
from ..errors import BadManifest
from .bencoding import bdecode

TORRENT_NAME = b"chunks"
BLOCK = 16 * 1024
"""BEP 52's leaf: a 16 KiB block."""
MIN_PIECE_LENGTH = BLOCK
_ZERO_HASH = bytes(32)
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
    tree: dict[bytes, dict[bytes, dict[bytes, object]]] = {}
    for chunk_id in sorted(sizes):
        local = Path(directory, "chunks", ids.chunk_relpath(chunk_id))
        try:
            actual = local.stat().st_size
            if actual == sizes[chunk_id]:
                leaves, actual = _block_hashes(local)
        except OSError as error:
            raise BadManifest(f"cannot hash chunk {chunk_id}: {error.strerror or error}") from None
        if actual != sizes[chunk_id]:
            raise BadManifest(f"chunk file {local} has {actual} bytes, the manifest says {sizes[chunk_id]}")
        level2 = tree.setdefault(chunk_id[0:2].encode(), {}).setdefault(chunk_id[2:4].encode(), {})
        level2[chunk_id.encode()] = {b"": {b"length": actual, b"pieces root": merkle_root(leaves)}}
    return {
        b"file tree": tree,
        b"meta version": 2,
        b"name": TORRENT_NAME,
        b"piece length": piece_length_for(max(sizes.values())),
    }


def pieces_root(data: bytes | memoryview) -> bytes:
    """BEP 52's ``pieces root`` of a file holding ``data`` (not empty)."""
    view = memoryview(data)
    return merkle_root([hashlib.sha256(view[i : i + BLOCK]).digest() for i in range(0, len(view), BLOCK)])


def _block_hashes(path: Path) -> tuple[list[bytes], int]:
    """The SHA-256 of each 16 KiB block of the file at ``path`` and its size, read block by block."""
    leaves: list[bytes] = []
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    size = 0
    with open(path, "rb", buffering=0) as file:
        while n := file.readinto(buffer):
            while n < BLOCK and (more := file.readinto(view[n:])):  # a short read is not the end of the file
                n += more
            leaves.append(hashlib.sha256(view[:n]).digest())
            size += n
    return leaves, size


def merkle_root(leaves: list[bytes]) -> bytes:
    """The root of the binary SHA-256 tree over ``leaves`` (at least one), padded with zero hashes to a power of
    two."""
    if not leaves:
        raise BadManifest("a merkle tree needs at least one leaf")
    layer = list(leaves)
    layer += [_ZERO_HASH] * ((1 << (len(layer) - 1).bit_length()) - len(layer))
    while len(layer) > 1:
        layer = [hashlib.sha256(layer[i] + layer[i + 1]).digest() for i in range(0, len(layer), 2)]
    return layer[0]


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
    same = {chunk_id: chunk_id for chunk_id in sizes}
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
                pieces.append(same[name])  # the files' own string: one copy of each id in memory
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


class EncodedInfo(Mapping[bytes, object]):
    """A torrent info dict kept as its canonical bencoding, decoded only when one of its keys is read."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def decoded(self) -> dict[bytes, object]:
        tree = bdecode(self.raw, max_size=len(self.raw))
        assert isinstance(tree, dict)
        return tree

    def __getitem__(self, key: bytes) -> object:
        return self.decoded()[key]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.decoded())

    def __len__(self) -> int:
        return len(self.decoded())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EncodedInfo):
            return self.raw == other.raw
        return isinstance(other, Mapping) and self.decoded() == dict(other)

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"EncodedInfo({len(self.raw)} bytes)"
