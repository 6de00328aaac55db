"""signing: key files, trusted sets, signatures and detached .sig files (checked with `cryptography` too)."""

from __future__ import annotations

import stat
from pathlib import Path

import nacl.signing
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from p2pchunks.errors import BadConfig, BadSignature
from p2pchunks.formats.bencoding import bdecode, bencode
from p2pchunks.formats.signing import (
    Signature,
    TrustedKeys,
    generate_keypair,
    load_public_key,
    load_signing_key,
    sign,
    sign_file,
    verify,
    verify_file,
)

SEED = bytes(range(32))


@pytest.fixture
def key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(SEED)


@pytest.fixture
def trusted(key: nacl.signing.SigningKey) -> TrustedKeys:
    return TrustedKeys([bytes(key.verify_key)])


def test_generate_keypair_writes_private_key_0600_and_matching_public_key(tmp_path: Path) -> None:
    key_path, pub_path = generate_keypair(tmp_path / "release")
    assert (key_path.name, pub_path.name) == ("release.key", "release.pub")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = load_signing_key(key_path)
    assert load_public_key(pub_path) == bytes(key.verify_key)
    assert len(key_path.read_text().strip()) == 64


@pytest.mark.parametrize("existing", ["release.key", "release.pub"])
def test_generate_keypair_refuses_to_overwrite(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("keep me\n")
    with pytest.raises(BadConfig, match="refusing to overwrite"):
        generate_keypair(tmp_path / "release")
    assert (tmp_path / existing).read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]


def test_two_keypairs_differ(tmp_path: Path) -> None:
    _, pub_a = generate_keypair(tmp_path / "a")
    _, pub_b = generate_keypair(tmp_path / "b")
    assert load_public_key(pub_a) != load_public_key(pub_b)


@pytest.mark.parametrize("content", ["", "abc", "zz" * 32, "00" * 31, "00" * 33, "00" * 32 + " junk"])
def test_malformed_key_files_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.key"
    path.write_text(content)
    with pytest.raises(BadConfig, match="hex digits"):
        load_signing_key(path)
    with pytest.raises(BadConfig, match="hex digits"):
        load_public_key(path)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(BadConfig, match="cannot read"):
        load_signing_key(tmp_path / "nope.key")


def test_load_public_key_from_hex_or_file(tmp_path: Path, key: nacl.signing.SigningKey) -> None:
    public = bytes(key.verify_key)
    (tmp_path / "k.pub").write_text(public.hex().upper() + "\n")
    assert load_public_key(public.hex()) == public
    assert load_public_key(tmp_path / "k.pub") == public
    assert load_public_key(str(tmp_path / "k.pub")) == public


def test_trusted_keys_constructors(tmp_path: Path) -> None:
    keys = [nacl.signing.SigningKey(bytes([i]) * 32).verify_key for i in range(3)]
    raw = [bytes(k) for k in keys]
    for i, public in enumerate(raw):
        (tmp_path / f"k{i}.pub").write_text(public.hex())
    (tmp_path / "ignored.txt").write_text("not a key")
    assert set(TrustedKeys.from_dir(tmp_path)) == set(raw)
    assert TrustedKeys.from_files([tmp_path / "k0.pub"]) == TrustedKeys([raw[0]])
    assert len(TrustedKeys.from_hex(raw[1].hex())) == 1  # one string is one key, not 64 characters
    both = TrustedKeys.from_hex([raw[0].hex()]).union(TrustedKeys([raw[1]]))
    assert [public in both for public in raw] == [True, True, False]
    assert len(both) == 2


@pytest.mark.parametrize("bad", [["00" * 31], ["x" * 64], [""]])
def test_trusted_keys_refuse_bad_hex(bad: list[str]) -> None:
    with pytest.raises(BadConfig):
        TrustedKeys.from_hex(bad)


def test_trusted_keys_refuse_wrong_length() -> None:
    with pytest.raises(BadConfig, match="32 bytes"):
        TrustedKeys([b"short"])


def test_sign_and_verify(key: nacl.signing.SigningKey, trusted: TrustedKeys) -> None:
    signature = sign(key, b"hello")
    assert signature.key == bytes(key.verify_key)
    assert len(signature.sig) == 64
    verify(trusted, b"hello", signature)
    # An independent Ed25519 implementation accepts the same signature.
    Ed25519PublicKey.from_public_bytes(signature.key).verify(signature.sig, b"hello")


def test_verify_refusals(key: nacl.signing.SigningKey, trusted: TrustedKeys) -> None:
    good = sign(key, b"hello")
    other = nacl.signing.SigningKey(bytes(32))
    cases = [
        (b"hellO", good, "does not match"),
        (b"hello", Signature(good.key, bytes([good.sig[0] ^ 1]) + good.sig[1:]), "does not match"),
        (b"hello", sign(other, b"hello"), "untrusted key"),
        (b"hello", Signature(good.key[:31], good.sig), "malformed"),
        (b"hello", Signature(good.key, good.sig[:63]), "malformed"),
    ]
    for data, signature, words in cases:
        with pytest.raises(BadSignature, match=words):
            verify(trusted, data, signature)
    with pytest.raises(BadSignature, match="untrusted"):
        verify(TrustedKeys(), b"hello", good)


def test_signature_from_obj() -> None:
    assert Signature.from_obj({b"key": b"k" * 32, b"sig": b"s" * 64}) == Signature(b"k" * 32, b"s" * 64)
    cases: list[object] = [None, [], {b"key": b"k" * 32}, {b"key": b"k" * 32, b"sig": b"s" * 64, b"x": 1},
                           {b"key": 5, b"sig": b"s" * 64}, {b"key": b"k" * 32, b"sig": b"s" * 63}]  # fmt: skip
    for bad in cases:
        with pytest.raises(BadSignature, match="malformed"):
            Signature.from_obj(bad)


def test_sign_file_and_verify_file(tmp_path: Path, key: nacl.signing.SigningKey, trusted: TrustedKeys) -> None:
    listed = tmp_path / "official.toml"
    listed.write_bytes(b'version = 3\n[[image]]\nname = "a"\n')
    sig = sign_file(listed, key)
    assert sig == tmp_path / "official.toml.sig"
    assert bdecode(sig.read_bytes()) == {b"key": bytes(key.verify_key), b"sig": key.sign(listed.read_bytes()).signature}
    assert verify_file(listed, trusted) == listed.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["official.toml", "official.toml.sig"]  # no temp left


def test_verify_file_refusals(tmp_path: Path, key: nacl.signing.SigningKey, trusted: TrustedKeys) -> None:
    listed = tmp_path / "seeds.toml"
    listed.write_bytes(b"version = 1\n")
    with pytest.raises(BadSignature, match="no signature file"):
        verify_file(listed, trusted)
    sig = sign_file(listed, key)
    listed.write_bytes(b"version = 2\n")
    with pytest.raises(BadSignature, match="does not match"):
        verify_file(listed, trusted)
    listed.write_bytes(b"version = 1\n")
    verify_file(listed, trusted)
    with pytest.raises(BadSignature, match="untrusted"):
        verify_file(listed, TrustedKeys([bytes(nacl.signing.SigningKey(bytes(32)).verify_key)]))
    for garbage in [b"", b"not bencode", bencode({b"key": b"x"}), bencode([1, 2]), b"d" * 100]:
        sig.write_bytes(garbage)
        with pytest.raises(BadSignature, match="malformed"):
            verify_file(listed, trusted)
