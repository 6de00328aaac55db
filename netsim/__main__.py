"""``python -m netsim``: run a scenario, compare the swarm with hub-only, or ask the flow model.

python -m netsim run farm-deploy --nodes 8 --image-mib 128 --json out.json --plot out.png
python -m netsim compare --nodes 8 --image-mib 128
python -m netsim model --nodes 100 1000 10000 --image-mib 2048
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from .report import plot, print_table, validate_result, write_json
from .scenarios import SCENARIOS, Knobs, knobs_for, run, topology

_RATES = ("hub_mbps", "up_mbps", "down_mbps", "wan_mbps", "seed_mbps")
"""Knobs where 0 means uncapped."""


def _knobs(args: argparse.Namespace, scenario: str = "farm-deploy") -> Knobs:
    """The knobs given on the command line over the scenario's defaults (``scenarios.knobs_for``)."""
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(Knobs)}
    given = {name: value for name, value in given.items() if value is not None}
    for name in _RATES:
        if name in given and given[name] <= 0:
            given[name] = None
    return knobs_for(scenario, **given)


def _add_knobs(parser: argparse.ArgumentParser) -> None:
    defaults = Knobs()
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
    p = sub.add_parser("model", help="the flow model's prediction for large farms")
    _add_knobs(p)
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    args = parser.parse_args(argv)

    if args.command == "model":
        return _model(args)
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


def _model(args: argparse.Namespace) -> int:
    from p2pchunks.policy.fetch import FetchParams

    from .model import ModelParams, predict

    fetch = FetchParams()
    params = ModelParams(hub_slots=fetch.hub_slots, coordination_s=fetch.discovery_grace_s + fetch.settle_s)

    knobs = _knobs(args)
    rows = []
    for size in args.sizes:
        for name in ("hub-only", "farm-deploy"):
            topo = topology(name, dataclasses.replace(knobs, nodes=size))
            prediction = predict(topo, params)
            rows.append(
                {
                    "nodes": size,
                    "scenario": name,
                    "last_node_done_s": round(prediction.last_node_done_s, 2),
                    "hub_bytes": prediction.hub_bytes,
                    "peer_bytes": prediction.peer_bytes,
                }
            )
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
