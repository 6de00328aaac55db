"""netsim farm-cache without running it: its defaults, each node's config, and the combined result's keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from netsim.farmcache import CACHE_IMAGES, node_sections, summary
from netsim.nodeconfig import node_config
from netsim.scenarios import knobs_for, storm_config, topology
from p2pchunks.config.schema import load_config


def test_the_issue_sizes_are_the_defaults() -> None:
    knobs = knobs_for("farm-cache")
    assert (knobs.nodes, knobs.images, knobs.image_mib) == (8, 6, 16)
    assert knobs_for("farm-cache", nodes=3).nodes == 3


@pytest.mark.parametrize("custody", [True, False])
def test_each_node_warms_the_signed_list_with_a_budget_of_four_images(tmp_path: Path, custody: bool) -> None:
    knobs = knobs_for("farm-cache", image_mib=2)
    topo = topology("farm-cache", knobs)
    budget = CACHE_IMAGES * topo.image.image_bytes
    extra = node_sections(storm_config(tmp_path, knobs), budget, custody)
    node = topo.nodes[0]
    text = node_config(topo, node, node.address, "http://127.0.0.1:1/", tmp_path, [], extra(node))
    (tmp_path / "node.toml").write_text(text)
    config = load_config(tmp_path / "node.toml", env={})
    assert config.cache.budget_bytes == 4 * 2 * 2**20
    assert (config.custody.enabled, config.custody.copies, config.custody.share) == (custody, 2, 0.5)
    assert config.warm.official
    assert config.warm.max_start_delay_s == 0.0
    assert Path(config.warm.official_file).read_text().count("[[image]]") == 6


def mode(warm: int, deploy: int, copies: tuple[int, int], seconds: list[float]) -> dict[str, Any]:
    return {
        "errors": [],
        "warm_s": 10.0,
        "warm_hub_bytes": warm,
        "deploy_hub_bytes": deploy,
        "deploy_s": seconds,
        "copies_after_warm": {"min": copies[0], "histogram": {}},
        "copies_after_deploys": {"min": copies[1], "histogram": {}},
        "custody": {"n0": {"custody": None, "last_copies_evicted": 1}},
        "corrupt_chunks": 0,
    }


def test_the_result_has_the_issues_keys() -> None:
    knobs = knobs_for("farm-cache")
    on = mode(100, 5, (2, 2), [1.0, 2.0, 3.0])
    off = mode(110, 1000, (0, 0), [4.0])
    result = summary({"custody": on, "no_custody": off}, 100, knobs)
    assert result["warm_hub_ratio"] == 1.0
    assert (result["deploy_hub_bytes"], result["deploy_hub_bytes_no_custody"]) == (5, 1000)
    assert result["deploy_hub_vs_no_custody"] == 0.005
    assert result["min_farm_copies"] == {"after_warm": 2, "after_deploys": 2}
    assert result["min_farm_copies_no_custody"] == {"after_warm": 0, "after_deploys": 0}
    assert (result["deploy_p50_s"], result["deploy_p99_s"]) == (2.0, 3.0)
    assert result["corrupt_chunks"] == 0
    assert result["custody_last_copies_evicted"] == 1
    assert result["errors"] == []


def test_a_mode_without_deploy_times_has_no_quantiles() -> None:
    knobs = knobs_for("farm-cache")
    on = mode(100, 5, (2, 2), [])
    off = mode(110, 1000, (0, 0), [float(i) for i in range(100)])
    result = summary({"custody": on, "no_custody": off}, 100, knobs)
    assert (result["deploy_p50_s"], result["deploy_p99_s"]) == (None, None)
    assert result["deploy_p99_s_no_custody"] == 98.0  # nearest rank
