"""Hostile documents, coverage-guided: atheris drives the byte parsers (bencode, manifests, signed lists, chunk
ids) from a corpus of valid documents for a bounded number of runs; any exception other than our own errors is
a failure, reported with the input libFuzzer saved."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from .swarmkit import make_image

HARNESS = Path(__file__).with_name("fuzz_parsers.py")
RUNS = 100_000

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None, reason="atheris is not installed (x86_64 Linux wheels only)"
)


def test_parsers_survive_coverage_guided_fuzzing(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    image = make_image(tmp_path, mib=0.25, seed=21)
    seeds = {
        "bencode": b"\x00" + b"d1:ai1e1:bl3:xyzee",
        "manifest": b"\x01" + image.path.read_bytes(),
        "official": b"\x02" + b'version = 3\n[[image]]\nname = "a"\nmanifest = "a"\npriority = 2\n',
        "bootstrap": b"\x03" + b'version = 3\n[[seed]]\nname = "s"\naddress = "127.0.0.9:6881"\n',
        "id": b"\x04" + b"ab" * 32,
    }
    for name, data in seeds.items():
        (corpus / name).write_bytes(data)
    run = subprocess.run(
        [sys.executable, str(HARNESS), str(corpus), f"-runs={RUNS}", "-max_len=65536", "-timeout=10"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    crashes = sorted(p.name for p in tmp_path.glob("crash-*")) + sorted(p.name for p in tmp_path.glob("oom-*"))
    assert not crashes, (crashes, run.stderr[-3000:])
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"Done {RUNS} runs" in run.stderr, run.stderr[-1000:]
