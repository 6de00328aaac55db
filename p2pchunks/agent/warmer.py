"""The warm-up service: keeps the official images of the signed list in the cache, pinned ``official``.

Thin I/O around ``policy.warmup`` (schedule), ``policy.custody`` (who keeps what) and ``formats.seedlist`` (signed
lists): read the list in force, wait this node's start delay, fetch peer-first under the warm hub budget, unpin
replaced versions, sleep until the next refresh. A bad or older list is logged and the previous one stays in force.

Two ways to warm. Without custody (``custody.enabled`` off, a seed, or no swarm) every image is fetched whole and
pinned ``official`` as a manifest. With custody the node keeps only its share of the farm's copies: it joins every
official torrent (so farm-mates see each other), waits until the farm's membership has settled, computes its
custody (``plan_custody``, bounded by ``custody.share`` of its cache), pins those chunks ``official`` one by one,
fetches them (a job per image over just those chunks: from farm-mates first, since they hold them), and drops the
direct ``official`` pins of the chunks no longer in its custody (they stay cached until eviction needs the room).
It computes custody again on every refresh and whenever the membership changes (after it settles again).
Must not know HTTP or the cache's internals: it gets the few calls it makes.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import trio

from ..errors import BadManifest, P2PChunksError
from ..formats.manifest import Manifest
from ..formats.seedlist import BootstrapList, ListInForce, OfficialImage, OfficialList
from ..formats.signing import TrustedKeys
from ..policy.custody import CustodyImage, CustodyPlan, plan_custody
from ..policy.eviction import FarmHints, Pin
from ..policy.warmup import plan_warm, start_delay
from .datapath import ChunkSource

log = logging.getLogger(__name__)

MAX_ERRORS = 50


class WarmJob(Protocol):
    state: str
    error: str

    @property
    def done(self) -> trio.Event: ...


class Farm(Protocol):
    """The farm view (``farm.FarmView``) as the warmer uses it."""

    hints: FarmHints

    def members(self) -> frozenset[str]: ...
    async def changed(self, since: frozenset[str]) -> None: ...
    async def settled(self, settle_s: float) -> frozenset[str]: ...


@dataclass(frozen=True)
class WarmSettings:
    list_path: Path
    trusted: TrustedKeys
    refresh_s: float
    max_start_delay_s: float


@dataclass(frozen=True)
class CustodyRole:
    """What warming by custody needs besides plain warming."""

    farm: Farm
    copies: int
    share: float
    settle_s: float
    budget: Callable[[], int]
    """The cache's budget in bytes (custody takes at most ``share`` of it)."""
    join: Callable[[Manifest], Awaitable[object]]
    """Add the manifest's torrent (nothing wanted yet), so farm-mates meet on it."""
    pin: Callable[[Collection[str], bool], Awaitable[None]]
    """Pin chunks directly ``official`` (``True``: drop those direct pins instead)."""
    pinned: Callable[[], Awaitable[set[str]]]
    """The chunks pinned directly ``official``."""
    unofficial: Callable[[str], Awaitable[None]]
    """Lower a manifest's ``official`` pin (from whole-image warming) to none."""


Fetch = Callable[[str, Pin, ChunkSource, Collection[str] | None], Awaitable[WarmJob]]


