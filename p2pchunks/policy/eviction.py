"""Eviction policy: which cached chunks to drop, in which order, and when.

Owns: the pin levels, the budget (bytes and/or a share of the filesystem), the two watermarks, and the plan that
names the victims. It must not know SQLite, files or the clock: ``cache.py`` hands it plain data (sizes, last
access stamps, pins, the ids a running fetch or a mounted image needs) and applies the plan it gets back.

Theory of operation. Nothing is ever evicted for being old: a cache below its high watermark keeps everything.
Once the bytes held plus the bytes about to arrive exceed the high watermark (or a ``force``d gc asks), chunks go
in one total order — unpinned before user-pinned before official; within a level what the farm holds most often
first (``replicas``: farm-mates that hold the chunk, as this node last saw them), then least recently used, the
chunk id breaking ties — skipping protected ids, until the total is back at or below the low watermark. The gap
between the two marks is the hysteresis that keeps one eviction pass from running on every write. When even
every evictable chunk is not enough, the plan says by how much (``shortfall``); the cache then decides whether
the incoming chunk still fits under the hard budget.

The farm's last copies. A chunk in this node's custody that no farm-mate holds (``last_copy``) comes after every
other chunk, and is taken only while the bytes held plus the incoming ones would otherwise stay above the budget
itself — never just to reach the low watermark; the plan counts those (``last_copies``) so the cache can log them.
What the farm holds reaches the cache's threads as a :class:`FarmHints` snapshot that the agent replaces whole.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from fractions import Fraction
from math import isfinite

from ..errors import BadConfig


class Pin(enum.IntEnum):
    """How hard a chunk is held; eviction takes NONE first, then USER, OFFICIAL last."""

    NONE = 0
    USER = 1
    OFFICIAL = 2


PIN_LABELS = {Pin.NONE: "unpinned", Pin.USER: "pinned by a user", Pin.OFFICIAL: "official image"}


@dataclass(frozen=True, slots=True)
class Candidate:
    chunk_id: str
    size: int
    last_access: float
    pin: Pin
    replicas: int = 0
    """Farm-mates that hold it (this node not counted), as this node last saw them."""
    last_copy: bool = False
    """In this node's custody and held by no farm-mate: the farm's last copy."""


class FarmHints:
    """What the farm holds, as the agent last saw it: replicas by chunk and this node's custody. Written whole on
    the agent's thread (one reference, so a reader never sees half an update), read by the cache's threads."""

    def __init__(self) -> None:
        self._state: tuple[Mapping[str, int], AbstractSet[str]] = ({}, frozenset())

    @property
    def replicas(self) -> Mapping[str, int]:
        return self._state[0]

    @property
    def custody(self) -> AbstractSet[str]:
        return self._state[1]

    def set_replicas(self, replicas: Mapping[str, int]) -> None:
        self._state = (replicas, self._state[1])

    def set_custody(self, custody: AbstractSet[str]) -> None:
        self._state = (self._state[0], custody)

    def annotate(self, candidates: Iterable[Candidate]) -> list[Candidate]:
        """``candidates`` with their replica counts and whether each is the farm's last copy."""
        replicas, custody = self._state
        if not replicas and not custody:
            return list(candidates)
        out = []
        for c in candidates:
            held = replicas.get(c.chunk_id, 0)
            out.append(replace(c, replicas=held, last_copy=held == 0 and c.chunk_id in custody))
        return out


def _share(total: int, fraction: float) -> int:
    """``floor(total * fraction)`` without float noise (0.29 * 100 is 28.999…)."""
    return int(Fraction(fraction).limit_denominator(10**9) * total)


@dataclass(frozen=True, slots=True)
class Watermarks:
    """The budget and the two shares of it between which eviction runs."""

    budget_bytes: int
    high: float = 0.90
    low: float = 0.80

    def __post_init__(self) -> None:
        if isinstance(self.budget_bytes, bool) or not isinstance(self.budget_bytes, int) or self.budget_bytes < 0:
            raise BadConfig(f"budget_bytes must be a whole number >= 0, got {self.budget_bytes!r}")
        if not (isfinite(self.low) and isfinite(self.high) and 0 < self.low <= self.high <= 1):
            raise BadConfig(f"watermarks need 0 < low <= high <= 1, got low={self.low} high={self.high}")

    @property
    def high_bytes(self) -> int:
        return _share(self.budget_bytes, self.high)

    @property
    def low_bytes(self) -> int:
        return _share(self.budget_bytes, self.low)


