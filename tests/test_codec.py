"""The rfs chunk codecs: round trips, layouts checked with independent primitives, known answers, corruption."""

from __future__ import annotations

import base64
import hashlib
import os
import struct

import pytest
import snappy
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchunks.errors import ChunkCorrupt
from p2pchunks.zos.codec import Blob, decode, decode_v1, decode_v2, encode_v1, encode_v2, xxtea_decrypt, xxtea_encrypt

from . import xxtea_reference

PLAINS = {
    "empty": b"",
    "one byte": b"\x00",
    "512 KiB random": os.urandom(512 * 1024),
    "compressible": b"zero-os flist chunk " * 30_000,
}
CODECS = {"v1": (encode_v1, decode_v1, 16), "v2": (encode_v2, decode_v2, 32)}


def blake(data: bytes, size: int) -> bytes:
    return hashlib.blake2b(data, digest_size=size).digest()


@pytest.mark.parametrize("version", sorted(CODECS))
@pytest.mark.parametrize("name", sorted(PLAINS))
def test_round_trip_and_ids(version: str, name: str) -> None:
    encode, decode_one, size = CODECS[version]
    plain = PLAINS[name]
    blob = encode(plain)
    assert blob.key == blake(plain, size)
    assert blob.id == blake(blob.data, size).hex()
    assert len(blob.id) == 2 * size
    assert decode_one(blob.data, blob.key) == plain
    assert decode(blob.data, blob.key) == plain
    assert encode(plain) == blob  # convergent: same plain, same blob (the store dedups)


def test_compressible_data_is_stored_smaller() -> None:
    plain = PLAINS["compressible"]
    assert len(encode_v2(plain).data) < len(plain) // 10
    assert len(encode_v1(plain).data) < len(plain) // 10


@pytest.mark.parametrize("name", sorted(PLAINS))
def test_v2_layout_is_raw_snappy_sealed_by_aes_gcm_with_key_prefix_nonce(name: str) -> None:
    plain = PLAINS[name]
    blob = encode_v2(plain)
    compressed = AESGCM(blob.key).decrypt(blob.key[:12], blob.data, None)
    assert len(blob.data) == len(compressed) + 16  # ciphertext || 16-byte tag
    assert not compressed.startswith(b"\xff\x06\x00\x00sNaPpY")  # not the framing format
    assert compressed == snappy.compress(plain)
    assert snappy.uncompress(compressed) == plain


