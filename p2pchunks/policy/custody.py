"""Custody of the official images: which chunks each node of a farm keeps for the farm, and who the farm is.

Pure: plain data in, decisions out; no trio, no libtorrent, no SQLite, no clock (times come in).

Theory of operation
-------------------
A farm's nodes have small caches, and every node can hold only a part of the official list. Instead of every node
warming every image (and forgetting the same ones at the same time), the farm keeps ``copies`` copies of every
chunk of the list, split among its *members* by the rendezvous ranking of the fetch policy
(``fetch.rendezvous_order``): chunk ``c`` is in the custody of the first ``copies`` members of its order. Its first
custodian is ``owner_of(c, members)``, so when the custodians warm at once, the fetch policy's split has the first
one take the chunk from the hub and the second take it from the first over the swarm: a release costs the hub
about one copy per farm. Rendezvous hashing moves little when the farm changes: a member that joins takes over only
the chunks for which it ranks among the first ``copies``, a member that leaves hands each of its chunks to the next
one in that chunk's order — who fetches it from the custodian that stays.

Custody is bounded by ``share`` of the node's cache budget: images are taken in the list's priority order while
their custody fits (a chunk shared by several images counts once); from the first image that does not fit, the
rest are left out, and the plan says which.

Members are this node and the farm-mates it sees (connected peers of the official torrents on its local network),
each kept for ``hold_s`` after it was last seen: a farm-mate that restarts, or whose torrent is added again after
an eviction, is not a member leaving, and custody does not move back and forth with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .fetch import rendezvous_order


@dataclass(frozen=True)
class CustodyParams:
    copies: int = 2
    """Farm copies of every chunk of the official list."""
    share: float = 0.5
    """Most of the cache budget custody may take."""
    hold_s: float = 60.0
    """A farm-mate stays a member this long after it was last seen connected."""


@dataclass(frozen=True)
class CustodyImage:
    """An official image as custody sees it: its name and its distinct chunks with their sizes."""

    name: str
    chunks: Mapping[str, int]


@dataclass(frozen=True)
class ImageCustody:
    name: str
    chunks: frozenset[str]
    """This node's custody chunks of the image."""
    bytes: int


@dataclass(frozen=True)
class CustodyPlan:
    me: str
    members: frozenset[str]
    images: tuple[ImageCustody, ...]
    """The images whose custody this node keeps, in list order."""
    left_out: tuple[ImageCustody, ...]
    """The images the share left out (with the custody they would have cost)."""
    share_bytes: int
    chunks: frozenset[str] = field(default=frozenset())
    bytes: int = 0
    """Distinct chunks (and their bytes) of the images kept."""


def custodians(chunk_id: str, members: Iterable[str], copies: int) -> list[str]:
    """The members that keep ``chunk_id``: the first ``copies`` of its rendezvous order (all, if fewer)."""
    return rendezvous_order(chunk_id, members)[:copies]


def plan_custody(
    images: Sequence[CustodyImage], members: Iterable[str], me: str, *, copies: int, share_bytes: int
) -> CustodyPlan:
    """This node's custody of ``images`` (in priority order) among ``members`` (``me`` is always one)."""
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    farm = frozenset(members) | {me}
    taken: dict[str, int] = {}
    kept: list[ImageCustody] = []
    left: list[ImageCustody] = []
    for image in images:
        mine = {c: size for c, size in image.chunks.items() if me in custodians(c, farm, copies)}
        custody = ImageCustody(image.name, frozenset(mine), sum(mine.values()))
        extra = sum(size for c, size in mine.items() if c not in taken)
        if left or sum(taken.values()) + extra > share_bytes:
            left.append(custody)
            continue
        taken.update(mine)
        kept.append(custody)
    return CustodyPlan(me, farm, tuple(kept), tuple(left), share_bytes, frozenset(taken), sum(taken.values()))


def assigned_copies(chunk_id: str, members: Iterable[str], me: str, copies: int) -> int:
    """How many farm-mates (not counting ``me``) keep ``chunk_id`` by assignment: the replica count of a chunk whose
    holders this node cannot see (no torrent)."""
    return sum(1 for member in custodians(chunk_id, frozenset(members) | {me}, copies) if member != me)


@dataclass
class Membership:
    """The farm's members as this node sees them: every farm-mate seen within the last ``hold_s`` seconds."""

    hold_s: float
    _last_seen: dict[str, float] = field(default_factory=dict)

    def saw(self, mates: Iterable[str], now: float) -> frozenset[str]:
        """``mates``: the farm-mates connected now. Returns the members (farm-mates, not this node)."""
        for mate in mates:
            self._last_seen[mate] = now
        for mate, seen in list(self._last_seen.items()):
            if now - seen > self.hold_s:
                del self._last_seen[mate]
        return frozenset(self._last_seen)


HISTOGRAM_KEYS = ("0", "1", "2", "3+")


def histogram(copies: Iterable[int]) -> dict[str, int]:
    """How many chunks have 0, 1, 2 and 3 or more farm copies."""
    out = dict.fromkeys(HISTOGRAM_KEYS, 0)
    for n in copies:
        out[HISTOGRAM_KEYS[min(max(n, 0), 3)]] += 1
    return out
