"""Showing a netsim result: a table on the terminal, a JSON file, completion curves as an image.

Owns the shape every runner's result must have (``REQUIRED_KEYS``, ``validate_result``) and its three renderings.
It must not know how a result was produced (loopback, netns or the flow model): a result is a plain dict of JSON
values. Optional keys it understands: ``timeline`` (rows ``[t_s, nodes_done, hub_bytes]`` or
``[t_s, nodes_done, hub_bytes, peer_bytes]``), ``left`` (names of nodes that left), ``backend``, ``hot_bound_s``,
``longest_stall_s`` (and its start), ``agent_cpu_s``, ``sample_errors``, and the accounting of ``accounting.py``:
``bytes_by_source`` (totals), ``per_node`` (a line per node) and ``wan`` (per NAT farm).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from p2pchunks.errors import BadConfig

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REQUIRED_KEYS = (
    "scenario",
    "nodes",
    "image_bytes",
    "hub_bytes",
    "peer_bytes",
    "per_node_done_s",
    "last_node_done_s",
    "lower_bound_s",
    "ratio_to_bound",
    "hot_done_s",
    "errors",
    "corrupt_chunks",
)
MIB = 1024 * 1024


def validate_result(result: Mapping[str, Any]) -> None:
    """Raise :class:`BadConfig` naming every required key ``result`` lacks."""
    if not isinstance(result, Mapping):
        raise BadConfig(f"a netsim result must be a dict, got {type(result).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in result]
    if missing:
        raise BadConfig(f"netsim result {result.get('scenario', '?')!r} lacks keys: {', '.join(missing)}")


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f} s"


def _mib(value: Any) -> str:
    return "-" if value is None else f"{float(value) / MIB:,.1f} MiB"


def _number(value: Any) -> str:
    """Bytes as MiB, without the unit (table columns name it)."""
    return f"{float(value) / MIB:,.1f}"


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (not empty), nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summary_rows(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The table's rows as (label, text)."""
    validate_result(result)
    image = result["image_bytes"] or 0
    done = [float(d) for d in result["per_node_done_s"] if d is not None]
    hub_copies = f" ({result['hub_bytes'] / image:.2f}× image)" if image else ""
    rows = [
        ("scenario", f"{result['scenario']}" + (f" ({result['backend']})" if result.get("backend") else "")),
        ("nodes", f"{result['nodes']} ({len(done)} done)"),
        ("image", _mib(image)),
        ("hub bytes", _mib(result["hub_bytes"]) + hub_copies),
        ("peer bytes", _mib(result["peer_bytes"])),
    ]
    if done:
        rows.append(("done p50 / p90", f"{_seconds(quantile(done, 0.5))} / {_seconds(quantile(done, 0.9))}"))
    rows += [
        ("last node done", _seconds(result["last_node_done_s"])),
        ("lower bound", _seconds(result["lower_bound_s"])),
        ("ratio to bound", "-" if result["ratio_to_bound"] is None else f"{result['ratio_to_bound']:.2f}"),
        ("hot chunks done", _seconds(result["hot_done_s"])),
    ]
    if result.get("hot_bound_s"):
        rows.append(("hot set bound", _seconds(result["hot_bound_s"])))
    if result.get("longest_stall_s") is not None:
        since = _seconds(result.get("longest_stall_start_s"))
        rows.append(("longest stall", f"{_seconds(result['longest_stall_s'])} from {since}"))
    if result.get("agent_cpu_s") is not None:
        rows.append(("agent CPU", _seconds(result["agent_cpu_s"])))
    if result.get("sample_errors"):
        rows.append(("sample gaps", str(len(result["sample_errors"]))))
    rows += [
        ("errors", str(len(result["errors"]))),
        ("corrupt chunks", str(result["corrupt_chunks"])),
    ]
    if result.get("left"):
        rows.append(("left", str(len(result["left"]))))
    rows += _source_rows(result, image)
    return rows


def _times(value: float, image: float) -> str:
    return _mib(value) + (f" ({value / image:.2f}× image)" if image else "")


def _source_rows(result: Mapping[str, Any], image: float) -> list[tuple[str, str]]:
    """Where fetching nodes' bytes came from, what seeds uploaded, what entered each NAT farm."""
    sources = result.get("bytes_by_source")
    rows: list[tuple[str, str]] = []
    if sources:
        for label, key in (("from farm-mates", "from_farm"), ("from seeds", "from_seed"), ("from other farms",
                           "from_other"), ("from unknown peers", "from_unknown")):  # fmt: skip
            if key != "from_unknown" or sources.get(key):
                rows.append((label, _mib(sources.get(key, 0))))
        if result.get("seeds"):
            rows.append(("seed upload", _times(sources.get("seed_upload", 0), image)))
    for farm, link in sorted((result.get("wan") or {}).items()):
        rows.append((f"WAN in/out {farm}", f"{_times(link['in_bytes'], image)} / {_mib(link['out_bytes'])}"))
    return rows


