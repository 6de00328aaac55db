"""Building blocks for the integration tests: a published image, a hub, agents on distinct 127.0.0.x addresses."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libtorrent as lt
import trio

from p2pchunks.agent import Agent, open_agent
from p2pchunks.config.schema import Config
from p2pchunks.formats.manifest import Manifest
from p2pchunks.hub.publish import publish
from p2pchunks.swarm.session import SwarmSettings, session_settings
from p2pchunks.swarm.torrent import torrent_info

CHUNK = 64 * 1024  # small chunks: many pieces from a few MiB


@dataclass
class Image:
    manifest: Manifest
    path: Path
    source: Path


def make_image(tmp: Path, *, mib: float = 4, name: str = "img", seed: int = 1, hot: bool = True) -> Image:
    """A tree with a hot ``boot/kernel`` and a big ``disk.raw``, published into ``tmp/hub``."""
    rng = random.Random(seed)
    source = tmp / f"src-{name}"
    (source / "boot").mkdir(parents=True)
    (source / "boot" / "kernel").write_bytes(rng.randbytes(3 * CHUNK + 100))
    (source / "disk.raw").write_bytes(rng.randbytes(int(mib * 2**20)))
    result = publish(
        source, tmp / "hub", name=name, version="1", chunk_size=CHUNK, hot_paths=["boot/kernel"] if hot else ()
    )
    return Image(result.manifest, result.manifest_path, source)


_next = [10]


def address() -> str:
    """A fresh 127.0.0.x per agent (tests in one run never reuse one)."""
    _next[0] = _next[0] + 1 if _next[0] < 250 else 10
    return f"127.0.0.{_next[0]}"


def agent_config(tmp: Path, hub_url: str, *, name: str, ip: str | None = None, **sections: Mapping[str, Any]) -> Config:
    ip = ip or address()
    base: dict[str, dict[str, Any]] = {
        "agent": {"cache_dir": str(tmp / name), "hub": hub_url},
        "api": {"listen": f"{ip}:0"},
        "swarm": {"listen": f"{ip}:0", "utp": False, "lsd": False, "dht": False},
        "cache": {"budget_bytes": 2**30},
        "fetch": {"discovery_grace_s": 1.5, "hub_timeout_s": 5.0, "hub_retries": 1, "job_timeout_s": 120.0},
        "warm": {"official": False},
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return Config().replace(**base)


@asynccontextmanager
async def agents(configs: list[Config], *, swarm: bool = True) -> AsyncIterator[list[Agent]]:
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_agent(c, swarm=swarm)) for c in configs]


def connect_all(group: list[Agent], manifest: Manifest) -> None:
    """Introduce every agent to every other for ``manifest`` (what LSD/DHT/trackers do in the field)."""
    infohash = manifest.infohash
    assert infohash is not None
    for i, a in enumerate(group):
        for b in group[i + 1 :]:  # one direction: simultaneous dials both ways get dropped as self-connections
            if a.swarm is not None and b.swarm is not None:
                torrent = a.swarm.torrents.get(infohash)
                if torrent is not None and b.swarm.settings.inbound:
                    torrent.connect(b.swarm.settings.host, b.swarm.listen_port)
                elif (back := b.swarm.torrents.get(infohash)) is not None:
                    back.connect(a.swarm.settings.host, a.swarm.listen_port)


@asynccontextmanager
async def bare_torrent(
    manifest: Manifest, settings: SwarmSettings, directory: Path, *, have_all: bool = False
) -> AsyncIterator[tuple[Any, Any]]:
    """A bare libtorrent session with our settings (no agent code) holding the torrent of ``manifest`` stored in
    ``directory``: every piece claimed (``have_all``) or none. Yields (session, handle)."""
    pack: Any = session_settings(settings)
    params = lt.session_params()
    params.settings = pack
    session = lt.session(params)
    try:
        add = lt.add_torrent_params()
        add.ti = torrent_info(manifest)
        add.save_path = str(directory)
        if have_all:
            add.have_pieces = [True] * len(manifest.piece_ids)
        add.flags &= ~lt.torrent_flags.auto_managed
        add.flags &= ~lt.torrent_flags.paused
        yield session, session.add_torrent(add)
    finally:
        session.pause()
        with trio.CancelScope(shield=True):
            await trio.sleep(0.3)
        del session
