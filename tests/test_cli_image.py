"""cli/image.py: an image's files from its chunks in any order, and the paths it refuses to write."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from p2pchunks.cli.image import ImageWriter, safe_target
from p2pchunks.errors import BadManifest
from p2pchunks.formats.manifest import FileEntry, Manifest
from p2pchunks.hub.publish import publish
from p2pchunks.ids import chunk_relpath

CHUNK = 16 * 1024


def published(tmp: Path) -> tuple[Manifest, Path, Path]:
    rng = random.Random(9)
    src = tmp / "src"
    (src / "d").mkdir(parents=True)
    block = rng.randbytes(CHUNK)
    (src / "d" / "a").write_bytes(block + rng.randbytes(CHUNK + 3) + block)
    (src / "b").write_bytes(block)
    os.symlink("d/a", src / "s")
    result = publish(src, tmp / "hub", name="x", version="1", chunk_size=CHUNK)
    return result.manifest, src, tmp / "hub"


def chunk(hub: Path, chunk_id: str) -> bytes:
    return (hub / "chunks" / chunk_relpath(chunk_id)).read_bytes()


def test_chunks_in_any_order_make_the_files(tmp_path: Path) -> None:
    manifest, src, hub = published(tmp_path)
    out = tmp_path / "out"
    writer = ImageWriter(manifest, out)
    writer.prepare()
    assert sorted(p.name for p in out.rglob(".*.part")) == [".a.part", ".b.part"]
    order = list(reversed(manifest.chunk_ids))
    written = sum(writer.write(chunk_id, chunk(hub, chunk_id)) for chunk_id in order)
    assert written == manifest.image_bytes  # a repeated chunk is written at each of its places
    assert writer.write(order[0], chunk(hub, order[0])) == 0  # once is enough
    assert writer.pending == []
    writer.finish()
    for path in ("d/a", "b"):
        assert (out / path).read_bytes() == (src / path).read_bytes()
    assert os.readlink(out / "s") == "d/a"
    assert list(out.rglob("*.part")) == []


def test_nothing_is_renamed_before_every_chunk_is_written(tmp_path: Path) -> None:
    manifest, _, hub = published(tmp_path)
    writer = ImageWriter(manifest, tmp_path / "out")
    writer.prepare()
    first = manifest.chunk_ids[0]
    writer.write(first, chunk(hub, first))
    with pytest.raises(BadManifest, match="never written"):
        writer.finish()
    with pytest.raises(BadManifest, match="has 3 bytes"):
        writer.write(manifest.chunk_ids[1], b"abc")
    assert manifest.chunk_ids[1] in writer.pending  # a refused chunk is still wanted
    writer.abort()
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*")) == ["d"]


@pytest.mark.parametrize("path", ["../evil", "/etc/evil", "d/../../evil", ""])
def test_paths_that_leave_the_output_are_refused(tmp_path: Path, path: str) -> None:
    # A manifest refuses such paths already (formats.manifest.check_path); the writer does not rely on it.
    manifest, _, _ = published(tmp_path)
    files = (*manifest.files, FileEntry(path, 0, 0o644))
    with pytest.raises(BadManifest):
        Manifest(manifest.name, manifest.version, manifest.chunk_size, files, manifest.hot, manifest.info, {})
    with pytest.raises(BadManifest, match="unsafe path"):
        safe_target(tmp_path, path)
    assert safe_target(tmp_path, "d/e") == tmp_path / "d" / "e"


def test_a_directory_that_resolves_outside_is_refused(tmp_path: Path) -> None:
    manifest, _, _ = published(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", out / "d")  # already in the output directory, pointing out of it
    with pytest.raises(BadManifest, match="leads outside"):
        ImageWriter(manifest, out).prepare()
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert list(out.rglob("*.part")) == []
