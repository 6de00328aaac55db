"""The status document (``GET /status``, ``p2pchunks status``) and the gauges ``/metrics`` adds to the counters.

Owns what an operator sees of a running agent, read from its services at the moment of asking; changes nothing.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from .jobs import job_json

if TYPE_CHECKING:
    from ..swarm.session import Swarm
    from .root import Agent


def gauges(agent: Agent) -> dict[str, float]:
    usage = agent.cache.usage()
    return {
        "cache_bytes": usage.bytes,
        "cache_chunks": usage.chunks,
        "cache_budget_bytes": usage.budget_bytes,
        "cache_damaged_found": agent.cache.damaged_found,
        **swarm_gauges(agent.swarm),
        "jobs_running": agent.jobs.running(),
        "scrub_passes": agent.scrubber.progress.passes,
        "scrub_checked_bytes": agent.scrubber.progress.checked_bytes,
    }


def swarm_gauges(swarm: Swarm | None) -> dict[str, float]:
    """The swarm's part: torrents, peers, refused addresses, and what the flood guard blocks now and ever."""
    if swarm is None:
        return dict.fromkeys(("torrents", "peers_connected", "peers_refused", "flood_blocked_now", "flood_blocks"), 0)
    return {
        "torrents": len(swarm.torrents),
        "peers_connected": sum(t.status().num_peers for t in swarm.torrents.values()),
        "peers_refused": len(swarm.blocked),
        "flood_blocked_now": len(swarm.guard.blocked),
        "flood_blocks": swarm.guard_blocks,
    }


def agent_status(agent: Agent) -> dict[str, Any]:
    """What ``GET /status`` answers. ``peer_bytes``: payload ``{ip: {"down", "up"}}`` per peer address, ever."""
    warmer = agent.warmer
    ledger = agent.swarm.refresh_peer_bytes() if agent.swarm else None
    if ledger is not None:
        agent.stats.bytes_to_peers = ledger.uploaded
    return {
        "mode": agent.config.agent.mode,
        "hub": agent.hub.url,
        "hubs": agent.hub.health(),
        "swarm_port": agent.ports.swarm,
        "api_port": agent.ports.api,
        "stats": agent.stats.as_json(),
        "gauges": gauges(agent),
        "integrity": {
            "damaged_found": agent.cache.damaged_found,
            "repaired": agent.repairs.repaired,
            "repair_failed": agent.repairs.failed,
            "scrub": dataclasses.asdict(agent.scrubber.progress),
        },
        "manifests": [
            {"id": m.manifest_id, "name": m.name, "version": m.version, "bytes": m.image_bytes}
            for m in agent.manifests.known.values()
        ],
        "jobs": [job_json(job) for job in agent.jobs.all()],
        "peer_bytes": ledger.as_json() if ledger is not None else {},
        "warm": None
        if warmer is None
        else {
            "passes": warmer.passes,
            "held": warmer.held,
            "version": warmer.warmed_version,
            "errors": list(warmer.errors)[-10:],
        },
    }
