"""netsim: run many real p2pchunks agents together and measure the swarm against the physical bound.

``topology`` describes a scenario (hub, nodes, image, NAT farms' WAN links) and ``bound`` its lower bound;
``model`` predicts it as a fluid for farms too large to run, with ``farmqueue`` the fetch policy's queue at the hub
chunk by chunk; ``runner`` runs it for real (``driver`` talks to each agent, ``sampler`` watches the hub, ``timeline``
reads stalls and CPU from what it saw); ``report`` prints, saves and plots results, ``sweep`` several farm sizes
beside the model; ``hubload`` loads the reference hub alone; ``netns`` (root only) builds isolated hosts, NAT farms
and bandwidth caps out of network namespaces. ``python -m netsim`` runs scenarios.
"""

from __future__ import annotations

from .bound import hot_bound_s, loopback_standin, lower_bound_s
from .farmqueue import QueueParams, QueueRun, run_queue
from .model import ModelParams, Prediction, predict
from .report import REQUIRED_KEYS, plot, print_table, validate_result, write_json
from .topofile import load_topology, topology_from_dict
from .topology import (
    HubSpec,
    ImageSpec,
    NodeSpec,
    Topology,
    WanSpec,
    farm,
    with_churn,
)

__all__ = [
    "REQUIRED_KEYS",
    "HubSpec",
    "ImageSpec",
    "ModelParams",
    "NodeSpec",
    "Prediction",
    "QueueParams",
    "QueueRun",
    "Topology",
    "WanSpec",
    "farm",
    "hot_bound_s",
    "load_topology",
    "loopback_standin",
    "lower_bound_s",
    "plot",
    "predict",
    "print_table",
    "run_queue",
    "topology_from_dict",
    "validate_result",
    "with_churn",
    "write_json",
]