@pytest.mark.parametrize("name", sorted(PLAINS))
def test_v1_layout_is_raw_snappy_under_xxtea_with_length_word(name: str) -> None:
    plain = PLAINS[name]
    blob = encode_v1(plain)
    compressed = snappy.compress(plain)
    assert len(blob.data) == 4 * -(-len(compressed) // 4) + 4
    assert xxtea_decrypt(blob.data, blob.key) == compressed


def test_xxtea_known_answer_from_the_rust_crate_readme() -> None:
    # xxtea crate 0.2.0 (rfs 1's dependency), README: encrypt("Hello World", "This is the key") in base64.
    expected = base64.b64decode("GEvbeEorvUJmCT2A2j5bGw==")
    assert xxtea_encrypt(b"Hello World", b"This is the key") == expected
    assert xxtea_decrypt(expected, b"This is the key") == b"Hello World"


def test_xxtea_block_cipher_known_answer_from_the_rust_crate_tests() -> None:
    # xxtea crate tests/tests.rs run_raw_test_case: encrypt_raw (no length word) with key "Snakeoil".
    words = list(struct.unpack("<3I", bytes([17, 18, 19, 20, 0, 0, 0, 0, 52, 238, 0, 0])))
    xxtea_reference.encipher(words, xxtea_reference.key_words(b"Snakeoil"))
    assert struct.pack("<3I", *words) == bytes([153, 30, 118, 66, 15, 149, 77, 188, 228, 138, 105, 92])
    xxtea_reference.decipher(words, xxtea_reference.key_words(b"Snakeoil"))
    assert struct.pack("<3I", *words) == bytes([17, 18, 19, 20, 0, 0, 0, 0, 52, 238, 0, 0])


def test_xxtea_refuses_empty_data_and_long_keys() -> None:
    with pytest.raises(ValueError, match="empty"):
        xxtea_encrypt(b"", b"k" * 16)
    with pytest.raises(ValueError, match="16 bytes"):
        xxtea_encrypt(b"data", b"k" * 17)


@pytest.mark.parametrize("data", [b"", b"abcd", b"abcdefg", b"abcdefghi"], ids=["0", "4", "7", "9"])
def test_xxtea_decrypt_refuses_impossible_lengths(data: bytes) -> None:
    with pytest.raises(ChunkCorrupt, match="whole words"):
        xxtea_decrypt(data, b"k" * 16)


@pytest.mark.parametrize("version", sorted(CODECS))
def test_wrong_key_is_chunk_corrupt_naming_the_stored_bytes(version: str) -> None:
    encode, decode_one, _size = CODECS[version]
    blob = encode(b"some file content" * 100)
    wrong = encode(b"other content").key
    with pytest.raises(ChunkCorrupt) as caught:
        decode_one(blob.data, wrong)
    assert caught.value.chunk_id == blob.id
    with pytest.raises(ChunkCorrupt):
        decode(blob.data, wrong)


@pytest.mark.parametrize("version", sorted(CODECS))
@pytest.mark.parametrize("position", [0, 7, -1])
def test_damaged_bytes_are_chunk_corrupt(version: str, position: int) -> None:
    encode, decode_one, _ = CODECS[version]
    blob = encode(b"payload " * 500)
    damaged = bytearray(blob.data)
    damaged[position] ^= 0x40
    with pytest.raises(ChunkCorrupt):
        decode_one(bytes(damaged), blob.key)


def test_v1_right_cipher_wrong_claimed_key_fails_the_hash_check() -> None:
    # Bytes that decrypt and inflate fine under a key that is not BLAKE2b-128 of the plain bytes.
    key = b"K" * 16
    data = xxtea_encrypt(snappy.compress(b"hello"), key)
    with pytest.raises(ChunkCorrupt, match="do not hash to the key"):
        decode_v1(data, key)


def test_v2_right_cipher_wrong_claimed_key_fails_the_hash_check() -> None:
    key = b"K" * 32
    data = AESGCM(key).encrypt(key[:12], snappy.compress(b"hello"), None)
    with pytest.raises(ChunkCorrupt, match="do not hash to the key"):
        decode_v2(data, key)


def test_snappy_length_bomb_is_refused_before_inflating() -> None:
    key = b"B" * 32
    preamble = b"\xff\xff\xff\xff\x0f"  # announces 4 GiB - 1
    data = AESGCM(key).encrypt(key[:12], preamble + b"\x00" * 16, None)
    with pytest.raises(ChunkCorrupt, match="snappy length"):
        decode_v2(data, key)


@pytest.mark.parametrize("key_size", [0, 15, 24, 33])
def test_decode_refuses_keys_of_other_sizes(key_size: int) -> None:
    with pytest.raises(ChunkCorrupt, match="neither v1"):
        decode(encode_v2(b"x").data, b"k" * key_size)


def test_blob_is_frozen() -> None:
    blob = Blob(id="00" * 32, key=b"k" * 32, data=b"")
    with pytest.raises(AttributeError):
        blob.id = "11" * 32  # type: ignore[misc]


@settings(max_examples=60, deadline=None)
@given(plain=st.binary(max_size=4096))
def test_round_trip_any_bytes(plain: bytes) -> None:
    assert decode(encode_v2(plain).data, encode_v2(plain).key) == plain
    blob = encode_v1(plain)
    assert decode(blob.data, blob.key) == plain


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=1, max_size=512), key=st.binary(max_size=16))
def test_xxtea_round_trip_any_bytes_and_short_keys(data: bytes, key: bytes) -> None:
    sealed = xxtea_encrypt(data, key)
    assert len(sealed) % 4 == 0
    assert len(sealed) >= 8
    assert xxtea_decrypt(sealed, key) == data
    assert xxtea_decrypt(sealed, key.ljust(16, b"\0")) == data  # short keys are zero padded, as the crate does


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=256), key=st.sampled_from([b"a" * 16, b"b" * 32]))
def test_decoding_garbage_only_ever_raises_chunk_corrupt(data: bytes, key: bytes) -> None:
    with pytest.raises(ChunkCorrupt):
        decode(data, key)


@given(data=st.binary(min_size=1, max_size=3000), key=st.binary(min_size=0, max_size=16))
def test_xxtea_matches_the_independent_reference(data: bytes, key: bytes) -> None:
    sealed = xxtea_encrypt(data, key)
    assert sealed == xxtea_reference.encrypt(data, key)
    assert xxtea_reference.decrypt(sealed, key) == data
