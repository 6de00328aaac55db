"""When to warm which official image: pure schedule, no clock, no I/O.

A release ships the same official list to every node at once. If every node warmed at once, the hub would take N
downloads in the same minute, the storm the zos discussion feared. So each node waits a start delay drawn
uniformly from ``[0, max_delay_s)`` by hashing its own key with the list version (deterministic, so a restart
does not re-roll it, and different for every node and every release); the warm jobs then run peer-first, so most
nodes find the image already in their farm when their turn comes.

An image of the list is anything with a ``name`` and a ``priority`` (``formats.seedlist.OfficialImage``): the
policy does not import the format that carries it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Listed(Protocol):
    """An image of the official list, as the schedule sees it."""

    @property
    def name(self) -> str: ...
    @property
    def priority(self) -> int: ...


Image = TypeVar("Image", bound=Listed)


def start_delay(node_key: str, list_version: int, max_delay_s: float) -> float:
    """This node's delay before warming list ``list_version``: uniform in ``[0, max_delay_s)`` over nodes."""
    if max_delay_s <= 0:
        return 0.0
    digest = hashlib.blake2b(f"{node_key}\0{list_version}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * max_delay_s


@dataclass(frozen=True)
class WarmPlan(Generic[Image]):
    warm: tuple[Image, ...]
    """Images to warm now, in priority order."""
    unpin: tuple[str, ...]
    """Manifest ids of replaced versions: no longer official, evictable like user data."""


def plan_warm(images: Sequence[Image], held: Mapping[str, str], resolved: Mapping[str, str]) -> WarmPlan[Image]:
    """``held``: image name → manifest id already warmed; ``resolved``: image name → manifest id now listed."""
    warm = tuple(
        image
        for image in sorted(images, key=lambda i: (i.priority, i.name))
        if held.get(image.name) is None or held[image.name] != resolved.get(image.name, held[image.name])
    )
    listed = {image.name for image in images}
    unpin = tuple(
        mid for name, mid in sorted(held.items()) if name not in listed or (name in resolved and resolved[name] != mid)
    )
    return WarmPlan(warm, unpin)
