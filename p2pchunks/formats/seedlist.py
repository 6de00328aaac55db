"""The signed lists shipped in ``seeds/``: official images (``official.toml``) and volunteer seeds
(``bootstrap.toml``), each with a detached Ed25519 signature (``<file>.sig``).

Owns parsing, signature and version checks, and keeping the list in force: a list whose signature does not
verify against the trusted keys is refused with ``BadSignature``; one whose ``version`` is lower than the one in
force is refused with ``StaleVersion``; either way the previous list stays in force. Network access is not here
(lists are files; the warmer decides where they come from).
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..config.schema import split_hostport
from ..errors import BadConfig, BadManifest, StaleVersion
from .signing import TrustedKeys, verify_file

MAX_LIST_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class OfficialImage:
    name: str
    manifest: str
    """Where the manifest comes from: a hub name, a URL or a manifest id."""
    manifest_id: str = ""
    """If set, the manifest fetched must have exactly this id."""
    flist: str = ""
    flist_md5: str = ""
    size: int = 0
    priority: int = 100
    """Lower warms first."""


@dataclass(frozen=True, slots=True)
class Seed:
    name: str
    address: str
    """``host:port`` of its BitTorrent + DHT listener."""
    tracker: str = ""


@dataclass(frozen=True)
class OfficialList:
    version: int
    images: tuple[OfficialImage, ...]


@dataclass(frozen=True)
class BootstrapList:
    version: int
    seeds: tuple[Seed, ...]

    @property
    def dht_nodes(self) -> list[tuple[str, int]]:
        return [split_hostport(seed.address) for seed in self.seeds]

    @property
    def trackers(self) -> list[str]:
        return [seed.tracker for seed in self.seeds if seed.tracker]


def _load(data: bytes, what: str, entries: str) -> dict[str, Any]:
    """The TOML document of a list whose only keys are ``version`` and its ``entries`` (required, maybe empty):
    a signed list of the other kind must not parse as an empty list of this kind and lock the real one out."""
    if len(data) > MAX_LIST_BYTES:
        raise BadManifest(f"{what}: larger than {MAX_LIST_BYTES} bytes")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise BadManifest(f"{what}: {error}") from error
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise BadManifest(f"{what}: 'version' must be a non-negative integer")
    unknown = sorted(set(doc) - {"version", entries})
    if unknown:
        raise BadManifest(f"{what}: unknown top-level keys {unknown} (only 'version' and [[{entries}]])")
    if entries not in doc:
        raise BadManifest(f"{what}: no [[{entries}]] (write '{entries} = []' for an empty list)")
    return doc


def _entries(doc: dict[str, Any], key: str, what: str) -> list[dict[str, Any]]:
    entries = doc[key]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise BadManifest(f"{what}: [[{key}]] must be a list of tables")
    return entries


def _build(cls: type[Any], entry: dict[str, Any], what: str) -> Any:
    fields = cls.__dataclass_fields__
    unknown = set(entry) - set(fields)
    if unknown:
        raise BadManifest(f"{what}: unknown keys {sorted(unknown)}")
    for name, value in entry.items():
        expected = int if fields[name].type in ("int", int) else str
        if not isinstance(value, expected) or isinstance(value, bool):
            raise BadManifest(f"{what}: {name} must be {expected.__name__}")
    try:
        return cls(**entry)
    except TypeError as error:
        raise BadManifest(f"{what}: {error}") from None


def parse_official(data: bytes) -> OfficialList:
    doc = _load(data, "official list", "image")
    images = tuple(
        _build(OfficialImage, e, f"official image #{i}") for i, e in enumerate(_entries(doc, "image", "official list"))
    )
    names = [image.name for image in images]
    if len(set(names)) != len(names):
        raise BadManifest("official list: duplicate image names")
    return OfficialList(doc["version"], tuple(sorted(images, key=lambda image: (image.priority, image.name))))


def parse_bootstrap(data: bytes) -> BootstrapList:
    doc = _load(data, "bootstrap list", "seed")
    seeds = tuple(_build(Seed, e, f"seed #{i}") for i, e in enumerate(_entries(doc, "seed", "bootstrap list")))
    for seed in seeds:
        try:
            split_hostport(seed.address)
        except BadConfig as error:
            raise BadManifest(f"seed {seed.name}: {error}") from None
    return BootstrapList(doc["version"], seeds)


def shipped_keys() -> TrustedKeys:
    """The release keys shipped in the package (``p2pchunks/keys/*.pub``)."""
    folder = resources.files("p2pchunks") / "keys"
    keys = [entry.read_text().strip() for entry in folder.iterdir() if entry.name.endswith(".pub")]
    return TrustedKeys.from_hex(keys)


def shipped_list(name: str) -> Path:
    """A list shipped with the release: ``seeds/<name>`` in a checkout, or the packaged copy."""
    checkout = Path(__file__).resolve().parents[2] / "seeds" / name
    if checkout.exists():
        return checkout
    return Path(sys.prefix) / "share" / "p2pchunks" / "seeds" / name


class ListInForce:
    """Keeps the newest valid list of one kind; refuses bad signatures and older versions."""

    def __init__(self, kind: str, trusted: TrustedKeys) -> None:
        if kind not in ("official", "bootstrap"):
            raise ValueError(kind)
        self.kind = kind
        self.trusted = trusted
        self.current: OfficialList | BootstrapList | None = None

    def offer(self, path: Path) -> OfficialList | BootstrapList:
        """Verify and parse ``path``; it becomes the list in force unless it is older (``StaleVersion``)."""
        try:
            data = verify_file(path, self.trusted)
        except OSError as error:
            raise BadManifest(f"{self.kind} list {path}: {error.strerror or error}") from None
        parsed = parse_official(data) if self.kind == "official" else parse_bootstrap(data)
        if self.current is not None and parsed.version < self.current.version:
            raise StaleVersion(
                f"{self.kind} list {path}: version {parsed.version} is older than {self.current.version} in force"
            )
        self.current = parsed
        return parsed


def replaced(old: Sequence[tuple[str, str]], new: Sequence[tuple[str, str]]) -> list[str]:
    """Manifest ids held for images whose manifest changed: ``old``/``new`` are (image name, manifest id)."""
    fresh = dict(new)
    return [mid for name, mid in old if name in fresh and fresh[name] != mid]
