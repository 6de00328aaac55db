"""Coverage-guided fuzzing (atheris/libFuzzer) of the parsers that take bytes from strangers.

Run by ``test_faults_fuzz.py`` in a subprocess (libFuzzer owns the process and exits at the end):
``python tests/fuzz_parsers.py CORPUS_DIR -runs=N -max_len=M``. The first byte of an input picks the target, the
rest is the document. A target may refuse its input only with our own error (``P2PChunksError``, which the API
turns into a 4xx); any other exception is a finding, and libFuzzer saves the input as ``crash-*``.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from p2pchunks.errors import P2PChunksError
    from p2pchunks.formats.bencoding import bdecode
    from p2pchunks.formats.manifest import Manifest
    from p2pchunks.formats.seedlist import parse_bootstrap, parse_official
    from p2pchunks.ids import validate_chunk_id

TARGETS = (
    bdecode,
    Manifest.decode,
    parse_official,
    parse_bootstrap,
    lambda data: validate_chunk_id(data.decode("utf-8", "surrogateescape")),
)


def one_input(data: bytes) -> None:
    if not data:
        return
    target = TARGETS[data[0] % len(TARGETS)]
    with contextlib.suppress(P2PChunksError):
        target(data[1:])


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
