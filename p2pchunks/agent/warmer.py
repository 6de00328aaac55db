"""The warm-up service: keeps the official images of the signed list in the cache, pinned ``official``.

Thin I/O around ``policy.warmup`` (schedule) and ``formats.seedlist`` (signed lists): read the list in force,
wait this node's start delay, fetch each image peer-first under the warm hub budget, unpin replaced versions,
sleep until the next refresh. A bad or older list is logged and the previous one stays in force. Must not know
HTTP or the cache's internals: it gets the few calls it makes.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from ..errors import BadManifest, P2PChunksError
from ..formats.manifest import Manifest
from ..formats.seedlist import BootstrapList, ListInForce, OfficialList
from ..formats.signing import TrustedKeys
from ..policy.eviction import Pin
from ..policy.warmup import plan_warm, start_delay
from .datapath import ChunkSource

log = logging.getLogger(__name__)

MAX_ERRORS = 50


class WarmJob(Protocol):
    state: str
    error: str

    @property
    def done(self) -> trio.Event: ...


@dataclass(frozen=True)
class WarmSettings:
    list_path: Path
    trusted: TrustedKeys
    refresh_s: float
    max_start_delay_s: float


class Warmer:
    def __init__(
        self,
        settings: WarmSettings,
        *,
        resolve: Callable[[str], Awaitable[Manifest]],
        fetch: Callable[[str, Pin, ChunkSource], Awaitable[WarmJob]],
        unpin: Callable[[str], Awaitable[None]],
        me: Callable[[], str],
    ) -> None:
        self.settings = settings
        self._resolve = resolve
        self._fetch = fetch
        self._unpin = unpin
        self._me = me
        self.in_force = ListInForce("official", settings.trusted)
        self.held: dict[str, str] = {}
        self.warmed_version: int | None = None
        self.errors: deque[str] = deque(maxlen=MAX_ERRORS)
        self.passes = 0

    async def run(self, hub: ChunkSource) -> None:
        while True:
            await self.refresh(hub)
            await trio.sleep(self.settings.refresh_s)

    async def refresh(self, hub: ChunkSource) -> None:
        """One pass: check the list, wait the start delay for a new version, warm what changed."""
        listed: OfficialList | BootstrapList | None
        try:
            listed = await trio.to_thread.run_sync(self.in_force.offer, self.settings.list_path)
        except P2PChunksError as error:
            self._error(f"official list refused, previous stays in force: {error}")
            listed = self.in_force.current
        if not isinstance(listed, OfficialList):
            return
        if listed.version != self.warmed_version:
            delay = start_delay(self._me(), listed.version, self.settings.max_start_delay_s)
            log.info("official list v%d: warming in %.0f s", listed.version, delay)
            await trio.sleep(delay)
        resolved: dict[str, str] = {}
        for image in listed.images:
            try:
                manifest = await self._resolve(image.manifest)
                if image.manifest_id and manifest.manifest_id != image.manifest_id:
                    raise BadManifest(
                        f"{image.name}: manifest id {manifest.manifest_id} is not the listed {image.manifest_id}"
                    )
                resolved[image.name] = manifest.manifest_id
            except P2PChunksError as error:
                self._error(f"official image {image.name}: {error}")
        plan = plan_warm([i for i in listed.images if i.name in resolved], self.held, resolved)
        for manifest_id in plan.unpin:
            await self._unpin(manifest_id)
            self.held = {name: mid for name, mid in self.held.items() if mid != manifest_id}
        for image in plan.warm:
            try:
                job = await self._fetch(resolved[image.name], Pin.OFFICIAL, hub)
            except P2PChunksError as error:
                self._error(f"warming {image.name} failed: {error}")
                continue
            await job.done.wait()
            if job.state == "done":
                self.held[image.name] = resolved[image.name]
            else:
                self._error(f"warming {image.name} failed: {job.error}")
        self.warmed_version = listed.version
        self.passes += 1

    def _error(self, message: str) -> None:
        log.warning(message)
        self.errors.append(message)
