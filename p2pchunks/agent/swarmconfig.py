"""From the agent's configuration to the swarm's settings: listen address and profile, strict NAT, rate caps,
and the volunteer seeds of the signed bootstrap list as DHT routers and trackers (tagged with our farm).

A refused bootstrap list (bad signature, older version, unreadable) is logged and the swarm starts without it.
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import replace
from pathlib import Path

from ..config.schema import Config, split_hostport
from ..errors import P2PChunksError
from ..formats.seedlist import BootstrapList, ListInForce, shipped_keys, shipped_list
from ..formats.signing import TrustedKeys
from ..swarm.session import SwarmSettings

log = logging.getLogger(__name__)


def trusted_keys(config: Config) -> TrustedKeys:
    return shipped_keys().union(TrustedKeys.from_hex(config.warm.trusted_keys))


def with_bootstrap(settings: SwarmSettings, config: Config) -> SwarmSettings:
    """Add the volunteer seeds of the signed bootstrap list (DHT routers and trackers) to ``settings``."""
    path = Path(config.swarm.bootstrap_file) if config.swarm.bootstrap_file else shipped_list("bootstrap.toml")
    try:
        listed = ListInForce("bootstrap", trusted_keys(config)).offer(path)
    except P2PChunksError as error:
        log.warning("bootstrap list %s refused: %s", path, error)
        return settings
    assert isinstance(listed, BootstrapList)
    return replace(
        settings,
        dht_bootstrap=settings.dht_bootstrap + tuple(listed.dht_nodes),
        trackers=settings.trackers + tuple(with_farm(url, config.agent.farm) for url in listed.trackers),
    )


def swarm_settings(config: Config) -> SwarmSettings:
    section = config.swarm
    bootstrap = tuple(split_hostport(item) for item in section.bootstrap)
    return SwarmSettings(
        listen=section.listen,
        profile="seed" if config.agent.mode == "seed" else "node",
        inbound=section.inbound,
        utp=section.utp,
        dht=section.dht,
        dht_bootstrap=bootstrap,
        relaxed_dht=section.relaxed_dht,
        lsd=section.lsd,
        port_mapping=section.port_mapping,
        upload_rate_bps=section.upload_rate_bps,
        download_rate_bps=section.download_rate_bps,
        limit_local_peers=section.limit_local_peers,
        connections_limit=section.connections_limit,
        trackers=tuple(with_farm(url, config.agent.farm) for url in section.trackers),
    )


def with_farm(tracker: str, farm: str) -> str:
    """Name our farm to a tracker (it then lists same-farm peers first)."""
    if not farm:
        return tracker
    return f"{tracker}{'&' if '?' in tracker else '?'}farm={urllib.parse.quote(farm)}"
