"""What a run's samples say: the longest stall, when the hub's first chunk went, and the CPU the processes used.

Owns two measurements taken from the outside of a run: the *stall* (pure: computed from the timeline rows the
runner samples, ``(t_s, nodes done, hub bytes)``) and the CPU seconds of a process (read from ``/proc``). It must
not know how a run is driven nor what the agents do.

A stall is a period in which hub bytes and nodes-done both stood still while work remained (fewer nodes done than
are to finish). Peer traffic is not sampled, so a stall may hide peers still exchanging (at the start, during the
discovery grace, nothing moves at all). The samples bound it from below: a stall lasts at least from the first
sample that saw the standing values to the last one that still saw them (the sampling interval is the error); a
gap between samples (a sample that failed) counts as standing still when the values on both sides are equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from p2pchunks.procfs import cpu_seconds


@dataclass(frozen=True)
class Stall:
    start_s: float
    seconds: float


NO_STALL = Stall(0.0, 0.0)


def longest_stall(timeline: Sequence[Sequence[float]], to_finish: int) -> Stall:
    """The longest stall in ``timeline`` (rows ``(t_s, nodes done, hub bytes, ...)`` in time order) while fewer than
    ``to_finish`` nodes were done. The earliest of equally long stalls; ``NO_STALL`` when nothing ever stood still."""
    best = NO_STALL
    begin: tuple[float, float, float] | None = None  # (t, done, hub bytes) where the current still period began
    for row in timeline:
        t, done, hub = float(row[0]), float(row[1]), float(row[2])
        if done >= to_finish:
            break
        if begin is None or (done, hub) != (begin[1], begin[2]):
            begin = (t, done, hub)
            continue
        if t - begin[0] > best.seconds:
            best = Stall(begin[0], t - begin[0])
    return best


def first_hub_chunk_s(timeline: Sequence[Sequence[float]], manifest_bytes: int) -> float | None:
    """When the hub started sending chunks: the last sample before its bytes out first exceeded what the nodes'
    manifest fetches account for (``manifest_bytes``) by a paced piece or more; None if they never did."""
    before = None
    for row in timeline:
        if float(row[2]) > manifest_bytes + 16 * 1024:
            return before
        before = float(row[0])
    return None


class CpuLedger:
    """The last CPU reading of each named process (what it had used when last seen alive), and the readings when
    the clock started (``mark``), so that a run's CPU is told apart from the agents' boot."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.marked: dict[str, float] = {}

    def mark(self) -> None:
        """Remember the readings so far as the start (a process first read later started from zero)."""
        self.marked = dict(self.seconds)

    def read(self, name: str, pid: int | None) -> None:
        value = None if pid is None else cpu_seconds(pid)
        if value is not None:
            self.seconds[name] = max(value, self.seconds.get(name, 0.0))

    def total(self, names: Sequence[str], *, since_mark: bool = False) -> float:
        """CPU seconds of ``names`` (those ever read): in all, or since ``mark``."""
        read = [name for name in names if name in self.seconds]
        before = sum(self.marked.get(name, 0.0) for name in read) if since_mark else 0.0
        return round(sum(self.seconds[name] for name in read) - before, 2)
