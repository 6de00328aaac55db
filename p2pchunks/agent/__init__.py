"""The agent: one trio nursery holding the cache, the hub client, the swarm and the services around them.

Built whole in :mod:`p2pchunks.agent.root` (the composition root); see docs/architecture.md for the data path.
"""

from .arrivals import Arrival, Arrivals, Source
from .jobs import Job
from .root import Agent, Ports, open_agent

__all__ = ["Agent", "Arrival", "Arrivals", "Job", "Ports", "Source", "open_agent"]
