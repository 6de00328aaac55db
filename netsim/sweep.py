"""A sweep: farm-deploy at several farm sizes, each real figure beside the flow model's prediction.

Owns the sweep's table (one row per N: hub bytes per image, last node over T*, hot set over its own bound, the
agents' CPU seconds, the longest stall; model beside real) and its plot (hub ratio and bound ratio against N). The
rows are plain data built from run results and predictions (``row``), so they are tested without a run; ``sweep``
runs the scenarios one at a time (never two at once: on a small machine they would measure each other), and
``replay`` puts the model of today beside the runs of a saved sweep, without running them again.
It must not know how a run or a prediction is made.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from p2pchunks.errors import BadConfig

from .model import ModelParams, predict
from .report import new_figure, save_figure, validate_result
from .scenarios import Knobs, run, topology

COLUMNS = (
    ("nodes", "N"),
    ("hub_ratio", "hub bytes / image"),
    ("model_hub_ratio", "model"),
    ("ratio_to_bound", "last node / T*"),
    ("model_ratio_to_bound", "model"),
    ("hot_ratio_to_bound", "hot done / hot bound"),
    ("model_hot_ratio_to_bound", "model"),
    ("agent_cpu_s", "agent CPU s"),
    ("model_cpu_s", "model"),
    ("longest_stall_s", "longest stall s"),
    ("errors", "errors"),
)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def row(result: Mapping[str, Any], prediction: Mapping[str, Any]) -> dict[str, Any]:
    """One line of the sweep: the run's figures and the model's (``Prediction.as_result``) side by side."""
    validate_result(result)
    validate_result(prediction)
    image = result["image_bytes"] or 1
    return {
        "nodes": result["nodes"],
        "hub_ratio": _ratio(result["hub_bytes"], image),
        "model_hub_ratio": _ratio(prediction["hub_bytes"], prediction["image_bytes"]),
        "last_node_done_s": result["last_node_done_s"],
        "model_last_node_done_s": _round(prediction["last_node_done_s"]),
        "lower_bound_s": result["lower_bound_s"],
        "ratio_to_bound": result["ratio_to_bound"],
        "model_ratio_to_bound": _round(prediction["ratio_to_bound"]),
        "hot_done_s": result["hot_done_s"],
        "model_hot_done_s": _round(prediction.get("hot_done_s")),
        "hot_bound_s": result.get("hot_bound_s"),
        "hot_ratio_to_bound": _ratio(result["hot_done_s"], result.get("hot_bound_s")),
        "model_hot_ratio_to_bound": _ratio(prediction.get("hot_done_s"), result.get("hot_bound_s")),
        "agent_cpu_s": result.get("agent_cpu_s"),
        "model_cpu_s": _round(prediction.get("agent_cpu_s")),
        "hub_cpu_s": result.get("hub_cpu_s"),
        "longest_stall_s": result.get("longest_stall_s"),
        "longest_stall_start_s": result.get("longest_stall_start_s"),
        "load_average": result.get("load_average"),
        "errors": len(result["errors"]),
        "hub_reasons": _reasons(result.get("hub_reasons") or {}),
    }


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def _reasons(by_node: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """Why nodes went to the hub, summed over the nodes."""
    out: dict[str, int] = {}
    for reasons in by_node.values():
        for reason, count in reasons.items():
            out[reason] = out.get(reason, 0) + count
    return dict(sorted(out.items(), key=lambda item: -item[1]))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def print_sweep(rows: Sequence[Mapping[str, Any]], console: Console | None = None) -> None:
    """The sweep as one table, model beside real; then why the nodes went to the hub, per N."""
    table = Table(*(title for _, title in COLUMNS), title="netsim sweep: farm-deploy (model beside real)")
    for line in rows:
        table.add_row(*(_cell(line.get(key)) for key, _ in COLUMNS))
    out = console or Console(width=180)
    out.print(table)
    for line in rows:
        reasons = ", ".join(f"{name} {count}" for name, count in (line.get("hub_reasons") or {}).items())
        out.print(f"N = {line['nodes']}: hub requests by reason: {reasons or 'none'}", highlight=False)


def plot_sweep(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Hub bytes per image and last node over T* (and the hot set over its bound) against N, model beside real."""
    figure = new_figure()
    if not rows:
        raise BadConfig("a sweep plot needs at least one row")
    axes = figure.subplots(1, 3)
    nodes = [line["nodes"] for line in rows]
    for ax, key, title in (
        (axes[0], "hub_ratio", "hub bytes / image"),
        (axes[1], "ratio_to_bound", "last node / T*"),
        (axes[2], "hot_ratio_to_bound", "hot set done / its bound"),
    ):
        for prefix, style, label in (("", "o-", "real"), ("model_", "s--", "model")):
            points = [(n, line.get(prefix + key)) for n, line in zip(nodes, rows, strict=True)]
            shown = [(n, v) for n, v in points if v is not None]
            if shown:
                ax.plot([n for n, _ in shown], [v for _, v in shown], style, label=label)
        ax.set(xlabel="nodes (N)", title=title, xscale="log")
        ax.set_xticks(nodes, [str(n) for n in nodes])
        ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    save_figure(figure, path)


def predictions(
    runs: Sequence[Mapping[str, Any]], knobs: Knobs, params: Callable[[int], ModelParams]
) -> dict[str, Any]:
    """The sweep's rows, predictions and parameters for ``runs`` (real results, in size order) and the model now."""
    predicted: list[dict[str, Any]] = []
    used: list[dict[str, Any]] = []
    for result in runs:
        size = int(result["nodes"])
        topo = topology("farm-deploy", dataclasses.replace(knobs, nodes=size))
        model = params(size)
        used.append(dataclasses.asdict(model))
        predicted.append(predict(topo, model).as_result(topo, "farm-deploy (model)"))
    return {
        "knobs": dataclasses.asdict(knobs),
        "model_params": used,
        "rows": [row(r, p) for r, p in zip(runs, predicted, strict=True)],
        "runs": list(runs),
        "model": predicted,
    }


def replay(saved: Mapping[str, Any], params: Callable[[int], ModelParams]) -> dict[str, Any]:
    """A saved sweep (its JSON) with the model's predictions made again: the model checked without running again."""
    knobs = Knobs(**saved["knobs"])
    return predictions(saved["runs"], knobs, params)


async def sweep(
    sizes: Sequence[int], knobs: Knobs, params: Callable[[int], ModelParams], workdir: Path | None = None
) -> dict[str, Any]:
    """farm-deploy at each size in ``sizes`` (one at a time), each with the model's prediction (``params(N)``)
    beside it."""
    runs: list[dict[str, Any]] = []
    for size in sizes:
        sized = dataclasses.replace(knobs, nodes=size)
        load = [round(x, 2) for x in os.getloadavg()]
        result = await run("farm-deploy", sized, None if workdir is None else workdir / f"n{size}")
        result.setdefault("load_average", load)
        runs.append(result)
    return predictions(runs, knobs, params)
