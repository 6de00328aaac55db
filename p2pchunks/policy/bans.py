"""Who is refused, and for how long: peers that sent data failing its hash.

Owns the ban schedule. libtorrent bans a peer that alone sent a piece failing its hash, but per connection entry:
the same host reconnecting from a new port (every agent allows several connections per address, since a farm
behind one NAT shares one) is a new entry, so without a ban of our own a peer with a few rotten chunks is banned
again about once a second, for ever. Here a strike refuses the address for ``first_s``, each further strike
within ``forgive_s`` doubles that up to ``max_s``, and a refused address is let back in when its time is up (a
seed that repaired its rotten chunks is useful again). Pure: addresses and times in, the refused set out; the
swarm applies it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .retry import backoff_s


@dataclass
class BanBook:
    first_s: float = 60.0
    max_s: float = 3600.0
    forgive_s: float = 6 * 3600.0
    """A host without a strike for this long starts again at ``first_s``."""
    _strikes: dict[str, tuple[int, float]] = field(default_factory=dict)
    _until: dict[str, float] = field(default_factory=dict)

    def strike(self, ip: str, now: float) -> float:
        """Record a strike against ``ip``; return until when it is refused."""
        count, last = self._strikes.get(ip, (0, now))
        if now - last > self.forgive_s:
            count = 0
        count += 1
        self._strikes[ip] = (count, now)
        until = now + backoff_s(count, base_s=self.first_s, max_s=self.max_s)
        self._until[ip] = max(self._until.get(ip, 0.0), until)
        return self._until[ip]

    def refused(self, now: float) -> frozenset[str]:
        """The addresses refused at ``now`` (those whose time is up are let back in)."""
        for ip in [ip for ip, until in self._until.items() if until <= now]:
            del self._until[ip]
        for ip in [ip for ip, (_, last) in self._strikes.items() if now - last > self.forgive_s]:
            del self._strikes[ip]
        return frozenset(self._until)

    def next_change(self) -> float | None:
        """When ``refused`` will next let someone in (None: nobody is refused)."""
        return min(self._until.values(), default=None)
