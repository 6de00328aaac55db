"""``p2pchunks rfs-fill`` as a user meets it: the quota, what it says when a block cannot be had, and what it says
when the agent is slow or answers an error (the agent's own words, never an empty message)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from p2pchunks.cli.main import main
from p2pchunks.http.server import Request, Response, json_response, serve_http
from p2pchunks.ids import chunk_relpath
from p2pchunks.zos.flistwrite import write_fl
from p2pchunks.zos.importflist import import_flist
from p2pchunks.zos.zdbserver import HubRootBackend, open_zdb_server

from .swarmkit import agent_config, agents
from .test_importflist import CHUNK, make_tree

LIMIT = 60


async def run_cli(*argv: str) -> int:
    with trio.fail_after(LIMIT):
        return await trio.to_thread.run_sync(main, list(argv))


async def test_quota_and_a_corrupt_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, hub_root = make_tree(tmp_path), tmp_path / "hub"
    async with open_zdb_server(HubRootBackend(hub_root)) as (_, zdb):
        write_fl(src, tmp_path / "img.fl", hub_root, route_url=zdb, chunk_size=CHUNK)
        manifest = await import_flist(tmp_path / "img.fl", out_dir=tmp_path / "release")
        path = str(tmp_path / "release" / "manifests" / "img.p2p")
        victim = next(chunk.id for entry in manifest.files for chunk in entry.chunks)
        blob = hub_root / "chunks" / chunk_relpath(victim)
        blob.write_bytes(blob.read_bytes()[::-1])  # the hub now sends wrong bytes for one block
        rfs = tmp_path / "rfs-cache"
        fetch = {"job_timeout_s": 2.0, "hub_retries": 0, "discovery_grace_s": 0.0}
        config = agent_config(tmp_path, zdb, name="a", rfs={"cache_dir": str(rfs)}, fetch=fetch)
        async with agents([config], swarm=False) as (agent,):
            api = f"http://{agent.config.api.listen.rsplit(':', 1)[0]}:{agent.api_port}"
            assert await run_cli("rfs-fill", path, "--api", api, "--quota", "1") == 1
            out, err = capsys.readouterr()
            assert json.loads(out)["stopped_for_space"] is True
            assert "quota or free-space floor" in err
            assert not any(p.is_file() for p in rfs.rglob("*"))
            assert await run_cli("rfs-fill", path, "--api", api, "--quota", "20GiB") == 1
            out, err = capsys.readouterr()
            report = json.loads(out)
            assert list(report["failed"]) == [victim]
            assert report["written"] == report["chunks"] - 1
            assert f"block {victim} not filled" in err
            assert "failed verification" in err
            assert await run_cli("status", "--api", api) == 0
            table = capsys.readouterr().out
            assert "hub zdb://127.0.0.1" in table
            assert "errors" in table


async def test_a_slow_or_failing_agent_is_named(nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]) -> None:
    async def fake_agent(request: Request) -> Response:
        if request.path == "/fill":
            await trio.sleep(3600)  # a fill that outlasts --timeout
        if request.path == "/status":
            return json_response(503, {"error": "hub zdb://h:9900/default: cannot connect", "status": 503})
        return Response(500, [], b"")  # no body at all

    port = await nursery.start(serve_http, fake_agent, "127.0.0.1", 0)
    api = f"http://127.0.0.1:{port}"
    assert await run_cli("rfs-fill", "img", "--api", api, "--timeout", "0.5") == 1
    err = capsys.readouterr().err
    assert "did not finish the fill within --timeout 0.5 s (ReadTimeout)" in err
    assert await run_cli("status", "--api", api) == 1
    assert "GET /status: 503 hub zdb://h:9900/default: cannot connect" in capsys.readouterr().err
    assert await run_cli("cache", "--api", api, "ls") == 1
    assert capsys.readouterr().err.strip() == "p2pchunks: GET /cache?limit=50: 500 Internal Server Error"
    assert await run_cli("status", "--api", "http://127.0.0.1:9") == 1
    assert "cannot reach the agent at http://127.0.0.1:9 (GET /status): ConnectError (" in capsys.readouterr().err
