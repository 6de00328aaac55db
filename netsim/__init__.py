"""netsim: run many real p2pchunks agents together and measure the swarm against the physical bound.

``topology`` describes a scenario (hub, nodes, image, NAT farms' WAN links) and ``bound`` its lower bound;
``model`` predicts it as a fluid for farms too large to run; ``report`` prints, saves and plots results; ``netns``
(root only) builds isolated hosts, NAT farms and bandwidth caps out of network namespaces. ``python -m netsim`` runs
scenarios.
"""

from __future__ import annotations

from .bound import loopback_standin, lower_bound_s
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
    "Topology",
    "WanSpec",
    "farm",
    "load_topology",
    "loopback_standin",
    "lower_bound_s",
    "plot",
    "predict",
    "print_table",
    "topology_from_dict",
    "validate_result",
    "with_churn",
    "write_json",
]
