"""The farm view: who this node's farm-mates are, and how many of them hold each chunk it could evict.

Owns, refreshed every ``refresh_s`` on the agent's thread:

* the farm's **members**: this node plus the connected peers of the official torrents whose address is on a local
  network (private, loopback and link-local ranges: the ranges libtorrent itself puts in its local peer class),
  each held ``hold_s`` after it was last seen (``policy.custody.Membership``: a farm-mate that restarts, or whose
  torrent is added again after an eviction, is not a member leaving). libtorrent's ``local_connection`` peer flag
  means "we dialled it", not "on our network", so the address decides;
* the **replica count** of every chunk of the node's torrents: how many farm-mates hold it, from the torrents'
  per-piece availability when every peer is a farm-mate, else from the farm-mates' bitfields; for chunks of
  official images without a torrent, the custody assignment (``assigned_copies``). It is published to the cache's
  eviction as the ``FarmHints`` snapshot (replaced whole, read by the cache's threads);
* the **histogram** of farm copies (farm-mates plus this node) of the official list's chunks.

Who keeps what (custody) is the warmer's (``warmer.py``, ``policy/custody.py``). Must not know libtorrent, HTTP or
the cache's internals: it reads torrents and the cache through the few calls it makes.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

import trio

from ..formats.manifest import Manifest
from ..policy.custody import Membership, assigned_copies, histogram
from ..policy.eviction import FarmHints
from .fetchjob import PeerLike

log = logging.getLogger(__name__)


class FarmTorrent(Protocol):
    """What the view reads of a torrent (``swarm.torrent.Torrent``)."""

    manifest: Manifest

    def peers(self) -> Sequence[PeerLike]: ...
    def availability(self) -> list[int]: ...
    def peer_pieces(self) -> list[tuple[str, list[bool]]]: ...


def on_local_network(ip: str) -> bool:
    """An address of this node's local network: private, loopback or link-local (IPv4 and IPv6)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    private = (
        address.is_loopback
        or address.is_link_local
        or any(address in net for net in _PRIVATE if net.version == address.version)
    )
    return bool(private)


_PRIVATE = tuple(ipaddress.ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))


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
        """Add the farm-mates' copies of ``torrent``'s pieces to ``replicas``; the farm-mates connected to it."""
        peers = torrent.peers()
        mates = {peer.ip for peer in peers if on_local_network(peer.ip)}
        if not mates:
            return mates
        if all(on_local_network(peer.ip) for peer in peers):
            counts = torrent.availability()
        else:  # some peers are outside the farm: only the farm-mates' bitfields count
            counts = _local_counts(torrent.peer_pieces(), mates)
        ids = torrent.manifest.piece_ids
        for piece, n in enumerate(counts[: len(ids)]):
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
