"""The chunk codecs of rfs: plain bytes ⇄ the bytes a hub stores, for both flist generations.

Owns the two block encodings and nothing else (pure: bytes in, bytes out; no files, no I/O):

* **v2** (rfs 2, ``.fl``): ``key = BLAKE2b-256(plain)``; the plain bytes are compressed with *raw* snappy (the
  block format, no framing), then sealed with AES-256-GCM under ``key`` with ``nonce = key[:12]`` (so equal
  chunks encrypt equally and the store dedups them); the stored bytes are ``ciphertext || 16-byte tag``, and
  ``id = BLAKE2b-256(stored bytes)``.
* **v1** (rfs 1 / 0-flist / 0-fs, ``.flist``): ``key = BLAKE2b-128(plain)``; raw snappy, then XXTEA with the 16 raw
  key bytes in the "include length" byte-array convention shared by the ``xxtea`` Rust crate 0.2 (rfs 1),
  xxtea-c (0-flist) and xxtea-go (0-fs): the data are zero-padded to whole little-endian 32-bit words and one more
  word holding the unpadded length is appended before encryption; ``id = BLAKE2b-128(stored bytes)``.

Decoding verifies ``BLAKE2b(plain) == key`` as 0-fs does, so a wrong key or damaged bytes raise
:class:`ChunkCorrupt` (whose ``chunk_id`` is the id of the stored bytes that failed). The snappy length preamble
is checked against :data:`MAX_PLAIN_SIZE` before anything is inflated. This module must not know flists, hubs,
caches or files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import snappy
import xxtea as _xxtea
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import ChunkCorrupt

MAX_PLAIN_SIZE = 64 * 1024 * 1024
"""Largest plain chunk a decoder will inflate (rfs writes 512 KiB chunks)."""

V1_KEY_SIZE = 16
V2_KEY_SIZE = 32
_NONCE_SIZE = 12


@dataclass(frozen=True)
class Blob:
    """One encoded chunk: ``id`` (hex) names ``data``, the bytes the store holds; ``key`` decodes them."""

    id: str
    key: bytes
    data: bytes


def _blake2b(data: bytes, size: int) -> bytes:
    return hashlib.blake2b(data, digest_size=size).digest()


def _corrupt(data: bytes, key_size: int, why: str) -> ChunkCorrupt:
    return ChunkCorrupt(_blake2b(data, key_size).hex(), why)


def _snappy_length(compressed: bytes) -> int | None:
    """The uncompressed length a raw snappy block announces (its leading varint), or None if malformed."""
    value = 0
    for index in range(min(len(compressed), 5)):
        byte = compressed[index]
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            return value
    return None


def _inflate(compressed: bytes, data: bytes, key_size: int) -> bytes:
    announced = _snappy_length(compressed)
    if announced is None or announced > MAX_PLAIN_SIZE:
        raise _corrupt(data, key_size, f"snappy length preamble invalid or over {MAX_PLAIN_SIZE} bytes")
    try:
        plain: bytes = snappy.uncompress(compressed)
    except Exception as error:  # python-snappy raises its own UncompressError, and others on odd input
        raise _corrupt(data, key_size, f"snappy: {type(error).__name__}") from None
    return plain


def _check(plain: bytes, key: bytes, data: bytes) -> bytes:
    if _blake2b(plain, len(key)) != key:
        raise _corrupt(data, len(key), "plain bytes do not hash to the key")
    return plain


# --- v2: snappy + AES-256-GCM -------------------------------------------------------------------------------------


def encode_v2(plain: bytes) -> Blob:
    key = _blake2b(plain, V2_KEY_SIZE)
    data = AESGCM(key).encrypt(key[:_NONCE_SIZE], snappy.compress(plain), None)
    return Blob(id=_blake2b(data, V2_KEY_SIZE).hex(), key=key, data=data)


def decode_v2(data: bytes, key: bytes) -> bytes:
    if len(key) != V2_KEY_SIZE:
        raise _corrupt(data, V2_KEY_SIZE, f"v2 key must be {V2_KEY_SIZE} bytes, got {len(key)}")
    try:
        compressed = AESGCM(key).decrypt(key[:_NONCE_SIZE], data, None)
    except InvalidTag:
        raise _corrupt(data, V2_KEY_SIZE, "AES-GCM tag mismatch (wrong key or damaged bytes)") from None
    return _check(_inflate(compressed, data, V2_KEY_SIZE), key, data)


# --- v1: snappy + XXTEA ---------------------------------------------------------------------------------------------


def _key16(key: bytes) -> bytes:
    if len(key) > V1_KEY_SIZE:
        raise ValueError(f"an XXTEA key has at most {V1_KEY_SIZE} bytes, got {len(key)}")
    return key.ljust(V1_KEY_SIZE, b"\0")


def xxtea_encrypt(data: bytes, key: bytes) -> bytes:
    """XXTEA as the ``xxtea`` crate's ``encrypt`` (rfs 1) and xxtea-c: length word appended, key zero-padded to 16.

    Runs in C (the ``xxtea`` package, its ``LENGTH_WORD_SUFFIX`` padding is exactly rfs 1's layout); the tests
    prove it against a pure-Python reference of the cipher and the crate's own known answers.
    """
    if not data:
        raise ValueError("XXTEA cannot encrypt empty data (xxtea-c refuses it; snappy output is never empty)")
    return bytes(_xxtea.encrypt(data, _key16(key), padding=_xxtea.Padding.LENGTH_WORD_SUFFIX))


def xxtea_decrypt(data: bytes, key: bytes) -> bytes:
    """Inverse of :func:`xxtea_encrypt`; :class:`ChunkCorrupt` when the recovered length word is impossible."""
    if len(data) < 8 or len(data) % 4:
        raise _corrupt(data, V1_KEY_SIZE, f"XXTEA data must be whole words, at least two, got {len(data)} bytes")
    try:
        return bytes(_xxtea.decrypt(data, _key16(key), padding=_xxtea.Padding.LENGTH_WORD_SUFFIX))
    except ValueError:
        raise _corrupt(data, V1_KEY_SIZE, "XXTEA length word out of range (wrong key or damaged bytes)") from None


def encode_v1(plain: bytes) -> Blob:
    key = _blake2b(plain, V1_KEY_SIZE)
    data = xxtea_encrypt(snappy.compress(plain), key)
    return Blob(id=_blake2b(data, V1_KEY_SIZE).hex(), key=key, data=data)


def decode_v1(data: bytes, key: bytes) -> bytes:
    if len(key) != V1_KEY_SIZE:
        raise _corrupt(data, V1_KEY_SIZE, f"v1 key must be {V1_KEY_SIZE} bytes, got {len(key)}")
    return _check(_inflate(xxtea_decrypt(data, key), data, V1_KEY_SIZE), key, data)


def decode(data: bytes, key: bytes) -> bytes:
    """Decode a chunk of either generation, chosen by the key's length (16: v1, 32: v2)."""
    if len(key) == V1_KEY_SIZE:
        return decode_v1(data, key)
    if len(key) == V2_KEY_SIZE:
        return decode_v2(data, key)
    raise _corrupt(data, V2_KEY_SIZE, f"key of {len(key)} bytes is neither v1 (16) nor v2 (32)")