def effective_budget(budget_bytes: int | None, budget_percent: float | None, fs_total_bytes: int) -> int:
    """The smaller of the budgets given (``budget_percent`` is a share of the filesystem, in (0, 100]).

    Neither given: the whole filesystem. Raises :class:`BadConfig` (a ``ValueError``) on nonsense.
    """
    if isinstance(fs_total_bytes, bool) or not isinstance(fs_total_bytes, int) or fs_total_bytes < 0:
        raise BadConfig(f"filesystem size must be a whole number >= 0, got {fs_total_bytes!r}")
    budgets = [fs_total_bytes] if budget_bytes is None and budget_percent is None else []
    if budget_bytes is not None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 0:
            raise BadConfig(f"budget_bytes must be a whole number >= 0, got {budget_bytes!r}")
        budgets.append(budget_bytes)
    if budget_percent is not None:
        if isinstance(budget_percent, bool) or not isinstance(budget_percent, int | float):
            raise BadConfig(f"budget_percent must be a number, got {budget_percent!r}")
        if not (isfinite(budget_percent) and 0 < budget_percent <= 100):
            raise BadConfig(f"budget_percent must be in (0, 100], got {budget_percent!r}")
        budgets.append(_share(fs_total_bytes, budget_percent / 100))
    return min(budgets)


def eviction_order(candidates: Iterable[Candidate]) -> list[Candidate]:
    """First victim first: the farm's last copies at the very end; by pin level, then the most farm replicas first,
    then least recently used, then chunk id (a total order)."""
    return sorted(candidates, key=lambda c: (c.last_copy, c.pin, -c.replicas, c.last_access, c.chunk_id))


@dataclass(frozen=True)
class EvictionPlan:
    victims: tuple[Candidate, ...]
    used_before: int
    used_after: int
    """Bytes held once the victims are gone (not counting ``incoming``)."""
    target: int
    """The low watermark the plan aims for (``used_after + incoming <= target`` when ``shortfall`` is 0)."""
    shortfall: int
    """Bytes still above ``target`` after every allowed victim."""
    reason: str
    incoming: int = 0
    last_copies: int = 0
    """Victims that were the farm's last copy of a custody chunk (only when the budget would break otherwise)."""

    @property
    def freed(self) -> int:
        return self.used_before - self.used_after


def plan_eviction(
    candidates: Iterable[Candidate],
    used_bytes: int,
    marks: Watermarks,
    *,
    protected: AbstractSet[str] = frozenset(),
    incoming: int = 0,
    force: bool = False,
) -> EvictionPlan:
    """Which chunks to evict so that ``used_bytes + incoming`` fits under the low watermark.

    Only when ``used_bytes + incoming`` exceeds the high watermark, or ``force``: then victims in
    :func:`eviction_order`, skipping ``protected`` ids, until the total is at or below the low watermark; the farm's
    last copies only while the total is still above the budget itself.
    """
    if used_bytes < 0 or incoming < 0:
        raise ValueError(f"used_bytes and incoming must be >= 0, got {used_bytes} and {incoming}")
    target = marks.low_bytes
    wanted = used_bytes + incoming
    if wanted <= marks.high_bytes and not force:
        reason = f"{wanted} B is within the high watermark ({marks.high_bytes} B): nothing is evicted"
        return EvictionPlan((), used_bytes, used_bytes, target, 0, reason, incoming)
    if wanted <= target:
        reason = f"forced, but {wanted} B is already within the low watermark ({target} B)"
        return EvictionPlan((), used_bytes, used_bytes, target, 0, reason, incoming)
    victims: list[Candidate] = []
    used = used_bytes
    for candidate in eviction_order(candidates):
        if used + incoming <= target:
            break
        if candidate.chunk_id in protected:
            continue
        if candidate.last_copy and used + incoming <= marks.budget_bytes:
            break  # the rest are the farm's last copies: kept while the budget holds
        victims.append(candidate)
        used -= candidate.size
    why = "forced" if wanted <= marks.high_bytes else f"{wanted} B is above the high watermark ({marks.high_bytes} B)"
    reason = f"{why}: evicting down to the low watermark ({target} B)"
    last = sum(1 for victim in victims if victim.last_copy)
    shortfall = max(0, used + incoming - target)
    return EvictionPlan(tuple(victims), used_bytes, used, target, shortfall, reason, incoming, last)


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def explain(plan: EvictionPlan) -> list[str]:
    """Human lines for ``cache gc --dry-run``: the reason, each victim and why it comes next, the totals."""
    lines = [plan.reason]
    for rank, victim in enumerate(plan.victims, 1):
        farm = f", {victim.replicas} farm copies" if victim.replicas else ""
        if victim.last_copy:
            farm = ", the farm's last copy"
        lines.append(
            f"#{rank} evict {victim.chunk_id}: {victim.size} B, {PIN_LABELS[victim.pin]}{farm}, "
            f"last access {_stamp(victim.last_access)}"
        )
    incoming = f" + {plan.incoming} B incoming" if plan.incoming else ""
    lines.append(
        f"{len(plan.victims)} chunks, {plan.freed} B freed: {plan.used_before} B -> {plan.used_after} B{incoming}"
        f" (target {plan.target} B)"
    )
    if plan.shortfall:
        lines.append(
            f"still {plan.shortfall} B above target: nothing else may be evicted (the rest is in use, or the farm's "
            "last copies of this node's custody)"
        )
    return lines
