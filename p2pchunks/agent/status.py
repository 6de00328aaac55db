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
        "custody_last_copies_evicted": agent.cache.last_copies_evicted,
        **_custody_gauges(agent),
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


def _custody_gauges(agent: Agent) -> dict[str, float]:
    """This node's custody and the farm's copies of the official list's chunks (only when custody runs)."""
    farm, custody = agent.farm, agent.warmer.custody_json() if agent.warmer else None
    if farm is None:
        return {}
    out: dict[str, float] = {"farm_members": len(farm.members())}
    out.update({f"farm_chunks_with_{key.replace('+', '_or_more')}_copies": n for key, n in farm.histogram.items()})
    if custody is not None:
        out.update(
            custody_images=len(custody["images"]),
            custody_chunks=custody["chunks"],
            custody_bytes=custody["bytes"],
            custody_images_left_out=len(custody["left_out"]),
        )
    return out


def custody_status(agent: Agent) -> dict[str, Any] | None:
    """``/status`` → ``custody``: this node's custody (images, chunks, bytes, what the share left out) and the farm
    as it sees it (members, how many chunks of the official list have 0, 1, 2, 3+ farm copies)."""
    if agent.farm is None:
        return None
    plan = agent.warmer.custody_json() if agent.warmer else None
    return {**(plan or {"images": [], "chunks": 0, "bytes": 0, "left_out": []}), "farm": agent.farm.as_json()}


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
        "custody": custody_status(agent),
    }
