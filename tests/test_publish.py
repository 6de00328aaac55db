"""publish: chunking a tree into a hub root, idempotence, hot order, signing, and the CLI parsers."""

from __future__ import annotations

import os
import random
import tracemalloc
from pathlib import Path

import nacl.signing
import pytest

from p2pchunks import ids
from p2pchunks.errors import BadConfig, BadManifest, BadSignature
from p2pchunks.formats.manifest import Manifest
from p2pchunks.formats.signing import TrustedKeys
from p2pchunks.hub.publish import parse_size, publish, read_hot_list

CHUNK = 16 * 1024


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Nested dirs, a symlink, an empty file, sizes on and off the chunk size, and repeated content."""
    rng = random.Random(11)
    src = tmp_path / "src"
    (src / "boot").mkdir(parents=True)
    (src / "usr" / "lib" / "deep").mkdir(parents=True)
    (src / "boot" / "kernel").write_bytes(rng.randbytes(3 * CHUNK + 100))
    (src / "boot" / "initrd").write_bytes(rng.randbytes(2 * CHUNK))
    (src / "usr" / "lib" / "deep" / "lib.so").write_bytes(rng.randbytes(CHUNK - 1))
    (src / "usr" / "copy").write_bytes((src / "boot" / "initrd").read_bytes())  # same chunks as boot/initrd
    (src / "empty").touch()
    (src / "usr" / "lib" / "deep" / "lib.so").chmod(0o755)
    (src / "vmlinuz").symlink_to("boot/kernel")
    (src / "outside").symlink_to(tmp_path)  # a symlink to a directory: recorded, never followed
    return src


def reassemble(manifest: Manifest, hub: Path) -> dict[str, bytes]:
    out = {}
    for entry in manifest.files:
        if entry.symlink is None:
            out[entry.path] = b"".join((hub / "chunks" / ids.chunk_relpath(c.id)).read_bytes() for c in entry.chunks)
    return out


def test_publish_tree(tree: Path, tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    result = publish(tree, hub, name="img", version="2", chunk_size=CHUNK)
    m = result.manifest
    assert [f.path for f in m.files] == [
        "boot/initrd", "boot/kernel", "empty", "outside", "usr/copy", "usr/lib/deep/lib.so", "vmlinuz",
    ]  # fmt: skip
    by_path = {f.path: f for f in m.files}
    assert by_path["vmlinuz"].symlink == "boot/kernel"
    assert by_path["outside"].symlink == str(tmp_path)
    assert by_path["empty"].chunks == ()
    assert by_path["empty"].symlink is None
    assert [c.size for c in by_path["boot/kernel"].chunks] == [CHUNK, CHUNK, CHUNK, 100]
    assert by_path["usr/lib/deep/lib.so"].mode == 0o755
    assert by_path["usr/copy"].chunks == by_path["boot/initrd"].chunks
    sources = {f.path: (tree / f.path).read_bytes() for f in m.files if f.symlink is None}
    assert reassemble(m, hub) == sources
    assert result.chunks_total == len(m.chunk_ids) == 4 + 2 + 1
    assert result.chunks_written == result.chunks_total
    assert result.bytes_read == sum(len(data) for data in sources.values())
    assert result.manifest_path == hub / "manifests" / "img.p2p"
    assert Manifest.decode(result.manifest_path.read_bytes()) == m
    for chunk_id in m.chunk_ids:
        assert ids.chunk_id_of((hub / "chunks" / ids.chunk_relpath(chunk_id)).read_bytes()) == chunk_id
    assert not [p for p in hub.rglob("*") if p.name.startswith(".")]  # no temp files left behind


def test_publish_is_idempotent(tree: Path, tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    first = publish(tree, hub, name="img", chunk_size=CHUNK)
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in hub.rglob("*") if p.is_file()}
    second = publish(tree, hub, name="img", chunk_size=CHUNK)
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in hub.rglob("*") if p.is_file()}
    assert second.chunks_written == 0
    assert second.manifest.manifest_id == first.manifest.manifest_id
    assert second.manifest.infohash == first.manifest.infohash
    assert after == before


def test_damaged_chunk_is_rewritten(tree: Path, tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    m = publish(tree, hub, name="img", chunk_size=CHUNK).manifest
    victim = hub / "chunks" / ids.chunk_relpath(m.chunk_ids[0])
    victim.write_bytes(b"short")
    again = publish(tree, hub, name="img", chunk_size=CHUNK)
    assert again.chunks_written == 1
    assert ids.chunk_id_of(victim.read_bytes()) == m.chunk_ids[0]


def test_publish_single_file(tmp_path: Path) -> None:
    source = tmp_path / "disk.raw"
    source.write_bytes(bytes(range(256)) * 300)
    source.chmod(0o640)
    result = publish(source, tmp_path / "hub", chunk_size=CHUNK)
    m = result.manifest
    assert m.name == "disk.raw"
    assert [(f.path, f.size, f.mode) for f in m.files] == [("disk.raw", 76800, 0o640)]
    assert reassemble(m, tmp_path / "hub") == {"disk.raw": source.read_bytes()}
    assert result.manifest_path.name == "disk.raw.p2p"


def test_hot_paths_order(tree: Path, tmp_path: Path) -> None:
    m = publish(tree, tmp_path / "hub", name="img", chunk_size=CHUNK, hot_paths=["/usr/copy", "./boot/kernel"]).manifest
    by_path = {f.path: f for f in m.files}
    expected = [c.id for c in by_path["usr/copy"].chunks] + [c.id for c in by_path["boot/kernel"].chunks]
    assert list(m.hot) == expected
    assert list(m.chunk_ids[: len(expected)]) == expected
    other = publish(tree, tmp_path / "hub2", name="img", chunk_size=CHUNK, hot_paths=["boot/kernel", "usr/copy"])
    assert other.manifest.hot[0] == by_path["boot/kernel"].chunks[0].id


@pytest.mark.parametrize(
    ("hot", "words"),
    [(["boot/missing"], "'boot/missing' is not a file"), (["vmlinuz"], "is a symlink"), (["a/../b"], "not a valid")],
)
def test_bad_hot_paths(tree: Path, tmp_path: Path, hot: list[str], words: str) -> None:
    with pytest.raises(BadManifest, match=words):
        publish(tree, tmp_path / "hub", name="img", chunk_size=CHUNK, hot_paths=hot)


def test_read_hot_list(tmp_path: Path) -> None:
    path = tmp_path / "hot.txt"
    path.write_text("# boot order\n\nboot/kernel\n  boot/initrd  \n# etc/fstab\netc/a#b\n")
    assert read_hot_list(path) == ["boot/kernel", "boot/initrd", "etc/a#b"]


def test_signed_publish(tree: Path, tmp_path: Path) -> None:
    key = nacl.signing.SigningKey(bytes(range(32)))
    trusted = TrustedKeys([bytes(key.verify_key)])
    result = publish(tree, tmp_path / "hub", name="img", version="1.0", chunk_size=CHUNK, signing_key=key)
    data = result.manifest_path.read_bytes()
    Manifest.decode(data).verify(trusted)
    unsigned = publish(tree, tmp_path / "hub", name="img", version="1.0", chunk_size=CHUNK)
    assert unsigned.manifest.manifest_id == result.manifest.manifest_id
    tampered = data.replace(b"7:version3:1.0", b"7:version3:9.0")
    assert tampered != data
    with pytest.raises(BadSignature):
        Manifest.decode(tampered).verify(trusted)


def test_special_files_are_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_bytes(b"x")
    os.mkfifo(src / "pipe")
    result = publish(src, tmp_path / "hub", name="img", chunk_size=CHUNK)
    assert [f.path for f in result.manifest.files] == ["file"]
    assert result.skipped == ("pipe",)


def test_publish_streams_chunk_by_chunk(tmp_path: Path) -> None:
    source = tmp_path / "big.raw"
    with source.open("wb") as fh:
        for _ in range(64):
            fh.write(os.urandom(256 * 1024))  # 16 MiB
    tracemalloc.start()
    try:
        publish(source, tmp_path / "hub", chunk_size=64 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


def test_publish_refusals(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(BadManifest, match="bad manifest name"):
        publish(tmp_path / "f", tmp_path / "hub", name="no spaces")
    with pytest.raises(BadConfig, match="chunk size"):
        publish(tmp_path / "f", tmp_path / "hub", chunk_size=0)
    with pytest.raises(BadManifest, match="cannot publish"):
        publish(tmp_path / "missing", tmp_path / "hub")


@pytest.mark.parametrize(
    ("text", "size"),
    [("512KiB", 512 * 1024), ("512k", 512 * 1024), ("1M", 2**20), ("1 MiB", 2**20), ("2GiB", 2 << 30),
     ("3G", 3 << 30), ("4096", 4096), ("4096B", 4096), (" 64kib ", 65536), (1000, 1000)],
)  # fmt: skip
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "0KiB", "-1", "1.5M", "12 parsecs", "KiB", "1 TiB"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(BadConfig, match="bad size"):
        parse_size(text)


def test_modes_survive(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for mode in (0o600, 0o644, 0o4755):
        path = src / f"m{mode:o}"
        path.write_bytes(b"data")
        path.chmod(mode)
    m = publish(src, tmp_path / "hub", name="modes", chunk_size=CHUNK).manifest
    assert {f.path: f.mode for f in m.files} == {"m600": 0o600, "m644": 0o644, "m4755": 0o4755}
