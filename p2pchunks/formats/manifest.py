"""The manifest: the signed description of one image, its id, its torrent and its hot order.

A manifest is one canonical bencoded dict. Its *body* holds

    p2pchunks   format version (int, 1)
    name        [A-Za-z0-9._-]{1,128}
    version     free text
    chunk_size  the chunk size the image was cut with
    files       in tree order: {path, size, mode, chunks: [[raw id, size] | [raw id, size, key], ...]}
                or {path, size, mode, symlink: target}
    hot         raw ids of the boot-critical chunks, in the order they are needed
    extra       optional free-form dict (zos keys, hub location, ...)
    info        the BitTorrent v2 info dict of the image's distinct chunks (absent when there are none)

and the signed form adds ``signature`` ({"key", "sig"} over the canonical bencoding of the body). The manifest id
is the SHA-256 of that body, so a signature never changes it. The torrent (see ``torrentinfo``) has one file
and one piece per distinct chunk, in the sorted order of the chunk ids.

Every ``Manifest`` is validated when it is built, so a decoded manifest is consistent: safe paths, sizes that add
up, hot ids that exist, and an info dict whose files are exactly the distinct chunks with their sizes.

Must not know: networking, the cache, how chunks are fetched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import nacl.signing

from .. import ids
from ..errors import BadManifest, BadSignature, ChunkNotFound
from .bencoding import DEFAULT_MAX_DEPTH, DEFAULT_MAX_ITEMS, Raw, bdecode, bencode
from .signing import Signature, TrustedKeys, sign, verify
from .torrentinfo import EncodedInfo, build_torrent_info, piece_length_for, pieces_of_info

__all__ = [
    "FORMAT_VERSION",
    "MAX_CHUNK_BYTES",
    "ChunkRef",
    "FileEntry",
    "Manifest",
    "build_manifest",
    "build_torrent_info",
    "check_path",
    "piece_length_for",
]

FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
MAX_CHUNK_BYTES = 64 * 1024 * 1024
NAME_RE = re.compile(r"\A[A-Za-z0-9._-]{1,128}\Z")
_MAX_TEXT = 4096
_MAX_KEY = 64
_BODY_KEYS = frozenset({b"p2pchunks", b"name", b"version", b"chunk_size", b"files", b"hot", b"extra", b"info"})
_REQUIRED = frozenset({b"p2pchunks", b"name", b"version", b"chunk_size", b"files", b"hot"})
_FILE_KEYS = frozenset({b"path", b"size", b"mode", b"chunks", b"symlink"})


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One chunk of a file: its id (hex), its stored size, and the key to decrypt it (rfs blocks; else empty)."""

    id: str
    size: int
    key: bytes = b""


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A regular file (its chunks, in order) or a symlink (``symlink`` set, no chunks)."""

    path: str
    size: int
    mode: int
    chunks: tuple[ChunkRef, ...] = ()
    symlink: str | None = None


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    chunk_size: int
    files: tuple[FileEntry, ...]
    hot: tuple[str, ...]
    info: Mapping[bytes, object] | None
    """The torrent's info dict (built or decoded as a dict, then kept as an ``EncodedInfo``)."""
    extra: dict[bytes, object] = field(default_factory=dict)
    signature: Signature | None = None
    # Set by validation: the chunk id of each torrent piece, in piece order (libtorrent's: the sorted file tree);
    # the size of each distinct chunk; the id (SHA-256, hex, of the canonical body, which validation encodes
    # anyway: same content, same id; the signature is not part of it). ``info`` is then kept encoded
    # (``EncodedInfo``): an agent holds every manifest it knows, and the decoded tree of dicts costs about 1 KiB
    # per chunk.
    piece_ids: tuple[str, ...] = field(init=False, repr=False, compare=False)
    manifest_id: str = field(init=False, repr=False, compare=False)
    _sizes: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_header(self)
        sizes = _check_files(self.files)
        _check_hot(self.hot, sizes)
        if not isinstance(self.extra, dict):
            raise BadManifest("extra must be a dict")
        if self.extra:  # store the decoded form (bytes keys and strings), so equality survives a round trip
            object.__setattr__(self, "extra", bdecode(bencode(self.extra)))
        if self.signature is not None and not isinstance(self.signature, Signature):
            raise BadManifest("signature must be a Signature")
        if self.info is None:
            if sizes:
                raise BadManifest("manifest has chunks but no torrent info")
            pieces: tuple[str, ...] = ()
        else:
            if not sizes:
                raise BadManifest("manifest has torrent info but no chunks")
            tree = self.info.decoded() if isinstance(self.info, EncodedInfo) else dict(self.info)
            pieces = pieces_of_info(tree, sizes)
            if not isinstance(self.info, EncodedInfo):
                object.__setattr__(self, "info", EncodedInfo(bencode(tree)))
        object.__setattr__(self, "_sizes", sizes)
        object.__setattr__(self, "piece_ids", pieces)
        body = bencode(self._body())  # the whole body must encode (e.g. no bools in ``extra``)
        object.__setattr__(self, "manifest_id", hashlib.sha256(body).hexdigest())

    def __hash__(self) -> int:
        return hash((self.manifest_id, self.signature))

    def __repr__(self) -> str:
        signed = ", signed" if self.signature is not None else ""
        return f"Manifest({self.name} {self.version}, id {self.manifest_id[:16]}, {len(self.files)} files{signed})"

    # --- derived values ---

    @property
    def body_bytes(self) -> bytes:
        """The canonical body (hashed into the id, and signed), encoded anew each time it is asked for."""
        return bencode(self._body())

    @cached_property
    def infohash(self) -> str | None:
        """The BitTorrent v2 infohash (hex), or None when the image has no chunk."""
        return None if self.info is None else hashlib.sha256(self.info_bytes).hexdigest()

    @property
    def info_bytes(self) -> bytes:
        """The canonical bencoding of the info dict (empty when the image has no chunk)."""
        if self.info is None:
            return b""
        return self.info.raw if isinstance(self.info, EncodedInfo) else bencode(self.info)

    @cached_property
    def chunk_ids(self) -> tuple[str, ...]:
        """Distinct chunk ids: the hot ones first (hot order), then the rest in file order."""
        seen = dict.fromkeys(self.hot)
        for entry in self.files:
            seen.update(dict.fromkeys(chunk.id for chunk in entry.chunks))
        return tuple(seen)

    @cached_property
    def image_bytes(self) -> int:
        """Sum of the file sizes."""
        return sum(entry.size for entry in self.files)

    @cached_property
    def unique_bytes(self) -> int:
        """Sum of the sizes of the distinct chunks (what a node stores and transfers)."""
        return sum(self._sizes.values())

    @cached_property
    def _piece_index(self) -> dict[str, int]:
        return {chunk_id: index for index, chunk_id in enumerate(self.piece_ids)}

    def has_chunk(self, chunk_id: str) -> bool:
        return chunk_id in self._piece_index

    def piece_index(self, chunk_id: str) -> int:
        try:
            return self._piece_index[chunk_id]
        except KeyError:
            raise ChunkNotFound(chunk_id, f"not in manifest {self.name}") from None

    def chunk_size_of(self, chunk_id: str) -> int:
        try:
            return self._sizes[chunk_id]
        except KeyError:
            raise ChunkNotFound(chunk_id, f"not in manifest {self.name}") from None

    # --- encoding, signing ---

    def _body(self) -> dict[bytes, object]:
        body: dict[bytes, object] = {
            b"p2pchunks": FORMAT_VERSION,
            b"name": self.name,
            b"version": self.version,
            b"chunk_size": self.chunk_size,
            b"files": [_file_obj(entry) for entry in self.files],
            b"hot": [bytes.fromhex(chunk_id) for chunk_id in self.hot],
        }
        if self.extra:
            body[b"extra"] = self.extra
        if self.info is not None:
            body[b"info"] = Raw(self.info_bytes)
        return body

    def encode(self) -> bytes:
        body = self._body()
        if self.signature is not None:
            body[b"signature"] = self.signature.as_dict()
        return bencode(body)

    @classmethod
    def decode(
        cls,
        data: bytes,
        *,
        max_size: int = MAX_MANIFEST_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_items: int = DEFAULT_MAX_ITEMS,
    ) -> Manifest:
        """Parse and validate a bencoded manifest; BadManifest on anything wrong."""
        doc = bdecode(data, max_size=max_size, max_depth=max_depth, max_items=max_items)
        if not isinstance(doc, dict):
            raise BadManifest("manifest: top level must be a dict")
        unknown = set(doc) - _BODY_KEYS - {b"signature"}
        if unknown:
            raise BadManifest(f"manifest: unknown keys {sorted(unknown)}")
        missing = _REQUIRED - set(doc)
        if missing:
            raise BadManifest(f"manifest: missing keys {sorted(missing)}")
        if doc[b"p2pchunks"] != FORMAT_VERSION:
            raise BadManifest(f"manifest: unsupported format version {doc[b'p2pchunks']!r}")
        extra = doc.get(b"extra", {})
        if b"extra" in doc and (not isinstance(extra, dict) or not extra):
            raise BadManifest("manifest: extra must be a non-empty dict when present")
        info = doc.get(b"info")
        if info is not None and not isinstance(info, dict):
            raise BadManifest("manifest: info must be a dict")
        signature = None
        if b"signature" in doc:
            try:
                signature = Signature.from_obj(doc[b"signature"])
            except BadSignature as error:
                raise BadManifest(f"manifest: {error}") from None
        files = _list(doc[b"files"], "files")
        return cls(
            name=_text(doc[b"name"], "name"),
            version=_text(doc[b"version"], "version"),
            chunk_size=_int(doc[b"chunk_size"], "chunk_size"),
            files=tuple(_parse_file(obj, index) for index, obj in enumerate(files)),
            hot=tuple(_raw_id(raw, "hot") for raw in _list(doc[b"hot"], "hot")),
            info=info,
            extra=extra,
            signature=signature,
        )

    def signed(self, key: nacl.signing.SigningKey) -> Manifest:
        return dataclasses.replace(self, signature=sign(key, self.body_bytes))

    def verify(self, trusted: TrustedKeys) -> None:
        """Return if the manifest carries a valid signature by a trusted key, else raise BadSignature."""
        if self.signature is None:
            raise BadSignature(f"manifest {self.name} {self.version} is not signed")
        verify(trusted, self.body_bytes, self.signature)


