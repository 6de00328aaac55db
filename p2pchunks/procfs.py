"""What Linux's ``/proc`` says of a running process: its CPU time and its memory figures.

Read by the benchmarks and the crash tests (``agent.process.AgentProcess``) and by netsim's CPU ledger.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cpu_seconds", "memory_bytes"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int, proc: Path = Path("/proc")) -> float | None:
    """User + system CPU seconds process ``pid`` has used so far (its threads included, its children not); None when
    it cannot be read (gone, or no ``/proc``)."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may hold spaces; the fields after it start with the state (field 3)
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime: fields 14 and 15
    except (IndexError, ValueError):
        return None


def memory_bytes(pid: int, field: str = "VmRSS") -> int | None:
    """A memory figure of process ``pid`` from ``/proc/<pid>/status`` (``VmRSS``, ``RssAnon``...); None when it
    cannot be read."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return None