class Warmer:
    def __init__(
        self,
        settings: WarmSettings,
        *,
        resolve: Callable[[str], Awaitable[Manifest]],
        fetch: Fetch,
        unpin: Callable[[str], Awaitable[None]],
        me: Callable[[], str],
        custody: CustodyRole | None = None,
    ) -> None:
        self.settings = settings
        self._resolve = resolve
        self._fetch = fetch
        self._unpin = unpin
        self._me = me
        self._role = custody
        self.in_force = ListInForce("official", settings.trusted)
        self.held: dict[str, str] = {}
        self.warmed_version: int | None = None
        self.errors: deque[str] = deque(maxlen=MAX_ERRORS)
        self.passes = 0
        self.official: list[Manifest] = []
        """The manifests of the list in force, in priority order."""
        self.custody: CustodyPlan | None = None
        self.warming = False

    async def run(self, hub: ChunkSource) -> None:
        while True:
            await self.refresh(hub)
            with trio.move_on_after(self.settings.refresh_s):
                if self._role is None or self.custody is None:
                    await trio.sleep_forever()
                await self._role.farm.changed(self.custody.members)
                log.info("the farm's membership changed: custody is computed again once it settles")

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
        manifests: dict[str, Manifest] = {}
        for image in listed.images:
            try:
                manifest = await self._resolve(image.manifest)
                if image.manifest_id and manifest.manifest_id != image.manifest_id:
                    raise BadManifest(
                        f"{image.name}: manifest id {manifest.manifest_id} is not the listed {image.manifest_id}"
                    )
                manifests[image.name] = manifest
            except P2PChunksError as error:
                self._error(f"official image {image.name}: {error}")
        images = sorted((i for i in listed.images if i.name in manifests), key=lambda i: (i.priority, i.name))
        self.official = [manifests[image.name] for image in images]
        resolved = {name: manifest.manifest_id for name, manifest in manifests.items()}
        plan = plan_warm(images, self.held, resolved)
        for manifest_id in plan.unpin:
            await self._unpin(manifest_id)
            self.held = {name: mid for name, mid in self.held.items() if mid != manifest_id}
        self.warming = True
        try:
            if self._role is None:
                for image in plan.warm:
                    await self._warm(image.name, resolved[image.name], Pin.OFFICIAL, hub, None)
            else:
                await self._warm_custody(self._role, images, manifests, hub)
        finally:
            self.warming = False
        self.warmed_version = listed.version
        self.passes += 1

    async def _warm(
        self, name: str, manifest_id: str, pin: Pin, hub: ChunkSource, only: Collection[str] | None
    ) -> None:
        try:
            job = await self._fetch(manifest_id, pin, hub, only)
        except P2PChunksError as error:
            self._error(f"warming {name} failed: {error}")
            return
        await job.done.wait()
        if job.state == "done":
            self.held[name] = manifest_id
        else:
            self._error(f"warming {name} failed: {job.error}")

    async def _warm_custody(
        self, role: CustodyRole, images: Sequence[OfficialImage], manifests: dict[str, Manifest], hub: ChunkSource
    ) -> None:
        """Keep this node's custody of ``images``: see the module's header."""
        for manifest in self.official:
            await role.join(manifest)
            await role.unofficial(manifest.manifest_id)
        members = await role.farm.settled(role.settle_s)
        listed = [_custody_image(image.name, manifests[image.name]) for image in images]
        share = int(role.share * role.budget())
        compute: Any = partial(plan_custody, listed, members, self._me(), copies=role.copies, share_bytes=share)
        plan: CustodyPlan = await trio.to_thread.run_sync(compute)
        self.custody = plan
        role.farm.hints.set_custody(plan.chunks)
        log.info(
            "custody among %d members: %d chunks (%.1f MiB) of %d images",
            len(members),
            len(plan.chunks),
            plan.bytes / 2**20,
            len(plan.images),
        )
        if plan.left_out:
            log.warning(
                "custody.share (%.0f MiB) leaves out the custody of %s",
                share / 2**20,
                ", ".join(image.name for image in plan.left_out),
            )
        await role.pin(plan.chunks, False)
        for custody in plan.images:
            manifest = manifests[custody.name]
            if custody.chunks:
                await self._warm(custody.name, manifest.manifest_id, Pin.NONE, hub, custody.chunks)
            else:
                self.held[custody.name] = manifest.manifest_id
        kept = {image.name for image in plan.images}
        self.held = {name: mid for name, mid in self.held.items() if name in kept}
        stale = await role.pinned() - plan.chunks
        if stale:
            await role.pin(stale, True)
            log.info(
                "custody: %d chunks no longer ours are unpinned (cached until eviction needs the room)", len(stale)
            )

    def custody_json(self) -> dict[str, Any] | None:
        plan = self.custody
        if plan is None:
            return None
        return {
            "members": len(plan.members),
            "images": [image.name for image in plan.images],
            "chunks": len(plan.chunks),
            "bytes": plan.bytes,
            "share_bytes": plan.share_bytes,
            "left_out": [image.name for image in plan.left_out],
            "warming": self.warming,
        }

    def _error(self, message: str) -> None:
        log.warning(message)
        self.errors.append(message)


def _custody_image(name: str, manifest: Manifest) -> CustodyImage:
    return CustodyImage(name, {chunk_id: manifest.chunk_size_of(chunk_id) for chunk_id in manifest.chunk_ids})
