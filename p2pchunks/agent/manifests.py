"""The manifests an agent knows: found by id, name, path or URL, remembered on disk and in the cache index.

Owns ``<cache>/manifests/<id>.p2p`` (each written atomically once), the in-memory table of known manifests
(bounded by what is on disk: manifests are small and few), resolving a reference the way a user gives it, and
telling the swarm about each new one (``on_new``). Must not know how chunks are fetched.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import trio

from ..cache.store import ChunkCache
from ..errors import BadManifest, HubError, ManifestNotFound
from ..files import atomic_write
from ..formats.manifest import Manifest
from ..policy.eviction import Pin

log = logging.getLogger(__name__)


class ManifestSource(Protocol):
    async def get_manifest(self, name_or_url: str) -> bytes: ...


class ManifestBook:
    def __init__(
        self,
        directory: Path,
        cache: ChunkCache,
        hub: ManifestSource,
        on_new: Callable[[Manifest], Awaitable[object]],
        *,
        fsync: bool = True,
    ) -> None:
        self.directory = directory
        self._cache = cache
        self._hub = hub
        self._on_new = on_new
        self._fsync = fsync
        self.known: dict[str, Manifest] = {}

    def find(self, ref: str) -> Manifest | None:
        """A known manifest by id, or the newest known by that name."""
        found = self.known.get(ref)
        if found is not None:
            return found
        named = [m for m in self.known.values() if m.name == ref]
        return named[-1] if named else None

    def referencing(self, chunk_id: str) -> list[Manifest]:
        return [m for m in self.known.values() if m.has_chunk(chunk_id)]

    async def resolve(self, ref: str) -> Manifest:
        """A manifest by id, name (newest known), local ``.p2p`` path, URL or hub name; remembered."""
        found = self.find(ref)
        if found is not None:
            return found
        path = Path(ref)
        if ref.endswith(".p2p") and await trio.to_thread.run_sync(path.is_file):
            data = await trio.to_thread.run_sync(path.read_bytes)
        else:
            try:
                data = await self._hub.get_manifest(ref)
            except HubError as error:
                raise ManifestNotFound(f"manifest {ref!r}: {error}") from error
        manifest = decode(data, ref)
        await self.remember(manifest, data)
        return manifest

    async def remember(self, manifest: Manifest, data: bytes | None = None, pin: Pin = Pin.NONE) -> None:
        """Record ``manifest`` in the cache index and on disk (once), pin it if asked, and share what we hold."""
        if manifest.manifest_id in self.known:
            if pin is not Pin.NONE:
                await trio.to_thread.run_sync(self._cache.set_manifest_pin, manifest.manifest_id, pin)
            return
        self.known[manifest.manifest_id] = manifest
        blob = data if data is not None else manifest.encode()
        path = self.directory / f"{manifest.manifest_id}.p2p"

        def store() -> None:
            self.directory.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                atomic_write(path, blob, fsync=self._fsync)
            self._cache.record_manifest(manifest.manifest_id, manifest.name, manifest.chunk_ids, pin)

        await trio.to_thread.run_sync(store)
        await self._on_new(manifest)

    async def load_known(self) -> None:
        """Remember every manifest stored by an earlier run (a bad file is logged and skipped)."""

        def read_all() -> list[tuple[Manifest, bytes]]:
            out = []
            for path in sorted(self.directory.glob("*.p2p")):
                try:
                    data = path.read_bytes()
                    out.append((decode(data, str(path)), data))
                except (OSError, BadManifest) as error:
                    log.warning("ignoring manifest %s: %s", path, error)
            return out

        for manifest, data in await trio.to_thread.run_sync(read_all):
            await self.remember(manifest, data)


def decode(data: bytes, where: str) -> Manifest:
    """A manifest from its bytes, with an error that says what was expected when they are not one."""
    try:
        return Manifest.decode(data)
    except BadManifest as error:
        raise BadManifest(f"{where} is not a usable p2pchunks manifest (a bencoded .p2p document): {error}") from None
