"""A pure-Python XXTEA (Corrected Block TEA, Wheeler & Needham) used only to prove the C implementation.

Written from the published algorithm; slow (≈0.4 s per 512 KiB) and deliberately independent of the ``xxtea``
package that p2pchunks.codec uses.
"""

from __future__ import annotations

import struct

_DELTA = 0x9E3779B9
_MASK = 0xFFFFFFFF
V1_KEY_SIZE = 16


def words(data: bytes) -> list[int]:
    padded = data + b"\0" * (-len(data) % 4)
    return list(struct.unpack(f"<{len(padded) // 4}I", padded))


def key_words(key: bytes) -> tuple[int, int, int, int]:
    if len(key) > V1_KEY_SIZE:
        raise ValueError(f"an XXTEA key has at most {V1_KEY_SIZE} bytes, got {len(key)}")
    a, b, c, d = struct.unpack("<4I", key.ljust(V1_KEY_SIZE, b"\0"))
    return a, b, c, d


def encipher(v: list[int], k: tuple[int, int, int, int]) -> None:
    """Corrected Block TEA over ``v`` in place (Wheeler & Needham), with the 6 + 52/n round count."""
    n = len(v) - 1
    z = v[n]
    total = 0
    for _ in range(6 + 52 // len(v)):
        total = (total + _DELTA) & _MASK
        e = (total >> 2) & 3
        for p in range(n + 1):
            y = v[(p + 1) if p < n else 0]
            mx = (((z >> 5) ^ (y << 2)) + ((y >> 3) ^ (z << 4))) ^ ((total ^ y) + (k[(p & 3) ^ e] ^ z))
            z = v[p] = (v[p] + mx) & _MASK


def decipher(v: list[int], k: tuple[int, int, int, int]) -> None:
    n = len(v) - 1
    rounds = 6 + 52 // len(v)
    total = (rounds * _DELTA) & _MASK
    y = v[0]
    for _ in range(rounds):
        e = (total >> 2) & 3
        for p in range(n, -1, -1):
            z = v[(p - 1) if p > 0 else n]
            mx = (((z >> 5) ^ (y << 2)) + ((y >> 3) ^ (z << 4))) ^ ((total ^ y) + (k[(p & 3) ^ e] ^ z))
            y = v[p] = (v[p] - mx) & _MASK
        total = (total - _DELTA) & _MASK


def encrypt(data: bytes, key: bytes) -> bytes:
    """Length word appended, key zero padded: the layout of rfs 1."""
    v = [*words(data), len(data)]
    encipher(v, key_words(key))
    return struct.pack(f"<{len(v)}I", *v)


def decrypt(data: bytes, key: bytes) -> bytes:
    v = words(data)
    decipher(v, key_words(key))
    return struct.pack(f"<{len(v) - 1}I", *v[:-1])[: v[-1]]
