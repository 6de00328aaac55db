"""``python -m netsim``: run a scenario, compare the swarm with hub-only, or ask the flow model.

python -m netsim run farm-deploy --nodes 8 --image-mib 128 --json out.json --plot out.png
python -m netsim compare --nodes 8 --image-mib 128
python -m netsim sweep --nodes 8 16 32 64 --image-mib 16 --hub-mbps 25 --json sweep.json --plot sweep.png
python -m netsim model --nodes 1000 10000 --image-mib 16 --hub-mbps 25
python -m netsim hubload --connections 1000 --rate-mbps 100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio

from .farmqueue import QueueParams, discovery_s
from .model import ModelParams, predict
from .report import plot, print_table, validate_result, write_json
from .scenarios import SCENARIOS, Knobs, knobs_for, run, topology

_RATES = ("hub_mbps", "up_mbps", "down_mbps", "wan_mbps", "seed_mbps")
"""Knobs where 0 means uncapped."""


def _knobs(args: argparse.Namespace, scenario: str = "farm-deploy") -> Knobs:
    """The knobs given on the command line over the scenario's defaults (``scenarios.knobs_for``); ``--nodes`` given
    as a list (sweep, model) is not a knob."""
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(Knobs)}
    given = {name: value for name, value in given.items() if value is not None and not isinstance(value, list)}
    for name in _RATES:
        if name in given and given[name] <= 0:
            given[name] = None
    return knobs_for(scenario, **given)


def _add_knobs(parser: argparse.ArgumentParser, *, sizes: bool = False) -> None:
    defaults = Knobs()
    if sizes:
        parser.add_argument("--nodes", type=int, nargs="+", default=None, help="farm sizes")
    else:
        parser.add_argument("--nodes", type=int, default=None, help=f"fetching nodes (default {defaults.nodes}; "
                            "nat-farms: 4 per farm)")  # fmt: skip
    parser.add_argument("--image-mib", type=float, default=None, help=f"default {defaults.image_mib}")
    parser.add_argument("--chunk-kib", type=int, default=None, help=f"default {defaults.chunk_kib}")
    parser.add_argument("--hub-latency-ms", type=float, default=None, help=f"default {defaults.hub_latency_ms}")
    parser.add_argument(
        "--hub-mbps", type=float, default=None, help=f"hub egress cap (0: none; default {defaults.hub_mbps})"
    )
    parser.add_argument("--up-mbps", type=float, default=None, help="per-node upload cap (0: none; default: none, "
                        "NAT scenarios 1000)")  # fmt: skip
    parser.add_argument("--down-mbps", type=float, default=None, help="per-node download cap (as --up-mbps)")
    parser.add_argument("--wan-mbps", type=float, default=None, help="each NAT farm's WAN cap, both ways (0: none; "
                        "default: none, nat-behind-seed 100, nat-farms 50)")  # fmt: skip
    parser.add_argument(
        "--seeds", type=int, default=None, help=f"seeds of the NAT scenarios (default {defaults.seeds})"
    )
    parser.add_argument("--seed-mbps", type=float, default=None, help=f"the seeds' caps in the NAT scenarios "
                        f"(0: none; default {defaults.seed_mbps})")  # fmt: skip
    parser.add_argument("--farms", type=int, default=None, help="farms (default 1; nat-farms 3)")
    parser.add_argument("--utp", action="store_true", default=None, help="uTP besides TCP (default off)")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--stagger-s", type=float, default=None)
    parser.add_argument("--deadline-s", type=float, default=None, help=f"default {defaults.deadline_s}")
    parser.add_argument("--backend", choices=["loopback", "netns"], default=None, help="default loopback")
    parser.add_argument("--workdir", type=Path, default=None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netsim")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run one scenario")
    p.add_argument("scenario", choices=SCENARIOS)
    _add_knobs(p)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    p = sub.add_parser("compare", help="hub-only and farm-deploy on the same topology")
    _add_knobs(p)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    p = sub.add_parser("sweep", help="farm-deploy at several farm sizes, the flow model beside each")
    _add_knobs(p, sizes=True)
    _add_model_knobs(p, cores=float(os.cpu_count() or 1), cpu_s_per_mib=CPU_S_PER_MIB, per_peer=CPU_S_PER_PEER_S)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--replay", type=Path, default=None, help="a saved sweep (its --json): the model again beside its "
                   "runs, nothing run")  # fmt: skip
    p = sub.add_parser("model", help="the flow model's prediction for large farms")
    _add_knobs(p, sizes=True)
    _add_model_knobs(p, cores=0.0, cpu_s_per_mib=0.0, per_peer=0.0)
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="farm sizes (as --nodes)")
    p.add_argument("--ideal", action="store_true", help="the ideal hub (no queue, no takeovers), not the farm queue")
    p = sub.add_parser("hubload", help="load the reference hub with many keep-alive clients: fairness, _stats latency")
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--rate-mbps", type=float, default=100.0)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--window-s", type=float, default=6.0)
    args = parser.parse_args(argv)

    if args.command == "model":
        return _model(args)
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "hubload":
        from .hubload import measure

        load = trio.run(partial(measure, args.connections, rate_mbps=args.rate_mbps or None,
                                latency_ms=args.latency_ms, window_s=args.window_s))  # fmt: skip
        print(json.dumps(load.as_json(), indent=2))
        return 0 if load.starving == 0 and not load.stats_failures and not load.failed else 1
    if args.command == "run" and args.scenario == "farm-cache":  # custody on and off: a table of its own
        from .farmcache import main_farm_cache

        return main_farm_cache(_knobs(args, args.scenario), args.workdir, args.json)
    if args.command == "run":
        result = trio.run(run, args.scenario, _knobs(args, args.scenario), args.workdir)
        _finish([result], args)
        return 0 if not result["errors"] and result["corrupt_chunks"] == 0 else 1
    knobs = _knobs(args)
    baseline = trio.run(run, "hub-only", knobs, args.workdir)
    swarm = trio.run(run, "farm-deploy", knobs, args.workdir)
    _finish([baseline, swarm], args)
    comparison = compare(baseline, swarm)
    print(json.dumps(comparison, indent=2))
    if args.json:
        write_json({"hub_only": baseline, "farm_deploy": swarm, "comparison": comparison}, args.json)
    return 0 if not baseline["errors"] and not swarm["errors"] else 1


def compare(baseline: dict[str, Any], swarm: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return None if not a or not b else round(a / b, 3)

    return {
        "speed_up": ratio(baseline["last_node_done_s"], swarm["last_node_done_s"]),
        "hub_egress_ratio": ratio(baseline["hub_bytes"], swarm["hub_bytes"]),
        "swarm_hub_bytes_per_image": swarm["hub_ratio"],
        "hub_only_hub_bytes_per_image": baseline["hub_ratio"],
        "swarm_ratio_to_bound": swarm["ratio_to_bound"],
        "hub_only_ratio_to_bound": baseline["ratio_to_bound"],
    }


def _finish(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    for result in results:
        validate_result(result)
        print_table(result)
    if args.command == "run" and args.json:
        write_json(results[0], args.json)
    if args.plot:
        plot(results, args.plot)


CPU_S_PER_MIB = 0.019
CPU_S_PER_PEER_S = 2.6e-4
"""The agents' CPU on loopback (farm-deploy, 16 MiB at 25 Mbit/s): seconds per MiB a node takes in, and per second
per connected farm-mate, fitted by least squares over ten runs at 8 to 64 nodes (docs/netsim.md). The sweep's model
charges them to the machine's cores by default."""


