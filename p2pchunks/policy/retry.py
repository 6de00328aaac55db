"""When to ask the hub again for a chunk it failed to deliver, and when to stop asking.

Owns the rules that make every fetch end. A hub failure of one chunk (timeout, refusal, wrong bytes) is retried
after a short backoff that doubles per failure but never exceeds ``max_backoff_s`` (one second by default), so a
hub that comes back is asked again within about a second. A chunk is *hopeless* once no peer holds it and either
the hub said definitively that it has no such chunk (``ChunkNotFound``) or the hub has failed for it for
``give_up_s`` in a row: the job then fails, naming the chunks and the last error of each, instead of waiting for
its hour-long timeout. Pure: chunk ids, errors as text and times in, decisions out.

It also owns the one backoff formula of p2pchunks (:func:`backoff_s`), which the hub client uses between the
retries of one request too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


def backoff_s(failures: int, *, base_s: float, max_s: float, jitter: float | None = None) -> float:
    """Seconds to wait after ``failures`` failures in a row (1 or more): ``base_s``·2^(failures−1), capped at
    ``max_s``. ``jitter``: a draw in [0, 1) that scales the wait by [0.5, 1.5), so that clients that failed
    together do not all try again at the same instant."""
    delay = min(max_s, base_s * 2.0 ** max(0, failures - 1))
    return delay if jitter is None else delay * (0.5 + jitter)


@dataclass
class _Record:
    first_at: float
    last_at: float
    failures: int
    error: str
    definitive: bool


@dataclass
class HubRetries:
    give_up_s: float = 30.0
    base_backoff_s: float = 0.25
    max_backoff_s: float = 1.0
    _records: dict[str, _Record] = field(default_factory=dict)

    def failed(self, chunk_id: str, now: float, error: str, *, definitive: bool = False) -> None:
        record = self._records.get(chunk_id)
        if record is None:
            self._records[chunk_id] = _Record(now, now, 1, error, definitive)
        else:
            record.last_at, record.error = now, error
            record.failures += 1
            record.definitive |= definitive

    def succeeded(self, chunk_id: str) -> None:
        self._records.pop(chunk_id, None)

    def ready(self, chunk_id: str, now: float) -> bool:
        """May the hub be asked for ``chunk_id`` now?"""
        record = self._records.get(chunk_id)
        if record is None:
            return True
        if record.definitive:
            return False
        backoff = backoff_s(record.failures, base_s=self.base_backoff_s, max_s=self.max_backoff_s)
        return now >= record.last_at + backoff

    def hopeless(self, pending: Iterable[str], now: float, held_by_peers: Callable[[str], bool]) -> dict[str, str]:
        """``chunk id → why`` for the pending chunks no source can deliver any more."""
        out: dict[str, str] = {}
        for chunk_id in pending:
            record = self._records.get(chunk_id)
            if record is None or held_by_peers(chunk_id):
                continue
            if record.definitive:
                out[chunk_id] = f"the hub has no such chunk ({record.error})"
            elif now - record.first_at >= self.give_up_s:
                out[chunk_id] = (
                    f"no peer has it and the hub failed {record.failures} times in {now - record.first_at:.0f} s "
                    f"(last: {record.error})"
                )
        return out


def describe_missing(hopeless: dict[str, str], *, most: int = 5) -> str:
    """One line naming the missing chunks (the first ``most``) and why."""
    shown = "; ".join(f"{chunk_id}: {why}" for chunk_id, why in list(hopeless.items())[:most])
    more = f" (and {len(hopeless) - most} more)" if len(hopeless) > most else ""
    return f"{len(hopeless)} chunks cannot be fetched — {shown}{more}"
