"""The farm view: who this node's farm-mates are, and how many of them hold each chunk it could evict.

Owns, refreshed every ``refresh_s`` on the agent's thread:

* the farm's **members**: this node plus the connected peers of the official torrents whose address is on a local
  network (``swarm.addresses``: the ranges libtorrent itself puts in its local peer class),
  each held ``hold_s`` after it was last seen (``policy.custody.Membership``: a farm-mate that restarts, or whose
  torrent is added again after an eviction, is not a member leaving). libtorrent's ``local_connection`` peer flag
  means "we dialled it", not "on our network", so the address decides;
* the **replica count** of every chunk of the node's torrents: how many farm-mates hold it, from the farm-mates'
  bitfields; for chunks of
  official images without a torrent, the custody assignment (``assigned_copies``). It is published to the cache's
  eviction as the ``FarmHints`` snapshot (replaced whole, read by the cache's threads);
* the **histogram** of farm copies (farm-mates plus this node) of the official list's chunks.

Who keeps what (custody) is the warmer's (``warmer.py``, ``policy/custody.py``). Must not know libtorrent, HTTP or
the cache's internals: it reads torrents and the cache through the few calls it makes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

import trio

from ..formats.manifest import Manifest
from ..policy.custody import Membership, assigned_copies, histogram
from ..policy.eviction import FarmHints
from ..swarm.addresses import on_local_network

log = logging.getLogger(__name__)


class FarmTorrent(Protocol):
    """What the view reads of a torrent (``swarm.torrent.Torrent``)."""

    manifest: Manifest

    def peer_pieces(self) -> list[tuple[str, list[bool]]]: ...


class FarmView:
    def __init__(
        self,
        *,
        torrents: Callable[[], Iterable[FarmTorrent]],
        official: Callable[[], Sequence[Manifest]],
        held: Callable[[Sequence[str]], Awaitable[set[str]]],
        me: Callable[[], str],
        hints: FarmHints,
        hold_s: float,
        copies: int,
        refresh_s: float,
    ) -> None:
        self._torrents = torrents
        self._official = official
        self._held = held
        self._me = me
        self.hints = hints
        self._membership = Membership(hold_s)
        self._copies = copies
        self.refresh_s = refresh_s
        self._mates: frozenset[str] = frozenset()
        self._changed = trio.Event()
        self.histogram: dict[str, int] = histogram(())
        self.refreshes = 0

    # ---- what the warmer reads ----------------------------------------------------------------------------------

    def members(self) -> frozenset[str]:
        """This node and its farm-mates (seen, or held after they were last seen)."""
        return self._mates | {self._me()}

    async def changed(self, since: frozenset[str]) -> None:
        """Return once the members differ from ``since``."""
        while self.members() == since:
            await self._changed.wait()

    async def settled(self, settle_s: float) -> frozenset[str]:
        """The members once they have not changed for ``settle_s`` (at most ten times that in all)."""
        with trio.move_on_after(10 * settle_s):
            while True:
                seen = self.members()
                with trio.move_on_after(settle_s) as quiet:
                    await self.changed(seen)
                if quiet.cancelled_caught:
                    break
        return self.members()

    # ---- the refresh --------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.refresh()
        task_status.started()
        while True:
            await trio.sleep(self.refresh_s)
            await self.refresh()

    async def refresh(self) -> None:
        official = list(self._official())
        listed = {manifest.infohash for manifest in official}
        seen: set[str] = set()
        replicas: dict[str, int] = {}
        covered: set[str | None] = set()
        for torrent in list(self._torrents()):
            connected = self._count(torrent, replicas)
            if torrent.manifest.infohash in listed:
                seen |= connected
                covered.add(torrent.manifest.infohash)
        mates = self._membership.saw(seen, trio.current_time())
        if mates != self._mates:
            log.info("farm members: %d (%s)", len(mates) + 1, " ".join(sorted(mates)) or "alone")
            self._mates = mates
            self._changed.set()
            self._changed = trio.Event()
        members, me = self.members(), self._me()
        for manifest in official:
            if manifest.infohash not in covered:  # no torrent: who holds it is who keeps it
                for chunk_id in manifest.chunk_ids:
                    replicas.setdefault(chunk_id, assigned_copies(chunk_id, members, me, self._copies))
        self.hints.set_replicas(replicas)
        chunks = list(dict.fromkeys(c for manifest in official for c in manifest.chunk_ids))
        mine = await self._held(chunks) if chunks else set()
        self.histogram = histogram(replicas.get(c, 0) + (c in mine) for c in chunks)
        self.refreshes += 1

    def _count(self, torrent: FarmTorrent, replicas: dict[str, int]) -> set[str]:
        """Add the farm-mates' copies of ``torrent``'s pieces to ``replicas``; the farm-mates connected to it.

        Counted from the farm-mates' bitfields, one walk over the connections: libtorrent's per-piece availability
        would count peers outside the farm too, and it is empty once this node seeds the torrent."""
        bitfields = torrent.peer_pieces()
        mates = {ip for ip, _ in bitfields if on_local_network(ip)}
        if not mates:
            return mates
        ids = torrent.manifest.piece_ids
        for piece, n in enumerate(_local_counts(bitfields, mates)[: len(ids)]):
            if n > replicas.get(ids[piece], 0):
                replicas[ids[piece]] = n
        return mates

    def as_json(self) -> dict[str, Any]:
        return {"members": sorted(self.members()), "copies": dict(self.histogram), "refreshes": self.refreshes}


def _local_counts(bitfields: list[tuple[str, list[bool]]], mates: set[str]) -> list[int]:
    counts: list[int] = []
    for ip, pieces in bitfields:
        if ip not in mates:
            continue
        if len(counts) < len(pieces):
            counts.extend([0] * (len(pieces) - len(counts)))
        for piece, has in enumerate(pieces):
            counts[piece] += has
    return counts
