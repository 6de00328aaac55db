"""Chunk ids: validation, hashing and the on-disk layout.

A chunk id is the lowercase hex of a BLAKE2b digest of the stored bytes: 64 hex digits (BLAKE2b-256, the default,
and the block id of rfs 2 ``.fl`` flists) or 32 hex digits (BLAKE2b-128, the block id of rfs 1 ``.flist``).
Because the digest size follows from the id's length, one verifier serves both; other schemes plug in as a
``Verifier``. This module knows nothing of files beyond the relative path of the layout.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import PurePosixPath

from .errors import BadChunkId

Verifier = Callable[[str, bytes], bool]
"""``verifier(chunk_id, data)`` is True when ``data`` are the bytes ``chunk_id`` names."""

_ID_RE = re.compile(r"\A(?:[0-9a-f]{32}|[0-9a-f]{64})\Z")
ID_LENGTHS = (32, 64)


def validate_chunk_id(value: str) -> str:
    """Return ``value`` if it is a well-formed chunk id, else raise :class:`BadChunkId`."""
    if not isinstance(value, str) or _ID_RE.match(value) is None:
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise BadChunkId(f"not a chunk id (want 32 or 64 lowercase hex digits): {shown!r}")
    return value


def is_chunk_id(value: str) -> bool:
    return isinstance(value, str) and _ID_RE.match(value) is not None


def chunk_id_of(data: bytes | memoryview, digest_size: int = 32) -> str:
    """The BLAKE2b id of ``data`` (``digest_size`` 32 → 64 hex digits, 16 → 32)."""
    return hashlib.blake2b(data, digest_size=digest_size).hexdigest()


def blake2b_verifier(chunk_id: str, data: bytes | memoryview) -> bool:
    """Default verifier: BLAKE2b of ``data`` with the digest size implied by the id's length."""
    return hashlib.blake2b(data, digest_size=len(chunk_id) // 2).hexdigest() == chunk_id


default_verifier: Verifier = blake2b_verifier


def chunk_relpath(chunk_id: str) -> PurePosixPath:
    """``ab/cd/abcd…``: the rfs cache layout, also used by the hub and the torrent file paths."""
    validate_chunk_id(chunk_id)
    return PurePosixPath(chunk_id[0:2], chunk_id[2:4], chunk_id)
