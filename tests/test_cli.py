"""The CLI against a real agent and a real hub: ``fetch --out`` writing files as chunks arrive, ``status``, ``cache
pin``, and where ``--api`` comes from."""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path

import pytest
import trio

from p2pchunks.agent import Agent
from p2pchunks.cli.main import main
from p2pchunks.hub.publish import publish
from p2pchunks.hub.server import open_hub_server
from p2pchunks.ids import chunk_relpath

from .swarmkit import CHUNK, agent_config, agents, make_image

LIMIT = 60


def api_url(agent: Agent) -> str:
    return f"http://{agent.config.api.listen.rsplit(':', 1)[0]}:{agent.api_port}"


async def cli(*argv: str) -> int:
    with trio.fail_after(LIMIT):
        return int(await trio.to_thread.run_sync(main, list(argv)))


def parts_under(root: Path) -> list[str]:
    return [name for _, _, names in os.walk(root) for name in names if name.endswith(".part")]


def make_tree(tmp: Path) -> Path:
    """Every shape ``fetch --out`` must get right: a repeated chunk, an empty file, an executable, a symlink."""
    rng = random.Random(4)
    src = tmp / "src"
    (src / "bin").mkdir(parents=True)
    block = rng.randbytes(CHUNK)
    (src / "bin" / "tool").write_bytes(rng.randbytes(2 * CHUNK + 5))
    (src / "bin" / "tool").chmod(0o755)
    (src / "twice.raw").write_bytes(block + rng.randbytes(CHUNK) + block + b"tail")
    (src / "empty").write_bytes(b"")
    (src / "deep" / "er").mkdir(parents=True)
    (src / "deep" / "er" / "notes").write_text("a small file\n")
    os.symlink("bin/tool", src / "link")
    return src


async def test_fetch_out_writes_every_file_mode_and_symlink_and_counts_reads_as_served(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_tree(tmp_path)
    result = publish(src, tmp_path / "hub", name="tree", version="3", chunk_size=CHUNK)
    out = tmp_path / "out"
    async with open_hub_server(tmp_path / "hub") as (_, url), agents([agent_config(tmp_path, url, name="a")]) as (a,):
        assert await cli("fetch", "tree", "--out", str(out), "--api", api_url(a)) == 0
        assert "tree 3: 5 files, " in capsys.readouterr().err
        for path in ("bin/tool", "twice.raw", "empty", "deep/er/notes"):
            assert (out / path).read_bytes() == (src / path).read_bytes(), path
        assert stat.S_IMODE((out / "bin" / "tool").stat().st_mode) == 0o755
        assert os.readlink(out / "link") == "bin/tool"
        assert parts_under(out) == []
        assert await cli("status", "--json", "--api", api_url(a)) == 0
        stats = json.loads(capsys.readouterr().out)["stats"]
        distinct = len(result.manifest.chunk_ids)
        assert stats["chunks_served"] == distinct  # the CLI read each distinct chunk once, though one is used twice
        assert stats["chunks_from_cache"] == 0  # ... and that read-back is not a "cache hit" of a fetch job


async def test_an_image_larger_than_the_cache_streams_through_it(tmp_path: Path) -> None:
    image = make_image(tmp_path, mib=3)
    budget = 1024 * 1024
    config = agent_config(tmp_path, "", name="a", cache={"budget_bytes": budget})
    out = tmp_path / "out"
    async with open_hub_server(tmp_path / "hub") as (_, url), agents([config.replace(agent={"hub": url})]) as (a,):
        assert image.manifest.unique_bytes > 3 * budget
        # It can only finish if the chunks are written out (and consumed) while the job runs: the job keeps
        # a window of half the cache and slides it only over consumed chunks.
        assert await cli("fetch", str(image.path), "--out", str(out), "--api", api_url(a)) == 0
        assert a.cache.usage().bytes <= budget
        job = a.jobs.all()[-1]
        assert job.streaming
    for path in ("boot/kernel", "disk.raw"):
        assert (out / path).read_bytes() == (image.source / path).read_bytes()
    assert parts_under(out) == []


async def test_a_failed_fetch_names_the_missing_chunk_and_leaves_nothing_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_image(tmp_path, mib=0.5)
    lost = image.manifest.files[-1].chunks[2].id
    (tmp_path / "hub" / "chunks" / chunk_relpath(lost)).unlink()
    out = tmp_path / "out"
    async with open_hub_server(tmp_path / "hub") as (_, url), agents([agent_config(tmp_path, url, name="a")]) as (a,):
        assert await cli("fetch", str(image.path), "--out", str(out), "--api", api_url(a)) == 1
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith("p2pchunks: fetch of ")
    assert lost in line
    assert "Traceback" not in err
    assert parts_under(out) == []
    assert not (out / "disk.raw").exists()


async def test_fetch_wait_into_the_cache_outlasts_the_short_call_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_image(tmp_path, mib=0.25)
    async with open_hub_server(tmp_path / "hub") as (_, url), agents([agent_config(tmp_path, url, name="a")]) as (a,):
        # The job waits discovery_grace_s (1.5 s) before its first hub request: far longer than --timeout.
        assert await cli("fetch", str(image.path), "--wait", "--timeout", "0.3", "--api", api_url(a)) == 0
        assert "in the agent's cache" in capsys.readouterr().err
        assert a.jobs.all()[-1].state == "done"
        assert await cli("status", "--timeout", "0.3", "--api", api_url(a)) == 0


async def test_status_shows_reads_apart_from_cache_hits_and_the_integrity_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_image(tmp_path, mib=0.25)
    config = agent_config(tmp_path, "", name="a", cache={"scrub_rate_bps": 1 << 30})
    async with open_hub_server(tmp_path / "hub") as (_, url), agents([config.replace(agent={"hub": url})]) as (a,):
        assert await cli("fetch", str(image.path), "--out", str(tmp_path / "out"), "--api", api_url(a)) == 0
        assert await cli("fetch", str(image.path), "--wait", "--api", api_url(a)) == 0  # all found cached
        capsys.readouterr()
        assert await cli("status", "--api", api_url(a), "--json") == 0
        status = json.loads(capsys.readouterr().out)
        assert await cli("status", "--api", api_url(a)) == 0
        text = capsys.readouterr().out
    distinct = len(image.manifest.chunk_ids)
    assert status["stats"]["chunks_served"] == distinct
    assert status["stats"]["chunks_from_cache"] == distinct
    assert set(status["integrity"]) >= {"damaged_found", "repaired", "scrub"}
    lines = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in text.splitlines() if "│" in line}
    assert lines["served to local readers"].startswith(f"{distinct} chunks")
    assert lines["found cached by fetch jobs"] == f"{distinct} chunks"
    assert lines["damaged found / repaired"] == "0 / 0"
    scrub = status["integrity"]["scrub"]
    assert lines["scrub"].startswith(f"{scrub['checked_bytes'] / 2**20:,.1f} MiB of")
    assert "passes done" in lines["scrub"]


