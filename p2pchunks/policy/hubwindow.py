"""How much of the hub a farm uses at once: the farm window, learned from measured hub time.

Owns the farm window ``K``: how many chunks the farm as a whole keeps in flight at the hub. Every node of a farm
splits the hub work with the others (rendezvous), but the hub's pipe is shared: if each of N nodes kept a fixed
number of requests in flight, the farm would keep N times that, where the hub's bandwidth-delay product is a few
chunks. Every request then waits behind all the others, every chunk takes seconds, deadlines fire on every node at
once and the hub sends the same chunks again.

Theory of operation. The nodes agree on the fetch order of the image (hot chunks first) and on each chunk's owner;
each sees, through its peers' HAVE messages, which chunks the farm already holds. So they can run one queue
without a coordinator: a node asks the hub for a chunk it owns only once fewer than ``K`` chunks *before* it in the
fetch order are still missing from the whole farm (``fetch.pick_hub_chunks``). The farm then keeps the first ``K``
missing chunks of the order in flight, whatever its size: boot-critical chunks first, the hub busy, no pile-up.

``K`` itself is learned from what each hub request measures: its time to the first byte (the hub's latency ``L``,
and any queue before it starts sending) and its transfer time. The hub sends the farm's ``K`` transfers at once,
sharing its egress, so a transfer takes ``K·t`` where ``t`` is one chunk alone at full rate: ``t ≈ transfer / K``.
The queue's round trip is the hub's latency plus ``reaction_s``, the time a node takes to notice that a chunk
arrived elsewhere in the farm and start the next one (half its look interval, on average). The pipe is full with
``1 + (L + reaction)/t`` chunks in flight (the bandwidth-delay product of that loop, in chunks); the target is one
more than that, so the hub never idles waiting for a request and a request waits about one chunk behind the others:

    K* = 2 + (L + reaction) / t

and each sample moves ``K`` by ``step · members`` of the way toward ``K*`` (each node sees about one in ``members``
of the farm's samples), at most all the way. The fixed point depends neither on ``K`` (``t`` is measured per chunk)
nor on N, and needs no unloaded sample: a farm that starts overloaded still measures the right ``t``. A hub that
does not share its egress (each connection gets its own rate, a transfer takes ``D`` however many run) measures a
``t`` that shrinks as ``K`` grows, and ``K`` settles at ``2 / (1 - (L + reaction)/D)``: more parallel requests the
more latency dominates, which is what such a hub needs.

Errors and timeouts halve ``K`` (the hub is failing, not just busy). A node starts its own requests no closer
together than ``t`` (``spacing_s``): the hub cannot serve them faster, and requests started together finish together
and leave the pipe empty for a round trip. A transport that cannot tell the first byte (zdb answers in one piece)
gives no sample; ``K`` stays where it is. ``initial`` is a few chunks, enough to fill a hub's pipe at the start of a
deploy that is over before a node has measured much (at 64 nodes, a small image is one chunk per node).

Pure: times and sizes in, decisions out; no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["HubWindow"]


@dataclass
class HubWindow:
    initial: float = 3.0
    """The farm window at the start, in chunks."""
    floor: float = 1.0
    ceiling: float = 256.0
    step: float = 0.05
    """How far toward ``K*`` one sample moves ``K`` (times ``members``, at most all the way)."""
    weight: float = 0.25
    """Smoothing of the measured latency and per-chunk transfer time (EWMA weight of a new sample)."""
    reaction_s: float = 0.05
    """How long a node takes, on average, to notice a free place in the farm's queue (half its look interval)."""
    members: int = 1
    """Nodes that share the hub work (the rendezvous candidates); the caller keeps it current."""
    farm: float = field(default=0.0)
    """This node's estimate of ``K``, the window the whole farm keeps."""
    srtt: float | None = None
    """Smoothed hub time of a full-size chunk (the fetch policy's deadlines follow it)."""
    latency: float | None = None
    per_chunk: float | None = None
    """Smoothed ``L`` and ``t`` (seconds)."""

    def __post_init__(self) -> None:
        if not self.farm:
            self.farm = self.initial

    def join(self, members: int) -> None:
        """The farm's size as this node sees it now."""
        self.members = max(1, members)

    def done(self, seconds: float, first_byte_s: float | None, full_size: bool) -> None:
        """A request completed after ``seconds``, its first byte after ``first_byte_s`` (None: not known). Only
        full-size chunks are samples (a small one is all latency)."""
        if not full_size or seconds <= 0:
            return
        self.srtt = self._smooth(self.srtt, seconds)
        if first_byte_s is None or not 0 <= first_byte_s < seconds:
            return
        self.latency = self._smooth(self.latency, first_byte_s)
        self.per_chunk = self._smooth(self.per_chunk, (seconds - first_byte_s) / self.farm)
        target = self.target
        assert target is not None
        self._set(self.farm + min(1.0, self.step * self.members) * (target - self.farm))

    def failed(self) -> None:
        """A request failed or timed out: halve the window."""
        self._set(self.farm / 2)

    @property
    def spacing_s(self) -> float:
        """The least time between two of this node's requests starting (0 before anything is measured)."""
        return self.per_chunk or 0.0

    @property
    def target(self) -> float | None:
        """``K*`` as measured so far."""
        if self.latency is None or self.per_chunk is None:
            return None
        return 2 + (self.latency + self.reaction_s) / max(self.per_chunk, 1e-6)

    def _smooth(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.weight) * old + self.weight * new

    def _set(self, farm: float) -> None:
        self.farm = min(self.ceiling, max(self.floor, farm))
