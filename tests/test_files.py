"""files: the one atomic write, and ``replacing`` for files something else builds at a path."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest

from p2pchunks.files import PARTIAL_SUFFIX, atomic_write, fsync_dir, replacing, write_temp


def test_atomic_write_replaces_whole_with_the_mode_asked_for(tmp_path: Path) -> None:
    target = tmp_path / "doc"
    target.write_bytes(b"old")
    atomic_write(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["doc"]


def test_a_failed_rename_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "doc"
    target.write_bytes(b"old")

    def refuse(src: Path, dst: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"new", replace=refuse)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["doc"]


def test_replacing_renames_what_was_built_at_the_temp_path(tmp_path: Path) -> None:
    source = tmp_path / "db"
    source.write_bytes(b"x" * 1000)
    out = tmp_path / "image.flist"
    with replacing(out) as partial, tarfile.open(partial, "w:gz") as tar:
        assert partial.name.startswith(".image.flist.")
        assert partial.name.endswith(PARTIAL_SUFFIX)
        tar.add(source, arcname="./db")
    with tarfile.open(out) as tar:
        assert tar.getnames() == ["./db"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["db", "image.flist"]


def test_replacing_removes_the_temp_file_when_the_build_fails(tmp_path: Path) -> None:
    out = tmp_path / "image.flist"
    out.write_bytes(b"previous")

    def build() -> None:
        with replacing(out, fsync=False) as partial:
            partial.write_bytes(b"half")
            raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        build()
    assert out.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["image.flist"]


def test_a_failing_sync_leaves_no_temp_file(tmp_path: Path) -> None:
    calls: list[int] = []

    def failing(fd: int) -> None:
        calls.append(fd)
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError, match="Input/output"):
        write_temp(tmp_path, b"data", prefix=".x.", sync=failing)
    assert calls
    assert os.listdir(tmp_path) == []
    with pytest.raises(OSError, match="Input/output"):
        fsync_dir(tmp_path, failing)
