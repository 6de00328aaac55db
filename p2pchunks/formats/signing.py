"""Ed25519 keys, signatures, trusted key sets and detached signature files.

Owns the key files (``<prefix>.key``: hex of the 32-byte seed, mode 0600; ``<prefix>.pub``: hex of the public
key), the :class:`Signature` value (a public key and 64 signature bytes), the set of keys an agent trusts, and the
``<file>.sig`` detached signatures that protect signed lists (``seeds/*.toml``): ``bencode({"key": 32 bytes,
"sig": 64 bytes})`` over the file's exact bytes.

Must not know: the structure of manifests or lists. Callers hand in the exact bytes that are signed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing

from ..errors import BadConfig, BadManifest, BadSignature
from ..files import atomic_write
from .bencoding import bdecode, bencode

__all__ = [
    "Signature",
    "TrustedKeys",
    "generate_keypair",
    "load_public_key",
    "load_signing_key",
    "sig_path",
    "sign",
    "sign_file",
    "verify",
    "verify_file",
]

KEY_BYTES = 32
SIG_BYTES = 64
_HEX_KEY_RE = re.compile(r"\A[0-9a-fA-F]{64}\Z")
_MAX_KEY_FILE = 4096
_MAX_SIG_FILE = 1024


@dataclass(frozen=True, slots=True)
class Signature:
    """An Ed25519 signature ``sig`` made by the holder of public key ``key``."""

    key: bytes
    sig: bytes

    def as_dict(self) -> dict[bytes, object]:
        return {b"key": self.key, b"sig": self.sig}

    @classmethod
    def from_obj(cls, obj: object) -> Signature:
        """Parse the bdecoded ``{"key", "sig"}`` dict; :class:`BadSignature` if it is malformed."""
        if not isinstance(obj, dict) or set(obj) != {b"key", b"sig"}:
            raise BadSignature('malformed signature: want a dict with exactly "key" and "sig"')
        key, sig = obj[b"key"], obj[b"sig"]
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise BadSignature(f"malformed signature: key must be {KEY_BYTES} bytes")
        if not isinstance(sig, bytes) or len(sig) != SIG_BYTES:
            raise BadSignature(f"malformed signature: sig must be {SIG_BYTES} bytes")
        return cls(key, sig)


# --- key files ------------------------------------------------------------------------------------------------


def generate_keypair(path_prefix: Path | str) -> tuple[Path, Path]:
    """Write a new ``<prefix>.key`` (mode 0600) and ``<prefix>.pub``; refuse to overwrite either."""
    prefix = Path(path_prefix)
    key_path = prefix.with_name(prefix.name + ".key")
    pub_path = prefix.with_name(prefix.name + ".pub")
    for path in (key_path, pub_path):
        if path.exists() or path.is_symlink():
            raise BadConfig(f"refusing to overwrite existing key file {path}")
    signing_key = nacl.signing.SigningKey.generate()
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BadConfig(f"refusing to overwrite existing key file {key_path}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(bytes(signing_key).hex() + "\n")
    try:
        with pub_path.open("x") as fh:
            fh.write(bytes(signing_key.verify_key).hex() + "\n")
    except FileExistsError:
        key_path.unlink()
        raise BadConfig(f"refusing to overwrite existing key file {pub_path}") from None
    return key_path, pub_path


def _read_hex_key(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as fh:
            raw = fh.read(_MAX_KEY_FILE + 1)
    except OSError as error:
        raise BadConfig(f"cannot read {what} {path}: {error.strerror or error}") from None
    text = raw.decode("ascii", errors="replace").strip()
    if len(raw) > _MAX_KEY_FILE or not _HEX_KEY_RE.match(text):
        raise BadConfig(f"{what} {path}: want {KEY_BYTES * 2} hex digits")
    return bytes.fromhex(text)


def load_signing_key(path: Path | str) -> nacl.signing.SigningKey:
    """The signing key whose seed is hex-encoded in ``path`` (a ``.key`` file)."""
    return nacl.signing.SigningKey(_read_hex_key(Path(path), "secret key file"))


def load_public_key(path_or_hex: Path | str) -> bytes:
    """A 32-byte public key: from 64 hex digits, or from a ``.pub`` file holding them."""
    if isinstance(path_or_hex, str) and _HEX_KEY_RE.match(path_or_hex.strip()):
        return bytes.fromhex(path_or_hex.strip())
    return _read_hex_key(Path(path_or_hex), "public key file")


class TrustedKeys:
    """An immutable set of 32-byte Ed25519 public keys whose signatures are accepted."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[bytes] = ()) -> None:
        collected = frozenset(keys)
        for key in collected:
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise BadConfig(f"a trusted key must be {KEY_BYTES} bytes")
        self._keys = collected

    @classmethod
    def from_hex(cls, keys: Iterable[str] | str) -> TrustedKeys:
        """Keys given as hex strings (a single string counts as one key)."""
        items = [keys] if isinstance(keys, str) else list(keys)
        out = []
        for item in items:
            text = item.strip() if isinstance(item, str) else ""
            if not _HEX_KEY_RE.match(text):
                raise BadConfig(f"trusted key {str(item)[:80]!r}: want {KEY_BYTES * 2} hex digits")
            out.append(bytes.fromhex(text))
        return cls(out)

    @classmethod
    def from_files(cls, paths: Iterable[Path | str]) -> TrustedKeys:
        return cls(load_public_key(Path(path)) for path in paths)

    @classmethod
    def from_dir(cls, directory: Path | str) -> TrustedKeys:
        """Every ``*.pub`` file of ``directory`` (not recursive)."""
        return cls.from_files(sorted(Path(directory).glob("*.pub")))

    def union(self, other: TrustedKeys) -> TrustedKeys:
        return TrustedKeys(self._keys | other._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[bytes]:
        return iter(sorted(self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrustedKeys) and self._keys == other._keys

    def __hash__(self) -> int:
        return hash(self._keys)

    def __repr__(self) -> str:
        return f"TrustedKeys({', '.join(key.hex()[:16] for key in self)})"


# --- signing and verification ---------------------------------------------------------------------------------


def sign(key: nacl.signing.SigningKey, data: bytes) -> Signature:
    return Signature(bytes(key.verify_key), key.sign(data).signature)


def verify(trusted: TrustedKeys, data: bytes, signature: Signature) -> None:
    """Return if ``signature`` is a valid signature of ``data`` by a trusted key, else raise BadSignature."""
    if not isinstance(signature, Signature):
        raise BadSignature(f"malformed signature: {type(signature).__name__}")
    if len(signature.key) != KEY_BYTES or len(signature.sig) != SIG_BYTES:
        raise BadSignature(f"malformed signature: want a {KEY_BYTES}-byte key and {SIG_BYTES}-byte sig")
    if signature.key not in trusted:
        raise BadSignature(f"signed by untrusted key {signature.key.hex()}")
    try:
        nacl.signing.VerifyKey(signature.key).verify(data, signature.sig)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        raise BadSignature(f"signature by {signature.key.hex()[:16]}… does not match the data") from None


def sig_path(path: Path | str) -> Path:
    """Where the detached signature of ``path`` lives: ``<path>.sig``."""
    path = Path(path)
    return path.with_name(path.name + ".sig")


def sign_file(path: Path | str, key: nacl.signing.SigningKey) -> Path:
    """Sign the bytes of ``path``; write ``<path>.sig`` atomically and return its path."""
    path = Path(path)
    target = sig_path(path)
    blob = bencode(sign(key, path.read_bytes()).as_dict())
    atomic_write(target, blob, fsync=False, mode=0o600)  # 0o600: what mkstemp gave it before files.py
    return target


def verify_file(path: Path | str, trusted: TrustedKeys) -> bytes:
    """The content of ``path`` once ``<path>.sig`` verifies; BadSignature when it is missing, malformed or bad."""
    path = Path(path)
    data = path.read_bytes()
    try:
        with sig_path(path).open("rb") as fh:
            blob = fh.read(_MAX_SIG_FILE + 1)
    except FileNotFoundError:
        raise BadSignature(f"{path}: no signature file {sig_path(path).name}") from None
    try:
        signature = Signature.from_obj(bdecode(blob, max_size=_MAX_SIG_FILE, max_depth=2, max_items=8))
    except BadManifest as error:
        raise BadSignature(f"{sig_path(path)}: malformed signature file: {error}") from None
    try:
        verify(trusted, data, signature)
    except BadSignature as error:
        raise BadSignature(f"{path}: {error}") from None
    return data
