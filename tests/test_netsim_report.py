"""Reports: the result contract, the table, the JSON file and the plot."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from netsim.report import (
    REQUIRED_KEYS,
    node_rows,
    plot,
    print_table,
    quantile,
    summary_rows,
    validate_result,
    write_json,
)
from p2pchunks.errors import BadConfig

MIB = 1024 * 1024


def result(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "scenario": "farm-deploy",
        "backend": "loopback",
        "nodes": 4,
        "image_bytes": 32 * MIB,
        "hub_bytes": 40 * MIB,
        "peer_bytes": 88 * MIB,
        "per_node_done_s": [1.5, 2.0, 2.5, None],
        "last_node_done_s": 2.5,
        "lower_bound_s": 1.25,
        "ratio_to_bound": 2.0,
        "hot_done_s": 0.4,
        "errors": ["n3: boom"],
        "corrupt_chunks": 0,
        "timeline": [[0.0, 0, 0], [1.0, 1, 20 * MIB], [2.5, 3, 40 * MIB]],
    }
    base.update(overrides)
    return base


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_validate_names_a_missing_key(key: str) -> None:
    broken = result()
    del broken[key]
    with pytest.raises(BadConfig, match=key):
        validate_result(broken)


def test_validate_accepts_a_complete_result_and_rejects_non_dicts() -> None:
    validate_result(result())
    with pytest.raises(BadConfig, match="must be a dict"):
        validate_result([])  # type: ignore[arg-type]


def test_table_shows_the_numbers_and_errors() -> None:
    out = io.StringIO()
    print_table(result(), Console(file=out, width=100, color_system=None))
    text = out.getvalue()
    for expected in (
        "farm-deploy (loopback)",
        "4 (3 done)",
        "32.0 MiB",
        "40.0 MiB (1.25× image)",
        "2.50 s",
        "1.25 s",
        "2.00",
        "error: n3: boom",
    ):
        assert expected in text, expected


def test_table_copes_with_missing_values() -> None:
    rows = dict(
        summary_rows(
            result(last_node_done_s=None, ratio_to_bound=None, hot_done_s=None, per_node_done_s=[None], image_bytes=0)
        )
    )
    assert rows["last node done"] == rows["ratio to bound"] == rows["hot chunks done"] == "-"
    assert "done p50 / p90" not in rows


def test_write_json_round_trips_and_nulls_infinities(tmp_path: Path) -> None:
    path = tmp_path / "out" / "r.json"
    write_json(result(last_node_done_s=math.inf, ratio_to_bound=math.nan), path)
    back = json.loads(path.read_text())
    assert back["last_node_done_s"] is None
    assert back["ratio_to_bound"] is None
    assert back["per_node_done_s"] == [1.5, 2.0, 2.5, None]
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp file left behind


def test_write_json_takes_a_comparison_of_results(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    write_json({"hub_only": result(), "farm_deploy": result(), "comparison": {"speed_up": 2.0}}, path)
    assert json.loads(path.read_text())["comparison"] == {"speed_up": 2.0}


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.png"
    with_peers = result(scenario="model", timeline=[[0.0, 0, 0, 0], [2.0, 4, 32 * MIB, 96 * MIB]])
    plot([result(), with_peers, result(scenario="no-timeline", timeline=None)], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(BadConfig, match="lacks keys"):
        plot([{"scenario": "x"}], tmp_path / "bad.png")


def accounted(**overrides: Any) -> dict[str, Any]:
    line = {"farm": "farm0", "role": "nat", "fetches": True, "from_hub": 0, "to_peers": {}}
    return result(
        seeds=1,
        per_node_done_s=[1.5, 2.5],
        per_node={
            "seed0": {**line, "farm": "seeds", "role": "seed", "fetches": False, "uploaded": 32 * MIB,
                      "from_peers": {"farm": 0, "seed": 0, "other": 0, "unknown": 0}},
            "n0": {**line, "done_s": 1.5, "uploaded": 8 * MIB,
                   "from_peers": {"farm": 0, "seed": 32 * MIB, "other": 0, "unknown": 0}},
            "n1": {**line, "done_s": 2.5, "from_hub": 2 * MIB, "uploaded": 0,
                   "from_peers": {"farm": 30 * MIB, "seed": 0, "other": 1 * MIB, "unknown": 0}},
        },
        bytes_by_source={"from_hub": 2 * MIB, "from_farm": 30 * MIB, "from_seed": 32 * MIB, "from_other": MIB,
                         "from_unknown": 0, "seed_upload": 32 * MIB},
        wan={"farm0": {"in_bytes": 40 * MIB, "out_bytes": MIB}},
    ) | overrides  # fmt: skip


def test_table_shows_where_bytes_came_from_and_what_crossed_each_wan() -> None:
    rows = dict(summary_rows(accounted()))
    assert rows["from farm-mates"] == "30.0 MiB"
    assert rows["from seeds"] == "32.0 MiB"
    assert rows["from other farms"] == "1.0 MiB"
    assert "from unknown peers" not in rows  # shown only when some bytes could not be placed
    assert rows["seed upload"] == "32.0 MiB (1.00× image)"
    assert rows["WAN in/out farm0"] == "40.0 MiB (1.25× image) / 1.0 MiB"
    assert dict(summary_rows(accounted(bytes_by_source={"from_unknown": 5})))["from unknown peers"] == "0.0 MiB"


def test_the_per_node_table_shows_each_nodes_own_completion_time() -> None:
    rows = node_rows(accounted())
    assert rows[0] == ("seed0", "seeds", "seed", "full", "0.0", "0.0", "0.0", "0.0", "32.0")
    assert rows[1][:4] == ("n0", "farm0", "nat", "1.50 s")
    assert rows[2][3:8] == ("2.50 s", "2.0", "30.0", "0.0", "1.0")
    # a JSON file sorts the lines by name: each keeps its own time
    shuffled = accounted(per_node=dict(reversed(list(accounted()["per_node"].items()))))
    assert {row[0]: row[3] for row in node_rows(shuffled)} == {"seed0": "full", "n0": "1.50 s", "n1": "2.50 s"}
    out = io.StringIO()
    print_table(accounted(), Console(file=out, width=140, color_system=None))
    assert "bytes per node" in out.getvalue()
    assert node_rows(result()) == []


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([3.0], 0.99, 3.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),
        ([float(i) for i in range(100)], 0.99, 98.0),
    ],
)
def test_quantile_is_the_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert quantile(values, q) == expected
