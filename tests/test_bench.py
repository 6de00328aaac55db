"""``p2pchunks bench`` end to end at toy size: a real agent process serving a warm cache, next to ``cat``; the proxy and
fill benches; a real tracker over HTTP announced at from distinct 127.x addresses."""

from __future__ import annotations

import json

import pytest

from p2pchunks.bench.cache import bench_cache


async def test_bench_cache_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    assert await bench_cache(4, 2) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["chunks"] == 4
    assert figures["clients"] == 2
    for key in ("api_MBps", "cat_MBps", "api_to_cat_ratio", "publish_MBps", "agent_idle_rss_MiB"):
        assert figures[key] > 0, key


async def test_bench_proxy_reads_every_block_three_ways(capsys: pytest.CaptureFixture[str]) -> None:
    from p2pchunks.bench.proxy import bench_proxy

    assert await bench_proxy(6, 2, chunk_kib=64) == 0
    figures = json.loads(capsys.readouterr().out)
    assert (figures["chunks"], figures["chunk_bytes"], figures["clients"]) == (6, 64 * 1024, 2)
    for key in ("rfs_http_MBps", "rfs_server_MBps", "zdb_MBps", "rfs_http_to_zdb_ratio", "rfs_server_to_zdb_ratio"):
        assert figures[key] > 0, key


async def test_bench_fill_at_toy_size_against_a_hub_child_on_port_zero(capsys: pytest.CaptureFixture[str]) -> None:
    from p2pchunks.bench.fill import bench_fill

    assert await bench_fill(2, 5.0) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["blocks"] == 4
    assert figures["failed_blocks"] == 0
    assert figures["warm_peer_bytes_from_hub"] == 0


async def test_bench_tracker_reports_every_figure() -> None:
    from p2pchunks.bench.tracker import bench_tracker

    figures = await bench_tracker(flood=600, seconds=0.5, clients=2)
    assert figures["throughput"]["announces_per_s"] > 0
    unknown = figures["unknown_infohashes_one_address"]
    assert (unknown["answered_with_peers"], unknown["torrents"]) == (0, 1)  # only the honest torrent has a table
    for case in ("one_address", "one_slash24"):
        assert figures[case]["answered_with_peers"] == 600
        assert figures[case]["handed_to_honest"] > 0
        assert 0 < figures[case]["stranger_share"] <= 0.10, (case, figures[case])
        assert figures[case]["memory_growth_KiB"] > 0