# --- validation -----------------------------------------------------------------------------------------------


def _check_header(manifest: Manifest) -> None:
    if not isinstance(manifest.name, str) or not NAME_RE.match(manifest.name):
        raise BadManifest(f"bad manifest name {str(manifest.name)[:80]!r}: want [A-Za-z0-9._-]{{1,128}}")
    if not isinstance(manifest.version, str) or not 0 < len(manifest.version) <= 128:
        raise BadManifest("version must be a string of 1 to 128 characters")
    if not manifest.version.isprintable():
        raise BadManifest(f"version {manifest.version!r} has unprintable characters")
    if not _is_int(manifest.chunk_size) or not 0 < manifest.chunk_size <= MAX_CHUNK_BYTES:
        raise BadManifest(f"chunk_size must be an integer from 1 to {MAX_CHUNK_BYTES}")


def check_path(path: str) -> str:
    """Return ``path`` if it is a safe relative posix path (no ``..``, ``.``, empty parts, NUL), else raise."""
    if not isinstance(path, str) or not path or len(path) > _MAX_TEXT:
        raise BadManifest(f"bad file path {str(path)[:80]!r}")
    parts = path.split("/")
    if path.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\0" in path:
        raise BadManifest(f"unsafe file path {path[:200]!r}: must be relative with no '', '.' or '..' parts")
    return path


