"""manifest: building (with libtorrent), the document, its validation, ids, piece order and signatures."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libtorrent as lt
import nacl.signing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pchunks import ids
from p2pchunks.errors import BadManifest, BadSignature, ChunkNotFound
from p2pchunks.formats.bencoding import bdecode, bencode
from p2pchunks.formats.manifest import (
    ChunkRef,
    FileEntry,
    Manifest,
    build_manifest,
    build_torrent_info,
    piece_length_for,
)
from p2pchunks.formats.signing import TrustedKeys


def store(root: Path, data: bytes, digest_size: int = 32) -> ChunkRef:
    """Write ``data`` as a chunk under ``root/chunks/ab/cd/<id>``."""
    chunk_id = ids.chunk_id_of(data, digest_size)
    path = root / "chunks" / ids.chunk_relpath(chunk_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return ChunkRef(chunk_id, len(data))


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, list[FileEntry]]:
    """Three files and a symlink; ``b/dup`` repeats a chunk of ``a``; one chunk has a 128-bit id."""
    rng = random.Random(7)
    a = [store(tmp_path, rng.randbytes(n)) for n in (40_000, 40_000, 123)]
    small = store(tmp_path, rng.randbytes(5000), digest_size=16)
    files = [
        FileEntry("a", sum(c.size for c in a), 0o644, tuple(a)),
        FileEntry("b/dup", a[1].size + small.size, 0o600, (a[1], small)),
        FileEntry("b/empty", 0, 0o644),
        FileEntry("link", 0, 0o777, symlink="a"),
    ]
    return tmp_path, files


def make(image: tuple[Path, list[FileEntry]], **kwargs: Any) -> Manifest:
    root, files = image
    hot = kwargs.pop("hot", (files[1].chunks[1].id, files[0].chunks[0].id))
    return build_manifest("img", "1.0", files, directory=root, chunk_size=40_000, hot=hot, **kwargs)


def test_build_manifest_derived_values(image: tuple[Path, list[FileEntry]]) -> None:
    m = make(image)
    _, files = image
    a, dup = files[0].chunks, files[1].chunks
    assert m.chunk_ids == (dup[1].id, a[0].id, a[1].id, a[2].id)  # hot order first, then file order, distinct
    assert m.image_bytes == 80_123 + 45_000
    assert m.unique_bytes == 80_123 + 5000
    assert m.chunk_size_of(dup[1].id) == 5000
    assert sorted(m.piece_ids) == sorted(m.chunk_ids)
    assert m.piece_ids == tuple(sorted(m.chunk_ids))
    assert [m.piece_index(chunk_id) for chunk_id in m.piece_ids] == [0, 1, 2, 3]
    assert m.info is not None
    assert m.info[b"piece length"] == 65536
    with pytest.raises(ChunkNotFound):
        m.piece_index("00" * 32)
    with pytest.raises(ChunkNotFound):
        m.chunk_size_of("00" * 32)


def test_piece_order_and_infohash_agree_with_libtorrent(image: tuple[Path, list[FileEntry]]) -> None:
    m = make(image)
    assert m.info is not None
    torrent: Any = {b"info": dict(m.info)}  # libtorrent encodes it on its own, from the decoded dict
    ti = lt.torrent_info(lt.bencode(torrent))
    layout = ti.layout()
    assert ti.num_pieces() == len(m.piece_ids)
    for piece, chunk_id in enumerate(m.piece_ids):
        index = layout.file_index_at_piece(piece)
        assert layout.file_path(index) == f"chunks/{ids.chunk_relpath(chunk_id)}"
        assert layout.file_size(index) == m.chunk_size_of(chunk_id)
    assert str(ti.info_hashes().v2) == m.infohash


def merkle_root(data: bytes) -> bytes:
    """BEP 52 pieces root, written from the spec: SHA-256 of 16 KiB blocks, zero leaves up to a power of two."""
    layer = [hashlib.sha256(data[i : i + 16384]).digest() for i in range(0, len(data), 16384)]
    while len(layer) & (len(layer) - 1):
        layer.append(bytes(32))
    while len(layer) > 1:
        layer = [hashlib.sha256(layer[i] + layer[i + 1]).digest() for i in range(0, len(layer), 2)]
    return layer[0]


def test_pieces_roots_match_the_stored_chunks(image: tuple[Path, list[FileEntry]]) -> None:
    m = make(image)
    assert m.info is not None
    tree: Any = m.info[b"file tree"]
    for chunk_id in m.piece_ids:
        leaf = tree[chunk_id[0:2].encode()][chunk_id[2:4].encode()][chunk_id.encode()][b""]
        stored = (image[0] / "chunks" / ids.chunk_relpath(chunk_id)).read_bytes()
        assert leaf[b"pieces root"] == merkle_root(stored)


@pytest.mark.parametrize(
    ("largest", "piece"), [(1, 16384), (16384, 16384), (16385, 32768), (65536, 65536), (65537, 131072)]
)
def test_piece_length_for(largest: int, piece: int) -> None:
    assert piece_length_for(largest) == piece


def test_deterministic(image: tuple[Path, list[FileEntry]]) -> None:
    root, files = image
    first, second = make(image), make(image)
    assert first.manifest_id == second.manifest_id
    assert first.infohash == second.infohash
    assert first.encode() == second.encode()
    chunks = [(c.id, c.size) for f in files for c in f.chunks]
    shuffled = chunks[:]
    random.Random(3).shuffle(shuffled)
    assert build_torrent_info(root, shuffled) == build_torrent_info(root, reversed(chunks)) == first.info


def test_id_changes_with_content(image: tuple[Path, list[FileEntry]]) -> None:
    base = make(image)
    assert make(image, hot=()).manifest_id != base.manifest_id
    assert make(image, extra={"hub": "http://hub"}).manifest_id != base.manifest_id


def test_build_torrent_info_refuses_missing_or_wrong_chunks(tmp_path: Path) -> None:
    ref = store(tmp_path, b"x" * 100)
    with pytest.raises(BadManifest, match="at least one chunk"):
        build_torrent_info(tmp_path, [])
    with pytest.raises(BadManifest, match="cannot hash"):
        build_torrent_info(tmp_path, [("ab" * 32, 100)])
    with pytest.raises(BadManifest, match="has 100 bytes"):
        build_torrent_info(tmp_path, [(ref.id, 99)])
    with pytest.raises(BadManifest, match="sizes 100 and 99"):
        build_torrent_info(tmp_path, [(ref.id, 100), (ref.id, 99)])


def test_encode_decode_round_trip(image: tuple[Path, list[FileEntry]]) -> None:
    m = make(image, extra={"zos": {"key": b"\x01" * 16}, "hub": "zdb://hub:9900"})
    data = m.encode()
    back = Manifest.decode(data)
    assert back == m
    assert back.encode() == data
    assert back.manifest_id == m.manifest_id
    assert back.extra == {b"hub": b"zdb://hub:9900", b"zos": {b"key": b"\x01" * 16}}
    assert back.files[3].symlink == "a"
    assert [f.path for f in back.files] == ["a", "b/dup", "b/empty", "link"]
    assert len({m, back}) == 1


def test_keyed_chunks_round_trip(tmp_path: Path) -> None:
    ref = store(tmp_path, b"compressed and encrypted")
    keyed = ChunkRef(ref.id, ref.size, b"k" * 16)
    # With keys, stored chunk sizes need not add up to the file size (rfs blocks are compressed).
    m = build_manifest("rfs", "1", [FileEntry("f", 4096, 0o644, (keyed,))], directory=tmp_path, chunk_size=4096)
    back = Manifest.decode(m.encode())
    assert back.files[0].chunks == (keyed,)
    assert bdecode(m.encode())[b"files"][0][b"chunks"] == [[bytes.fromhex(ref.id), ref.size, b"k" * 16]]  # type: ignore[index]


def test_manifest_without_chunks(tmp_path: Path) -> None:
    m = build_manifest("empty", "1", [FileEntry("e", 0, 0o644)], directory=tmp_path, chunk_size=1024)
    assert (m.info, m.infohash, m.piece_ids, m.chunk_ids) == (None, None, (), ())
    assert b"info" not in bdecode(m.encode())  # type: ignore[operator]
    assert Manifest.decode(m.encode()) == m


def test_signed_manifest(image: tuple[Path, list[FileEntry]]) -> None:
    key = nacl.signing.SigningKey(bytes(range(32)))
    trusted = TrustedKeys([bytes(key.verify_key)])
    m = make(image)
    signed = m.signed(key)
    assert signed.manifest_id == m.manifest_id  # the signature is not part of the id
    signed.verify(trusted)
    back = Manifest.decode(signed.encode())
    back.verify(trusted)
    assert back.signature == signed.signature
    with pytest.raises(BadSignature, match="not signed"):
        m.verify(trusted)
    with pytest.raises(BadSignature, match="untrusted"):
        back.verify(TrustedKeys())
    tampered = signed.encode().replace(b"7:version3:1.0", b"7:version3:1.1")
    assert tampered != signed.encode()
    with pytest.raises(BadSignature, match="does not match"):
        Manifest.decode(tampered).verify(trusted)
    assert signed.signature is not None
    forged = signed.encode().replace(signed.signature.sig, bytes(64))
    with pytest.raises(BadSignature, match="does not match"):
        Manifest.decode(forged).verify(trusted)


# --- invalid documents ----------------------------------------------------------------------------------------

Doc = dict[bytes, Any]


def _set(path: tuple[Any, ...], value: Any) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        node: Any = doc
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value

    return change


def _drop(*path: Any) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        node: Any = doc
        for step in path[:-1]:
            node = node[step]
        del node[path[-1]]

    return change


def _tree(doc: Doc) -> Doc:
    tree: Doc = doc[b"info"][b"file tree"]
    return tree


def _first_leaf(doc: Doc) -> Doc:
    ab = min(_tree(doc))
    cd = min(_tree(doc)[ab])
    leaf: Doc = next(iter(_tree(doc)[ab][cd].values()))[b""]
    return leaf


def _move_first_leaf(doc: Doc) -> None:
    ab = min(_tree(doc))
    _tree(doc)[b"ff" if ab != b"ff" else b"fe"] = _tree(doc).pop(ab)


def _add_leaf(doc: Doc) -> None:
    _tree(doc)[b"00"] = {b"00": {b"00" * 32: {b"": {b"length": 5, b"pieces root": b"r" * 32}}}}


def _conflict(doc: Doc) -> None:
    doc[b"files"].append({b"path": b"a/inside", b"size": 0, b"mode": 0o644, b"chunks": []})


INVALID: list[tuple[str, Callable[[Doc], None], str]] = [
    ("unknown key", _set((b"zzz",), 1), "unknown keys"),
    ("missing files", _drop(b"files"), "missing keys"),
    ("format 2", _set((b"p2pchunks",), 2), "unsupported format version"),
    ("name slash", _set((b"name",), b"a/b"), "bad manifest name"),
    ("name empty", _set((b"name",), b""), "bad manifest name"),
    ("name long", _set((b"name",), b"n" * 129), "bad manifest name"),
    ("name int", _set((b"name",), 5), "name: want a string"),
    ("version empty", _set((b"version",), b""), "version must be"),
    ("version control", _set((b"version",), b"1\n"), "unprintable"),
    ("chunk_size 0", _set((b"chunk_size",), 0), "chunk_size"),
    ("chunk_size bytes", _set((b"chunk_size",), b"1"), "chunk_size: want an integer"),
    ("files dict", _set((b"files",), {}), "files: want a list"),
    ("path dotdot", _set((b"files", 0, b"path"), b"../a"), "unsafe file path"),
    ("path absolute", _set((b"files", 0, b"path"), b"/a"), "unsafe file path"),
    ("path empty part", _set((b"files", 0, b"path"), b"x//a"), "unsafe file path"),
    ("path dot", _set((b"files", 0, b"path"), b"./a"), "unsafe file path"),
    ("path empty", _set((b"files", 0, b"path"), b""), "bad file path"),
    ("path utf8", _set((b"files", 0, b"path"), b"\xff"), "not valid UTF-8"),
    ("path duplicate", _set((b"files", 2, b"path"), b"a"), "duplicate file path"),
    ("path under a file", _conflict, "lies under 'a'"),
    ("path under a symlink", _set((b"files", 2, b"path"), b"link/x"), "lies under 'link'"),
    ("chunks and symlink", _set((b"files", 0, b"symlink"), b"x"), "exactly one of"),
    ("neither", _drop(b"files", 2, b"chunks"), "exactly one of"),
    ("file unknown key", _set((b"files", 0, b"owner"), 0), "want a dict"),
    ("symlink empty", _set((b"files", 3, b"symlink"), b""), "bad symlink target"),
    ("mode huge", _set((b"files", 0, b"mode"), 1 << 20), "bad mode"),
    ("size negative", _set((b"files", 2, b"size"), -1), "non-negative"),
    ("sizes do not add up", _set((b"files", 0, b"size"), 1), "add up to"),
    ("chunk id 20 bytes", _set((b"files", 0, b"chunks", 0, 0), b"x" * 20), "16 or 32 raw bytes"),
    ("chunk size 0", _set((b"files", 0, b"chunks", 2, 1), 0), "bad size"),
    ("chunk 4 items", _set((b"files", 0, b"chunks", 0), [b"x" * 32, 1, b"k", 1]), "[id, size]"),
    ("chunk key empty", _set((b"files", 0, b"chunks", 0), [b"x" * 32, 1, b""]), "key must be non-empty"),
    ("same id two sizes", _set((b"files", 1, b"chunks", 0, 1), 39_999), "appears with sizes"),
    ("hot unknown", _set((b"hot",), [b"\x01" * 32]), "not a chunk of any file"),
    ("hot twice", lambda d: d[b"hot"].append(d[b"hot"][0]), "hot lists a chunk twice"),
    ("hot bad id", _set((b"hot",), [b"x"]), "16 or 32 raw bytes"),
    ("extra empty", _set((b"extra",), {}), "extra must be a non-empty dict"),
    ("extra list", _set((b"extra",), [1]), "extra must be a non-empty dict"),
    ("info missing", _drop(b"info"), "no torrent info"),
    ("info not dict", _set((b"info",), b"x"), "info must be a dict"),
    ("info extra key", _set((b"info", b"private"), 1), "info must hold exactly"),
    ("info v1", _set((b"info", b"meta version"), 1), "v2 torrent"),
    ("info name", _set((b"info", b"name"), b"img"), "v2 torrent"),
    ("piece length", _set((b"info", b"piece length"), 1 << 20), "piece length"),
    ("leaf length", lambda d: _first_leaf(d).update({b"length": 1}), "length 1 but the chunk has"),
    ("leaf root", lambda d: _first_leaf(d).update({b"pieces root": b"r"}), "32 bytes"),
    ("leaf attr", lambda d: _first_leaf(d).update({b"attr": b"p"}), "want one file"),
    ("leaf misplaced", _move_first_leaf, "not a chunk path"),
    ("leaf extra", _add_leaf, "not a chunk of any file"),
    ("leaf missing", lambda d: _tree(d).pop(max(_tree(d))), "3 pieces for 4 distinct chunks"),
    ("signature short", _set((b"signature",), {b"key": b"k", b"sig": b"s" * 64}), "malformed signature"),
]


@pytest.mark.parametrize(("change", "words"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_documents(image: tuple[Path, list[FileEntry]], change: Callable[[Doc], None], words: str) -> None:
    doc = bdecode(make(image, extra={"k": 1}).encode())
    assert isinstance(doc, dict)
    Manifest.decode(bencode(doc))  # the unchanged document is valid
    change(doc)
    with pytest.raises(BadManifest) as info:
        Manifest.decode(bencode(doc))
    assert words in str(info.value)


def test_info_without_chunks_is_refused(image: tuple[Path, list[FileEntry]]) -> None:
    info = make(image).info
    with pytest.raises(BadManifest, match="torrent info but no chunks"):
        Manifest("x", "1", 1024, (FileEntry("e", 0, 0o644),), (), info)


def test_decode_limits_and_non_canonical_input(image: tuple[Path, list[FileEntry]]) -> None:
    data = make(image).encode()
    with pytest.raises(BadManifest, match="larger than the limit"):
        Manifest.decode(data, max_size=len(data) - 1)
    with pytest.raises(BadManifest, match="more than 10 values"):
        Manifest.decode(data, max_items=10)
    with pytest.raises(BadManifest, match="deeper than 3"):
        Manifest.decode(data, max_depth=3)
    with pytest.raises(BadManifest, match="top level must be a dict"):
        Manifest.decode(b"le")
    with pytest.raises(BadManifest, match="trailing data"):
        Manifest.decode(data + b"0:")


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_manifests_raise_only_bad_manifest(image: tuple[Path, list[FileEntry]], data: st.DataObject) -> None:
    doc = make(image, extra={"k": [1, b"x"]}).signed(nacl.signing.SigningKey(bytes(32))).encode()
    with pytest.raises(BadManifest):
        Manifest.decode(doc[: data.draw(st.integers(0, len(doc) - 1))])
    index = data.draw(st.integers(0, len(doc) - 1))
    damaged = doc[:index] + bytes([data.draw(st.integers(0, 255))]) + doc[index + 1 :]
    try:
        manifest = Manifest.decode(damaged)
    except BadManifest:
        return
    assert manifest.encode() == damaged  # whatever is accepted is canonical and loses nothing
