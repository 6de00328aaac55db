"""torrentinfo against libtorrent: our pure-Python BEP 52 info dict is libtorrent's, byte for byte.

libtorrent is the oracle here (as the stdlib's HTTP is h11's): for random sets of chunks, with sizes that are
tiny, exactly one block, a block and a byte, whole multiples of the block and odd sizes, the info dict libtorrent's
``create_torrent`` makes from the same files bencodes to the same bytes, so the infohash is the same.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import libtorrent as lt
import pytest

from p2pchunks import ids
from p2pchunks.errors import BadManifest
from p2pchunks.formats.bencoding import bdecode, bencode
from p2pchunks.formats.torrentinfo import BLOCK, build_torrent_info, merkle_root, piece_length_for, pieces_root

EDGE_SIZES = (1, 2, 100, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 3 * BLOCK + 7, 4 * BLOCK, 5 * BLOCK - 1, 131072)


def store(root: Path, data: bytes, digest_size: int = 32) -> tuple[str, int]:
    chunk_id = ids.chunk_id_of(data, digest_size)
    path = root / "chunks" / ids.chunk_relpath(chunk_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return chunk_id, len(data)


def libtorrent_info(root: Path, chunks: list[tuple[str, int]]) -> Any:
    """What the code did before: libtorrent builds and hashes the torrent of the chunk files."""
    distinct = dict(chunks)
    entries = [lt.create_file_entry(f"chunks/{ids.chunk_relpath(c)}", distinct[c]) for c in sorted(distinct)]
    creator = lt.create_torrent(entries, piece_length_for(max(distinct.values())), lt.create_torrent.v2_only)
    lt.set_piece_hashes(creator, str(root))
    torrent = bdecode(lt.bencode(creator.generate()))
    assert isinstance(torrent, dict)
    assert b"piece layers" not in torrent or not torrent[b"piece layers"]  # every file fits in one piece
    return torrent[b"info"]


@pytest.mark.parametrize("seed", range(24))
def test_info_dict_is_libtorrents_byte_for_byte(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    count = 1 if seed == 0 else rng.randint(2, 12)
    chunks = []
    for _ in range(count):
        size = rng.choice(EDGE_SIZES) if rng.random() < 0.6 else rng.randint(1, 300_000)
        chunks.append(store(tmp_path, rng.randbytes(size), digest_size=rng.choice((16, 32))))
    ours = build_torrent_info(tmp_path, chunks)
    theirs = libtorrent_info(tmp_path, chunks)
    assert bencode(ours) == bencode(theirs)
    infohash = lt.torrent_info(lt.bencode({b"info": theirs})).info_hashes().v2
    assert hashlib.sha256(bencode(ours)).hexdigest() == str(infohash)


@pytest.mark.parametrize("size", EDGE_SIZES)
def test_one_chunk_of_each_edge_size(tmp_path: Path, size: int) -> None:
    chunk = store(tmp_path, random.Random(size).randbytes(size))
    assert bencode(build_torrent_info(tmp_path, [chunk])) == bencode(libtorrent_info(tmp_path, [chunk]))


def test_pieces_root_of_bytes_and_of_files_agree(tmp_path: Path) -> None:
    data = random.Random(5).randbytes(3 * BLOCK + 11)
    chunk_id, size = store(tmp_path, data)
    info = build_torrent_info(tmp_path, [(chunk_id, size)])
    leaf: Any = info[b"file tree"]
    leaf = leaf[chunk_id[0:2].encode()][chunk_id[2:4].encode()][chunk_id.encode()][b""]
    assert leaf[b"pieces root"] == pieces_root(data)
    assert pieces_root(b"x") == hashlib.sha256(b"x").digest()  # one block: the root is its hash


def test_merkle_root_pads_with_zero_hashes() -> None:
    a, b, c = (hashlib.sha256(bytes([n])).digest() for n in range(3))
    zero = bytes(32)
    left, right = hashlib.sha256(a + b).digest(), hashlib.sha256(c + zero).digest()
    assert merkle_root([a, b, c]) == hashlib.sha256(left + right).digest()
    assert merkle_root([a]) == a
    with pytest.raises(BadManifest):
        merkle_root([])
