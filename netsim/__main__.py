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
from .scenarios import SCENARIOS, Knobs, run, topology


def _knobs(args: argparse.Namespace) -> Knobs:
    return Knobs(
        nodes=args.nodes,
        image_mib=args.image_mib,
        chunk_kib=args.chunk_kib,
        hub_latency_ms=args.hub_latency_ms,
        hub_mbps=None if args.hub_mbps <= 0 else args.hub_mbps,
        up_mbps=args.up_mbps,
        down_mbps=args.down_mbps,
        farms=args.farms,
        images=args.images,
        stagger_s=args.stagger_s,
        deadline_s=args.deadline_s,
        backend=args.backend,
    )


def _add_knobs(parser: argparse.ArgumentParser) -> None:
    defaults = Knobs()
    parser.add_argument("--nodes", type=int, default=defaults.nodes)
    parser.add_argument("--image-mib", type=float, default=defaults.image_mib)
    parser.add_argument("--chunk-kib", type=int, default=defaults.chunk_kib)
    parser.add_argument("--hub-latency-ms", type=float, default=defaults.hub_latency_ms)
    parser.add_argument("--hub-mbps", type=float, default=defaults.hub_mbps, help="hub egress cap (0: none)")
    parser.add_argument("--up-mbps", type=float, default=None, help="per-node upload cap")
    parser.add_argument("--down-mbps", type=float, default=None, help="per-node download cap")
    parser.add_argument("--farms", type=int, default=1)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--stagger-s", type=float, default=0.0)
    parser.add_argument("--deadline-s", type=float, default=defaults.deadline_s)
    parser.add_argument("--backend", choices=["loopback", "netns"], default="loopback")
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
    knobs = _knobs(args)
    if args.command == "run":
        result = trio.run(run, args.scenario, knobs, args.workdir)
        _finish([result], args)
        return 0 if not result["errors"] and result["corrupt_chunks"] == 0 else 1
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