def _check_files(files: tuple[FileEntry, ...]) -> dict[str, int]:
    """Validate the entries; return the size of each distinct chunk, in file order."""
    if not isinstance(files, tuple):
        raise BadManifest("files must be a tuple")
    sizes: dict[str, int] = {}
    paths: set[str] = set()
    for entry in files:
        if not isinstance(entry, FileEntry):
            raise BadManifest("files must hold FileEntry values")
        path = check_path(entry.path)
        if path in paths:
            raise BadManifest(f"duplicate file path {path!r}")
        paths.add(path)
        if not _is_int(entry.size) or entry.size < 0:
            raise BadManifest(f"{path}: size must be a non-negative integer")
        if not _is_int(entry.mode) or not 0 <= entry.mode <= 0o177777:
            raise BadManifest(f"{path}: bad mode {entry.mode!r}")
        if entry.symlink is not None:
            target = entry.symlink
            if not isinstance(target, str) or not target or len(target) > _MAX_TEXT or "\0" in target:
                raise BadManifest(f"{path}: bad symlink target")
            if entry.chunks:
                raise BadManifest(f"{path}: a symlink cannot have chunks")
            continue
        if not isinstance(entry.chunks, tuple):
            raise BadManifest(f"{path}: chunks must be a tuple")
        for chunk in entry.chunks:
            _check_chunk(path, chunk, sizes)
        if all(not chunk.key for chunk in entry.chunks) and sum(c.size for c in entry.chunks) != entry.size:
            raise BadManifest(f"{path}: chunk sizes add up to {sum(c.size for c in entry.chunks)}, not {entry.size}")
    for path in paths:
        parent = path.rpartition("/")[0]
        while parent:
            if parent in paths:
                raise BadManifest(f"{path!r} lies under {parent!r}, which is a file or symlink")
            parent = parent.rpartition("/")[0]
    return sizes