async def test_pin_takes_a_manifest_id_as_a_manifest_and_a_chunk_id_as_a_chunk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_image(tmp_path, mib=0.25)
    manifest_id, chunk_id = image.manifest.manifest_id, image.manifest.chunk_ids[0]
    assert len(manifest_id) == 64  # the shape of a chunk id too
    async with open_hub_server(tmp_path / "hub") as (_, url), agents([agent_config(tmp_path, url, name="a")]) as (a,):
        api = ["--api", api_url(a)]
        assert await cli("fetch", str(image.path), "--wait", *api) == 0
        capsys.readouterr()
        assert await cli("cache", *api, "pin", manifest_id, "--class", "user") == 0
        assert json.loads(capsys.readouterr().out) == {"manifest": manifest_id, "pin": "user"}
        assert await cli("cache", *api, "unpin", chunk_id) == 0
        assert json.loads(capsys.readouterr().out) == {"chunk": chunk_id, "pin": "none"}
        assert await cli("cache", *api, "pin", "no-such-image") == 1
        assert "no known manifest 'no-such-image'" in capsys.readouterr().err


async def test_api_and_token_come_from_the_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = agent_config(tmp_path, "", name="a", api={"token": "s3cret"})
    async with open_hub_server(tmp_path / "hub") as (_, url), agents([config.replace(agent={"hub": url})]) as (a,):
        listen = f"{a.config.api.listen.rsplit(':', 1)[0]}:{a.api_port}"
        conf = tmp_path / "agent.toml"
        conf.write_text(f'[api]\nlisten = "{listen}"\ntoken = "s3cret"\n')
        assert await cli("status", "--json", "--config", str(conf)) == 0
        assert json.loads(capsys.readouterr().out)["api_port"] == a.api_port
        assert await cli("status", "--json", "--config", str(conf), "--token", "wrong") == 1
        assert "401" in capsys.readouterr().err
        monkeypatch.setenv("P2PCHUNKS_API_LISTEN", listen)
        monkeypatch.setenv("P2PCHUNKS_API_TOKEN", "s3cret")
        assert await cli("status", "--json") == 0
        assert json.loads(capsys.readouterr().out)["api_port"] == a.api_port


async def test_rfs_fill_waits_for_the_whole_fill_not_a_short_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from p2pchunks.zos.flistwrite import write_fl
    from p2pchunks.zos.importflist import import_flist
    from p2pchunks.zos.zdbserver import HubRootBackend, open_zdb_server

    src = tmp_path / "src"
    src.mkdir()
    (src / "image.raw").write_bytes(random.Random(2).randbytes(6 * CHUNK + 11))
    store, release = tmp_path / "store", tmp_path / "release"
    async with open_zdb_server(HubRootBackend(store)) as (_, zdb_url):
        flist = tmp_path / "i.fl"
        await trio.to_thread.run_sync(lambda: write_fl(src, flist, store, route_url=zdb_url, chunk_size=CHUNK))
        await import_flist(flist, hub=zdb_url, out_dir=release, name="vm")
        config = agent_config(tmp_path, zdb_url, name="a", rfs={"cache_dir": str(tmp_path / "rfs")})
        async with agents([config]) as (a,):
            # The fill's job waits discovery_grace_s (1.5 s) before asking the hub: rfs-fill's --timeout is the
            # fill's (2 h by default), not a short call's.
            manifest = str(release / "manifests" / "vm.p2p")
            assert await cli("rfs-fill", manifest, "--timeout", "30", "--api", api_url(a)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["failed"] == {}
    assert report["written"] == 7
