"""Importing an rfs flist: every blob it names, fetched from its hub, and a p2pchunks manifest describing it.

Owns turning an ``.fl``/``.flist`` (a local file or an ``http(s)://`` URL) into a hub root a swarm can seed:

* every distinct block is fetched from the given hub(s) (a ``HubPool``) or, without one, from the stores the flist
  itself names (``routes.RoutedHub``: v2 routes in rfs's meaning, the v1 zdb backend), so verified against the
  flist's own id (BLAKE2b-128 for v1, BLAKE2b-256 for v2) and stored *as the hub stores it* (encrypted) at
  ``<out_dir>/chunks/ab/cd/<id>``,
  atomically; blobs already there and verifying are not fetched again, so an interrupted import resumes;
* the manifest: files in the flist's tree order, one ``ChunkRef(id, stored size, key)`` per block (the key lets a
  node decode the blob for the rfs cache), symlinks and permission bits; directories and special files are not
  represented (the flist stays the authority on the tree); ``extra[b"flist"]`` records where the image came from
  (version, v2 routes or v1 backend, hub URL, source); ``hot`` is chosen by :func:`pick_hot`;
* ``<out_dir>/manifests/<name>.p2p``, written atomically.

Must not know: the agent, the rfs cache, libtorrent beyond ``manifest.build_manifest``.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import httpx
import trio

from ..config.schema import FetchSection
from ..errors import BadConfig, BadFlist, HubError, HubTimeout, HubUnavailable, first_error
from ..files import atomic_write
from ..formats.manifest import MAX_CHUNK_BYTES, ChunkRef, FileEntry, Manifest, build_manifest
from ..hub.client import Hub, is_url, redact
from ..hub.pool import HubPool, hub_urls
from ..ids import chunk_relpath, default_verifier
from .flist import FlistImage, read_flist
from .routes import RoutedHub, store_routes

__all__ = ["DEFAULT_HOT_LIMIT", "MAX_FLIST_BYTES", "import_flist", "manifest_name_for", "pick_hot"]

log = logging.getLogger(__name__)

DEFAULT_HOT_LIMIT = 64
"""Most hot chunks (64 × 512 KiB = 32 MiB: a kernel and an initrd, or the head of a disk image)."""
MAX_FLIST_BYTES = 1 << 30
"""Largest flist accepted from a URL."""
DEFAULT_CHUNK_SIZE = 512 * 1024
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_BOOT_FILES = re.compile(r"\A(?:boot/)?(?:vmlinu[xz]|initrd|initramfs|kernel)[^/]*\Z")
_DISK_IMAGES = re.compile(r"\A[^/]+\.(?:raw|img|qcow2)\Z")


async def import_flist(
    flist: Path | str,
    *,
    hub: str | Sequence[str] | None = None,
    out_dir: Path,
    name: str | None = None,
    version: str = "1",
    concurrency: int = FetchSection.hub_concurrency,
    hot_limit: int = DEFAULT_HOT_LIMIT,
    client: Hub | None = None,
) -> Manifest:
    """Fetch every blob of ``flist`` from ``hub`` into ``out_dir`` and write ``out_dir/manifests/<name>.p2p``.

    ``flist`` is a path or an ``http(s)://`` URL; ``hub`` a hub URL or a list of them (any scheme of
    ``hub.client.transport_for``), or None: the stores the flist names. ``client`` replaces the hub client made
    from ``hub`` (it is then not closed here).
    """
    if concurrency < 1 or hot_limit < 0:
        raise BadConfig(f"import-flist: need concurrency ≥ 1 and hot_limit ≥ 0, got {concurrency}, {hot_limit}")
    source = str(flist)
    with tempfile.TemporaryDirectory(prefix="p2pchunks-import-") as tmp:
        if is_url(source):
            local = Path(tmp) / "download"
            await _download(source, local)
        else:
            local = Path(flist)
        image = await trio.to_thread.run_sync(read_flist, local)
    name = name if name is not None else manifest_name_for(source)
    files = _entries(image)
    blocks = _distinct_blocks(image)
    routes = store_routes(image) if hub is None else []
    shown = ", ".join(redact(url) for url in (hub_urls(hub) if hub is not None else [url for *_, url in routes]))
    owned: HubPool | RoutedHub | None = None
    if client is None:
        owned = client = (
            HubPool(hub, concurrency=concurrency) if hub is not None else RoutedHub(routes, concurrency=concurrency)
        )
    log.info("importing %s: %d files, %d distinct blocks from %s", source, len(files), len(blocks), shown)
    try:
        sizes = await _fetch_all(client, blocks, out_dir, concurrency)
    finally:
        if owned is not None:
            await owned.aclose()
    entries = [_with_sizes(entry, sizes) for entry in files]
    manifest = await trio.to_thread.run_sync(
        lambda: build_manifest(
            name,
            version,
            entries,
            directory=out_dir,
            chunk_size=_chunk_size(image),
            hot=pick_hot(entries, hot_limit),
            extra={b"flist": _flist_extra(image, shown, source)},
        )
    )
    target = out_dir / "manifests" / f"{manifest.name}.p2p"
    await trio.to_thread.run_sync(_write_atomic, target, manifest.encode())
    log.info("imported %s as %s (%d chunks, %d bytes)", source, target, len(blocks), manifest.unique_bytes)
    return manifest


def manifest_name_for(source: str) -> str:
    """A manifest name from a flist path or URL: its file name without ``.fl``/``.flist``, made name-safe."""
    raw = unquote(urlsplit(source).path) if is_url(source) else source
    stem = PurePosixPath(raw.replace("\\", "/")).name
    for suffix in (".flist", ".fl"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    cleaned = _BAD_NAME_CHARS.sub("-", stem).strip("-")[:128]
    if not cleaned or cleaned in (".", ".."):
        raise BadConfig(f"cannot derive a manifest name from {source!r}; pass one")
    return cleaned


def pick_hot(files: Sequence[FileEntry], limit: int = DEFAULT_HOT_LIMIT) -> list[str]:
    """Chunks a VM needs first: kernels/initrds (``boot/…`` or top level), then the head of a top-level disk image
    (``image.raw`` first); if the image has neither, its first chunks in file order. At most ``limit``, each once."""
    regular = [entry for entry in files if entry.symlink is None and entry.chunks]
    boot = [entry for entry in regular if _BOOT_FILES.match(entry.path)]
    disks = sorted(
        (entry for entry in regular if _DISK_IMAGES.match(entry.path)), key=lambda entry: entry.path != "image.raw"
    )
    hot: dict[str, None] = {}
    for entry in boot + disks if boot or disks else regular:
        for chunk in entry.chunks:
            if len(hot) >= limit:
                return list(hot)
            hot.setdefault(chunk.id)
    return list(hot)


# --- the flist → manifest entries ---------------------------------------------------------------------------------


def _entries(image: FlistImage) -> list[FileEntry]:
    """Files (sizes of their chunks still 0) and symlinks, in tree order; what a manifest cannot hold is logged."""
    entries = []
    skipped = 0
    for item in image.files:
        if item.kind == "file":
            chunks = tuple(ChunkRef(block.id, 0, block.key) for block in item.blocks)
            entries.append(FileEntry(item.path, item.size, item.mode, chunks))
        elif item.kind == "symlink" and item.target:
            entries.append(FileEntry(item.path, item.size, item.mode, symlink=item.target))
        elif item.kind != "dir":
            skipped += 1
    if skipped:
        log.info("%d special files or empty symlinks are not carried into the manifest", skipped)
    return entries


def _distinct_blocks(image: FlistImage) -> list[str]:
    seen: dict[str, None] = {}
    for item in image.files:
        seen.update(dict.fromkeys(block.id for block in item.blocks))
    return list(seen)


def _with_sizes(entry: FileEntry, sizes: dict[str, int]) -> FileEntry:
    if not entry.chunks:
        return entry
    chunks = tuple(ChunkRef(chunk.id, sizes[chunk.id], chunk.key) for chunk in entry.chunks)
    return FileEntry(entry.path, entry.size, entry.mode, chunks)


def _chunk_size(image: FlistImage) -> int:
    """The plain chunk size the image was cut with, as well as it can be told without decoding: the largest
    ``ceil(size / blocks)`` of its files (exact for any file of two or more blocks)."""
    sizes = [-(-item.size // len(item.blocks)) for item in image.files if item.blocks and item.size > 0]
    return min(max(sizes, default=DEFAULT_CHUNK_SIZE), MAX_CHUNK_BYTES)


def _flist_extra(image: FlistImage, hub: str, source: str) -> dict[bytes, object]:
    extra: dict[bytes, object] = {b"version": image.version, b"hub": hub, b"source": source}
    if image.routes:
        extra[b"routes"] = [[start, end, url] for start, end, url in image.routes]
    if image.backend is not None:
        extra[b"backend"] = json.dumps(image.backend, sort_keys=True)
    return extra


# --- fetching -------------------------------------------------------------------------------------------------------


async def _fetch_all(client: Hub, blocks: list[str], out_dir: Path, concurrency: int) -> dict[str, int]:
    """Each block's stored size, after making sure ``out_dir/chunks/ab/cd/<id>`` holds its verified bytes."""
    sizes: dict[str, int] = {}
    pending: Iterator[str] = iter(blocks)

    async def worker() -> None:
        for block_id in pending:  # shared iterator: workers take blocks in flist order
            target = out_dir / "chunks" / chunk_relpath(block_id)
            size = await trio.to_thread.run_sync(_verified_size, target, block_id)
            if size is None:
                data = await client.get_chunk(block_id)
                await trio.to_thread.run_sync(_write_atomic, target, data)
                size = len(data)
            sizes[block_id] = size

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(min(concurrency, len(blocks))):
                nursery.start_soon(worker)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    return sizes


def _verified_size(path: Path, block_id: str) -> int | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return len(data) if default_verifier(block_id, data) else None


async def _download(url: str, target: Path) -> None:
    """GET ``url`` into ``target`` (at most :data:`MAX_FLIST_BYTES`); hub errors as for chunks."""
    size = 0
    client = httpx.AsyncClient(timeout=httpx.Timeout(60.0), follow_redirects=True, trust_env=False)
    try:
        async with client, client.stream("GET", url) as response, await trio.open_file(target, "wb") as sink:
            if response.status_code != 200:
                kind = HubUnavailable if response.status_code >= 500 else HubError
                raise kind(f"flist {url}: server answered {response.status_code}")
            async for piece in response.aiter_bytes():
                size += len(piece)
                if size > MAX_FLIST_BYTES:
                    raise BadFlist(f"flist {url} is over {MAX_FLIST_BYTES} bytes")
                await sink.write(piece)
    except httpx.TimeoutException as error:
        raise HubTimeout(f"flist {url}: {type(error).__name__}") from error
    except httpx.RequestError as error:
        raise HubUnavailable(f"flist {url}: {type(error).__name__}: {error}") from error


def _write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, data, fsync=False)