NODE_COLUMNS = ("node", "farm", "role", "done", "MiB from hub", "farm-mates", "seeds", "other farms", "uploaded")


def node_rows(result: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """One row per node of ``per_node`` (empty without it): MiB from each source, and uploaded."""
    per_node: Mapping[str, Mapping[str, Any]] = result.get("per_node") or {}
    rows: list[tuple[str, ...]] = []
    for name, line in per_node.items():
        finished = line.get("done_s")
        peers = line["from_peers"]
        rows.append(
            (
                name,
                str(line["farm"]),
                str(line["role"]),
                _seconds(finished) if line.get("fetches", True) else "full",
                _number(line["from_hub"]),
                _number(peers.get("farm", 0)),
                _number(peers.get("seed", 0)),
                _number(peers.get("other", 0) + peers.get("unknown", 0)),
                _number(line["uploaded"]),
            )
        )
    return rows


def print_table(result: Mapping[str, Any], console: Console | None = None) -> None:
    """Print the result as a two-column table (to ``console``, default stdout), then its errors."""
    table = Table(title=f"netsim: {result.get('scenario', '?')}", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for label, text in summary_rows(result):
        style = "red" if label in ("errors", "corrupt chunks") and text != "0" else None
        table.add_row(label, text, style=style)
    out = console or Console()
    out.print(table)
    nodes = node_rows(result)
    if nodes:
        per_node = Table(*NODE_COLUMNS, title="bytes per node")
        for row in nodes:
            per_node.add_row(*row)
        out.print(per_node)
    for error in result["errors"]:
        out.print(f"[red]error:[/red] {error}", markup=True, highlight=False)


def _jsonable(value: Any) -> Any:
    """Non-finite floats become null (JSON has no inf/nan); tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def write_json(result: Mapping[str, Any], path: Path) -> None:
    """Write ``result`` (or any dict of results) as indented JSON, atomically (temp file, then rename)."""
    path = Path(path)
    text = json.dumps(_jsonable(result), indent=2, sort_keys=True, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(text)
    Path(tmp.name).replace(path)


def new_figure() -> Figure:
    """An empty figure for a plot of results (matplotlib: ``pip install 'p2pchunks[netsim]'``)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise BadConfig(
            "plotting needs matplotlib: pip install 'p2pchunks[netsim]' (or pip install matplotlib)"
        ) from None
    return Figure(figsize=(12, 4.5), layout="constrained")


def save_figure(figure: Figure, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def plot(results: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Completion curves (nodes done vs time) and cumulative hub/peer bytes vs time, one line per result."""
    figure = new_figure()
    for result in results:
        validate_result(result)
    done_ax, bytes_ax = figure.subplots(1, 2)
    for result in results:
        label = str(result["scenario"])
        done = sorted(float(d) for d in result["per_node_done_s"] if d is not None)
        (line,) = done_ax.step([0.0, *done], range(len(done) + 1), where="post", label=label)
        color = line.get_color()
        timeline = result.get("timeline") or []
        if timeline:
            times = [float(row[0]) for row in timeline]
            bytes_ax.plot(times, [row[2] / MIB for row in timeline], color=color, label=f"{label}: hub")
            if all(len(row) > 3 for row in timeline):
                bytes_ax.plot(
                    times, [row[3] / MIB for row in timeline], linestyle="--", color=color, label=f"{label}: peers"
                )
        else:
            end = float(result["last_node_done_s"] or (done[-1] if done else 0.0))
            bytes_ax.scatter([end], [result["hub_bytes"] / MIB], color=color, label=f"{label}: hub (total)")
            bytes_ax.scatter(
                [end], [result["peer_bytes"] / MIB], marker="x", color=color, label=f"{label}: peers (total)"
            )
        if result["lower_bound_s"]:
            done_ax.axvline(float(result["lower_bound_s"]), color="grey", linestyle=":", linewidth=1)
    done_ax.set(xlabel="time (s)", ylabel="nodes done", title="completion (dotted: lower bound)")
    bytes_ax.set(xlabel="time (s)", ylabel="MiB sent (cumulative)", title="bytes from hub vs peers")
    for ax in (done_ax, bytes_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    save_figure(figure, path)
