"""Which peers a seed's tracker hands to an announcing node, and in what order: near first, and mixed by source.

Owns the answer policy over a :class:`~p2pchunks.swarm.peertable.PeerTable`. The rules, in order:

1. **The asker's own address first** (its NAT-mates: nobody else can announce from that address), then **its own
   /24 (IPv4) or /48 (IPv6)**, that prefix's addresses in turn. The tracker sees those bits itself; a stranger
   cannot fake them from elsewhere.
2. **Then one peer per prefix per round**, the prefixes ordered by how many leading address bits they share with
   the asker; among prefixes equally near, one where some peer claims the asker's farm goes first; the rest is
   shuffled. Within a prefix, rounds go through its addresses in turn.
3. **No source above the runner-up.** The address with the most entries is handed out at most as often as the
   address with the second most could be; likewise the prefix with the most entries at most as often as the
   second. The asker's own prefix is exempt at the prefix level (not at the address level).

A stranger flooding from one address therefore gets at most as many peers into an answer as the biggest honest
address, and one flooding from a /24 as many as the biggest honest /24; every honest prefix gets a peer into every
answer that has room for one per prefix. The farm claim only breaks ties in the order; it never raises a share.

It must not know sockets, HTTP, trio or the clock; the randomness comes in as ``rng``.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Iterator

from .peertable import Entry, PeerTable, Prefix, prefix_of


def mix(
    table: PeerTable,
    asker: bytes,
    asker_id: bytes,
    asker_port: int,
    numwant: int,
    rng: random.Random,
    farm: str = "",
) -> list[Entry]:
    """Up to ``numwant`` peers of ``table`` for the node announcing ``asker_id`` from ``asker:asker_port``."""
    if numwant <= 0:
        return []
    me = asker + asker_port.to_bytes(2, "big")
    chosen: list[Entry] = []
    taken = {me}

    def take(entry: Entry) -> bool:
        compact = entry.compact
        if (entry.peer_id == asker_id and entry.address == asker) or compact in taken:
            return False
        taken.add(compact)
        chosen.append(entry)
        return True

    mates = table.held_by(asker)
    for entry in rng.sample(list(mates.values()), min(len(mates), numwant + 1)):  # +1: the asker may be among them
        if len(chosen) >= numwant:
            return chosen
        take(entry)

    own_prefix = prefix_of(asker)
    held_by = {address: len(held) for g in table.prefixes.values() for address, held in g.addresses.items()}
    held_by.pop(asker, None)
    address_caps = _runner_up_caps(held_by)
    demand = {key: sum(address_caps.get(address, 0) for address in g.addresses) for key, g in table.prefixes.items()}
    prefix_caps = _runner_up_caps(demand, exempt=own_prefix)
    neighbours = table.prefixes.get(own_prefix)
    if neighbours is not None:
        for entry in _picks(neighbours, asker, address_caps, prefix_caps[own_prefix], numwant, rng):
            if len(chosen) >= numwant:
                return chosen
            take(entry)
    groups = [g for g in table.prefixes.values() if g.key != own_prefix and prefix_caps.get(g.key, 0) > 0]
    order = {g.key: (-_shared_bits(asker, g.key), not (farm and farm in g.farms), rng.random()) for g in groups}
    groups.sort(key=lambda g: order[g.key])

    rounds = [_picks(g, asker, address_caps, prefix_caps[g.key], numwant, rng) for g in groups]
    while rounds and len(chosen) < numwant:
        still = []
        for picks in rounds:
            if len(chosen) >= numwant:
                break
            if any(take(entry) for entry in picks):  # the next peer of this prefix not handed out already
                still.append(picks)
        rounds = still
    return chosen


def _runner_up_caps(demand: dict[bytes, int], exempt: bytes | None = None) -> dict[bytes, int]:
    """Each source's cap: its demand, except that a single largest source is cut down to the second largest."""
    caps = dict(demand)
    ranked = heapq.nlargest(2, ((n, key) for key, n in demand.items() if n > 0))
    if len(ranked) >= 2 and ranked[0][0] > ranked[1][0] and ranked[0][1] != exempt:
        caps[ranked[0][1]] = ranked[1][0]
    return caps


def _picks(
    group: Prefix, asker: bytes, address_caps: dict[bytes, int], cap: int, numwant: int, rng: random.Random
) -> Iterator[Entry]:
    """At most ``cap`` peers of ``group``, one address after another in turn, each within its own cap."""
    budget = min(cap, numwant)
    addresses = [a for a in group.addresses if a != asker and address_caps.get(a, 0) > 0]
    addresses = rng.sample(addresses, min(len(addresses), budget))  # each gives one at least: enough for the budget
    queues: deque[list[Entry]] = deque()
    for _ in range(budget):
        if addresses:  # every address once before any twice; draw its peers on the first visit only
            address = addresses.pop()
            queue = rng.sample(list(group.addresses[address].values()), min(address_caps[address], budget))
        elif queues:
            queue = queues.popleft()
        else:
            return
        yield queue.pop()
        if queue:
            queues.append(queue)


def _shared_bits(address: bytes, prefix: bytes) -> int:
    """Leading bits ``prefix`` shares with ``address`` (-1 across address families)."""
    if len(prefix_of(address)) != len(prefix):
        return -1
    mine = int.from_bytes(address[: len(prefix)], "big")
    other = int.from_bytes(prefix, "big")
    return 8 * len(prefix) - (mine ^ other).bit_length()
