"""The warm-up service: keeps the official images of the signed list in the cache, pinned ``official``.

Thin I/O around ``warmup`` (schedule) and ``seedlist`` (signed lists): read the list in force, wait this node's
start delay, fetch each image peer-first under the warm hub budget, unpin replaced versions, sleep until the next
refresh. A bad or older list is logged and the previous one stays in force.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ..errors import BadManifest, P2PChunksError
from ..formats.seedlist import BootstrapList, ListInForce, OfficialList
from ..formats.signing import TrustedKeys
from ..hub.client import Hub
from ..hub.pool import HubPool
from ..policy.eviction import Pin
from ..policy.warmup import plan_warm, start_delay

if TYPE_CHECKING:
    from .node import Agent

log = logging.getLogger(__name__)


class Warmer:
    def __init__(self, agent: Agent, list_path: Path, trusted: TrustedKeys) -> None:
        self.agent = agent
        self.list_path = list_path
        self.in_force = ListInForce("official", trusted)
        self.held: dict[str, str] = {}
        self.warmed_version: int | None = None
        self.errors: list[str] = []
        self.passes = 0

    async def run(self) -> None:
        config = self.agent.config.warm
        hub = HubPool(
            self.agent.config.agent.hub,
            concurrency=4,
            timeout=self.agent.config.fetch.hub_timeout_s,
            rate_bps=config.hub_rate_bps or None,
        )
        async with hub:
            while True:
                await self.refresh(hub)
                await trio.sleep(config.refresh_s)

    async def refresh(self, hub: Hub) -> None:
        """One pass: check the list, wait the start delay for a new version, warm what changed."""
        listed: OfficialList | BootstrapList | None
        try:
            listed = await trio.to_thread.run_sync(self.in_force.offer, self.list_path)
        except P2PChunksError as error:
            self._error(f"official list refused, previous stays in force: {error}")
            listed = self.in_force.current
        if not isinstance(listed, OfficialList):
            return
        if listed.version != self.warmed_version:
            delay = start_delay(self.agent.me, listed.version, self.agent.config.warm.max_start_delay_s)
            log.info("official list v%d: warming in %.0f s", listed.version, delay)
            await trio.sleep(delay)
        resolved: dict[str, str] = {}
        for image in listed.images:
            try:
                manifest = await self.agent.manifest(image.manifest)
                if image.manifest_id and manifest.manifest_id != image.manifest_id:
                    raise BadManifest(
                        f"{image.name}: manifest id {manifest.manifest_id} is not the listed {image.manifest_id}"
                    )
                resolved[image.name] = manifest.manifest_id
            except P2PChunksError as error:
                self._error(f"official image {image.name}: {error}")
        plan = plan_warm([i for i in listed.images if i.name in resolved], self.held, resolved)
        for manifest_id in plan.unpin:
            await trio.to_thread.run_sync(self.agent.cache.set_manifest_pin, manifest_id, Pin.NONE)
            self.held = {name: mid for name, mid in self.held.items() if mid != manifest_id}
        for image in plan.warm:
            job = await self.agent.fetch(resolved[image.name], pin=Pin.OFFICIAL, hub=hub)
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