def _add_model_knobs(parser: argparse.ArgumentParser, *, cores: float, cpu_s_per_mib: float, per_peer: float) -> None:
    parser.add_argument("--discovery-s", type=float, default=None, help="when every node's candidate set is complete "
                        "(default: the model's law for the farm size, docs/netsim.md)")  # fmt: skip
    parser.add_argument("--cores", type=float, default=cores, help=f"cores the agents share (0: each its own; "
                        f"default {cores:g})")  # fmt: skip
    parser.add_argument("--cpu-s-per-mib", type=float, default=cpu_s_per_mib, help="agent CPU seconds per MiB a "
                        f"node fetches (0: CPU not modelled; default {cpu_s_per_mib:g})")  # fmt: skip
    parser.add_argument("--cpu-s-per-peer-s", type=float, default=per_peer, help="agent CPU seconds per second per "
                        f"connected farm-mate (default {per_peer:g})")  # fmt: skip


def model_params(args: argparse.Namespace, nodes: int, *, ideal: bool = False) -> ModelParams:
    """The flow model as the agents ship their policy (``QueueParams.from_policy``), with the run's timings."""
    from p2pchunks.policy.fetch import FetchParams

    fetch = FetchParams()
    if ideal:
        return ModelParams(hub_slots=fetch.hub_slots, coordination_s=fetch.discovery_grace_s + fetch.settle_s)
    discovery = args.discovery_s if args.discovery_s is not None else discovery_s(nodes, args.cores > 0)
    return ModelParams(
        hub_slots=fetch.hub_slots,
        queue=QueueParams.from_policy(discovery_s=discovery),
        cpu_s_per_mib=args.cpu_s_per_mib,
        cpu_s_per_peer_s=args.cpu_s_per_peer_s,
        cores=args.cores,
    )


def _sizes(args: argparse.Namespace, default: list[int]) -> list[int]:
    return list(args.nodes or getattr(args, "sizes", None) or default)


def _model(args: argparse.Namespace) -> int:
    knobs = _knobs(args)
    rows = []
    for size in _sizes(args, [100, 1000, 10000]):
        for name in ("hub-only", "farm-deploy"):
            topo = topology(name, dataclasses.replace(knobs, nodes=size))
            result = predict(topo, model_params(args, size, ideal=args.ideal)).as_result(topo, name)
            rows.append(
                {
                    "nodes": size,
                    "scenario": name,
                    "last_node_done_s": _round(result["last_node_done_s"]),
                    "ratio_to_bound": _round(result["ratio_to_bound"]),
                    "hub_bytes": result["hub_bytes"],
                    "hub_ratio": _round(result["hub_bytes"] / result["image_bytes"]),
                    "hot_done_s": _round(result["hot_done_s"]),
                    "takeovers": result["takeovers"],
                    "first_request_s": result["first_request_s"],
                    "peer_bytes": result["peer_bytes"],
                }
            )
    print(json.dumps(rows, indent=2))
    return 0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import plot_sweep, print_sweep, replay, sweep

    if args.replay:
        out = replay(json.loads(args.replay.read_text()), partial(model_params, args))
    else:
        out = trio.run(sweep, _sizes(args, [8, 16, 32, 64]), _knobs(args), partial(model_params, args), args.workdir)
        for result in out["runs"]:
            print_table(result)
    print_sweep(out["rows"])
    if args.json:
        write_json(out, args.json)
    if args.plot:
        plot_sweep(out["rows"], args.plot)
    return 0 if all(row["errors"] == 0 for row in out["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
