"""The local API and the CLI that talks to it, against a real agent, a real hub and real files."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from p2pchunks.agent import Agent
from p2pchunks.agent.api import check_exposure
from p2pchunks.cli.main import main
from p2pchunks.errors import BadConfig
from p2pchunks.hub.server import open_hub_server
from p2pchunks.ids import blake2b_verifier

from .swarmkit import agent_config, agents, make_image


def api_url(agent: Agent) -> str:
    return f"http://{agent.config.api.listen.rsplit(':', 1)[0]}:{agent.api_port}"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/chunks/xyz", 400),
        ("/chunks/" + "A" * 64, 400),
        ("/chunks/" + "ab" * 31, 400),
        ("/chunks/..%2f..%2fetc%2fpasswd", 404),  # decoded, it is no route at all
        ("/chunks/../../etc/passwd", 404),
        ("/chunks/" + "ab" * 32 + "/x", 404),
        ("/nothing", 404),
        ("/jobs/12345", 404),
        ("/jobs/abc", 404),
        ("/manifests/no-such-image", 404),
    ],
)
async def test_bad_requests_get_clear_json_errors(tmp_path: Path, path: str, status: int) -> None:
    async with (
        open_hub_server(tmp_path / "hub") as (_, url),
        agents([agent_config(tmp_path, url, name="a")]) as (a,),
        httpx.AsyncClient(base_url=api_url(a)) as http,
    ):
        response = await http.get(path)
    assert response.status_code == status
    assert "error" in response.json()


async def test_chunks_status_metrics_and_jobs(tmp_path: Path) -> None:
    image = make_image(tmp_path, mib=0.5)
    async with open_hub_server(tmp_path / "hub") as (_, url), agents([agent_config(tmp_path, url, name="a")]) as (a,):
        chunk = image.manifest.chunk_ids[0]
        async with httpx.AsyncClient(base_url=api_url(a), timeout=30) as http:
            assert (await http.head(f"/chunks/{chunk}")).status_code == 404  # HEAD never fetches
            got = await http.get(f"/chunks/{chunk}")  # GET does: cache → peers → hub
            assert got.status_code == 200
            assert blake2b_verifier(chunk, got.content)
            head = await http.head(f"/chunks/{chunk}")
            assert head.status_code == 200
            assert int(head.headers["content-length"]) == len(got.content)
            started = await http.post("/fetch", json={"manifest": str(image.path), "wait": True})
            assert started.status_code == 200
            assert started.json()["state"] == "done"
            status = (await http.get("/status")).json()
            assert status["stats"]["chunks_from_hub"] == len(image.manifest.chunk_ids)
            metrics = (await http.get("/metrics")).text
            assert f"p2pchunks_chunks_from_hub_total {float(len(image.manifest.chunk_ids))}" in metrics
            bad = await http.post("/fetch", content=b"{not json")
            assert bad.status_code == 400
            missing = await http.post("/fetch", json={})
            assert missing.status_code == 400


async def test_cli_fetch_status_and_cache_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = make_image(tmp_path, mib=0.5)
    async with open_hub_server(tmp_path / "hub") as (_, url), agents([agent_config(tmp_path, url, name="a")]) as (a,):
        api = ["--api", api_url(a)]
        with trio.fail_after(60):
            code = await trio.to_thread.run_sync(main, ["fetch", str(image.path), "--out", str(tmp_path / "out"), *api])
        assert code == 0
        for path in ("boot/kernel", "disk.raw"):
            assert (tmp_path / "out" / path).read_bytes() == (image.source / path).read_bytes()
        assert await trio.to_thread.run_sync(main, ["status", "--json", *api]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["jobs"][0]["state"] == "done"
        assert await trio.to_thread.run_sync(main, ["cache", *api, "pin", image.manifest.name, "--class", "user"]) == 0
        assert await trio.to_thread.run_sync(main, ["cache", *api, "ls", "--limit", "3"]) == 0
        listing = capsys.readouterr().out.splitlines()
        assert len(listing) == 4  # the pin's JSON line, then three entries
        assert "user" in listing[-1]
        assert await trio.to_thread.run_sync(main, ["cache", *api, "gc", "--dry-run"]) == 0
        assert "evict" in capsys.readouterr().out.lower()
        assert await trio.to_thread.run_sync(main, ["status", "--api", "http://127.0.0.1:9"]) == 1


def test_a_non_loopback_api_needs_a_token() -> None:
    with pytest.raises(BadConfig, match="token"):
        check_exposure("0.0.0.0:7760", "")
    check_exposure("0.0.0.0:7760", "s3cret")
    check_exposure("127.0.0.5:7760", "")