def _check_chunk(path: str, chunk: ChunkRef, sizes: dict[str, int]) -> None:
    if not isinstance(chunk, ChunkRef) or not ids.is_chunk_id(chunk.id):
        raise BadManifest(f"{path}: bad chunk reference {chunk!r:.120}")
    if not _is_int(chunk.size) or not 0 < chunk.size <= MAX_CHUNK_BYTES:
        raise BadManifest(f"{path}: chunk {chunk.id} has bad size {chunk.size!r}")
    if not isinstance(chunk.key, bytes) or len(chunk.key) > _MAX_KEY:
        raise BadManifest(f"{path}: chunk {chunk.id} has a bad key")
    known = sizes.setdefault(chunk.id, chunk.size)
    if known != chunk.size:
        raise BadManifest(f"chunk {chunk.id} appears with sizes {known} and {chunk.size}")


def _check_hot(hot: tuple[str, ...], sizes: dict[str, int]) -> None:
    if not isinstance(hot, tuple):
        raise BadManifest("hot must be a tuple")
    if len(set(hot)) != len(hot):
        raise BadManifest("hot lists a chunk twice")
    for chunk_id in hot:
        if chunk_id not in sizes:
            raise BadManifest(f"hot chunk {str(chunk_id)[:80]} is not a chunk of any file")


# --- document ↔ dataclasses -----------------------------------------------------------------------------------


def _file_obj(entry: FileEntry) -> dict[bytes, object]:
    obj: dict[bytes, object] = {b"path": entry.path, b"size": entry.size, b"mode": entry.mode}
    if entry.symlink is not None:
        obj[b"symlink"] = entry.symlink
    else:
        obj[b"chunks"] = [
            [bytes.fromhex(c.id), c.size, c.key] if c.key else [bytes.fromhex(c.id), c.size] for c in entry.chunks
        ]
    return obj


def _parse_file(obj: object, index: int) -> FileEntry:
    where = f"files[{index}]"
    if not isinstance(obj, dict) or not {b"path", b"size", b"mode"} <= set(obj) or not set(obj) <= _FILE_KEYS:
        raise BadManifest(f"{where}: want a dict with path, size, mode and chunks or symlink")
    if (b"chunks" in obj) == (b"symlink" in obj):
        raise BadManifest(f"{where}: want exactly one of chunks and symlink")
    path = _text(obj[b"path"], f"{where}.path")
    size, mode = _int(obj[b"size"], f"{path}: size"), _int(obj[b"mode"], f"{path}: mode")
    if b"symlink" in obj:
        return FileEntry(path, size, mode, symlink=_text(obj[b"symlink"], f"{path}: symlink"))
    chunks = []
    for item in _list(obj[b"chunks"], f"{path}: chunks"):
        if not isinstance(item, list) or len(item) not in (2, 3):
            raise BadManifest(f"{path}: a chunk must be [id, size] or [id, size, key]")
        key = item[2] if len(item) == 3 else b""
        if not isinstance(key, bytes) or (len(item) == 3 and not key):
            raise BadManifest(f"{path}: a chunk key must be non-empty bytes")
        chunks.append(ChunkRef(_raw_id(item[0], path), _int(item[1], f"{path}: chunk size"), key))
    return FileEntry(path, size, mode, tuple(chunks))


def _raw_id(raw: object, where: str) -> str:
    if not isinstance(raw, bytes) or len(raw) not in (16, 32):
        raise BadManifest(f"{where}: a chunk id must be 16 or 32 raw bytes")
    return raw.hex()


def _text(value: object, where: str) -> str:
    if not isinstance(value, bytes):
        raise BadManifest(f"{where}: want a string")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise BadManifest(f"{where}: not valid UTF-8") from None


def _int(value: object, where: str) -> int:
    if not _is_int(value):
        raise BadManifest(f"{where}: want an integer")
    assert isinstance(value, int)
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _list(value: object, where: str) -> list[object]:
    if not isinstance(value, list):
        raise BadManifest(f"{where}: want a list")
    return value


# --- building -------------------------------------------------------------------------------------------------


def build_manifest(
    name: str,
    version: str,
    files: Sequence[FileEntry],
    *,
    directory: Path,
    chunk_size: int,
    hot: Iterable[str] = (),
    extra: Mapping[bytes, object] | None = None,
) -> Manifest:
    """A validated manifest of ``files`` whose chunks are stored under ``directory`` (a hub root or cache)."""
    distinct: dict[str, int] = {}
    for entry in files:
        for chunk in entry.chunks:
            distinct.setdefault(chunk.id, chunk.size)
    info = build_torrent_info(directory, distinct.items()) if distinct else None
    return Manifest(name, version, chunk_size, tuple(files), tuple(hot), info, dict(extra or {}))
