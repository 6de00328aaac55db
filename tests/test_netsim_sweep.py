"""The sweep's rows, table and plot from plain results (no run: the runs are the runner's, tested on their own)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from netsim.farmqueue import QueueParams
from netsim.model import ModelParams, predict
from netsim.scenarios import knobs_for, topology
from netsim.sweep import COLUMNS, plot_sweep, print_sweep, row
from p2pchunks.errors import BadConfig

MIB = 1024 * 1024


def real(nodes: int, **overrides: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "scenario": "farm-deploy",
        "nodes": nodes,
        "image_bytes": 16 * MIB,
        "hub_bytes": 17 * MIB,
        "peer_bytes": (nodes - 1) * 16 * MIB,
        "per_node_done_s": [7.0] * nodes,
        "last_node_done_s": 7.0,
        "lower_bound_s": 5.0,
        "ratio_to_bound": 1.4,
        "hot_done_s": 2.0,
        "hot_bound_s": 1.25,
        "agent_cpu_s": 4.5,
        "longest_stall_s": 1.2,
        "errors": [],
        "corrupt_chunks": 0,
        "hub_reasons": {"n0": {"OWNED": 3, "HOT_DEADLINE": 1}, "n1": {"OWNED": 2}},
    }
    result.update(overrides)
    return result


def model(nodes: int) -> dict[str, Any]:
    topo = topology("farm-deploy", knobs_for("farm-deploy", nodes=nodes, image_mib=16, hub_mbps=25))
    params = ModelParams(queue=QueueParams(discovery_s=0.5), cpu_s_per_mib=0.02, cores=2)
    return predict(topo, params).as_result(topo, "farm-deploy (model)")


def test_a_row_puts_the_model_beside_each_real_figure() -> None:
    line = row(real(8), model(8))
    assert line["nodes"] == 8
    assert line["hub_ratio"] == pytest.approx(17 / 16, abs=1e-3)
    assert line["model_hub_ratio"] >= 1.0
    assert (line["ratio_to_bound"], line["hot_ratio_to_bound"]) == (1.4, 1.6)
    assert line["model_ratio_to_bound"] > 1.0
    assert line["model_hot_ratio_to_bound"] > 0
    assert line["model_cpu_s"] == pytest.approx(8 * 16 * 0.02, abs=1e-3)
    assert line["hub_reasons"] == {"OWNED": 5, "HOT_DEADLINE": 1}  # summed over nodes, most first
    with pytest.raises(BadConfig, match="lacks keys"):
        row({"scenario": "x"}, model(8))


def test_the_table_and_the_plot(tmp_path: Path) -> None:
    rows = [row(real(8), model(8)), row(real(16, last_node_done_s=None, ratio_to_bound=None), model(16))]
    out = io.StringIO()
    print_sweep(rows, Console(file=out, width=250))
    text = out.getvalue()
    for _, title in COLUMNS:
        assert title in text
    assert "1.40" in text  # a real ratio
    assert "N = 8: hub requests by reason: OWNED 5, HOT_DEADLINE 1" in text
    pytest.importorskip("matplotlib")
    path = tmp_path / "sweep.png"
    plot_sweep(rows, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(BadConfig, match="at least one row"):
        plot_sweep([], tmp_path / "none.png")


def test_replay_puts_todays_model_beside_saved_runs() -> None:
    import dataclasses

    from netsim.sweep import replay

    knobs = knobs_for("farm-deploy", image_mib=16, hub_mbps=25)
    saved = {"knobs": dataclasses.asdict(knobs), "runs": [real(8), real(64, hub_bytes=20 * MIB)]}
    params = ModelParams(queue=QueueParams(discovery_s=0.5), cpu_s_per_mib=0.02, cores=2)
    out = replay(saved, lambda n: params)
    assert [line["nodes"] for line in out["rows"]] == [8, 64]
    assert out["rows"][1]["hub_ratio"] == pytest.approx(1.25)
    assert [m["nodes"] for m in out["model"]] == [8, 64]
    assert out["model"][1]["last_node_done_s"] > out["model"][0]["last_node_done_s"]  # 64 agents on 2 cores
    assert out["model_params"][0]["cores"] == 2
