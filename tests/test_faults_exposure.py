"""Exposure: what an agent offers to whom.

The API refuses to listen beyond loopback without a token, and with a token refuses every request that lacks it;
a seed serves over the swarm only the torrents of manifests it holds (no listing, nothing by chunk id alone); the
swarm never reaches for a public DHT bootstrap, STUN server, tracker or port mapping unless configured to, and keeps
libtorrent's DHT sybil guards unless a lab relaxes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import libtorrent as lt
import pytest
import trio

from p2pchunks.agent import open_agent
from p2pchunks.agent.api import check_exposure
from p2pchunks.agent.swarmconfig import swarm_settings, with_bootstrap
from p2pchunks.config.schema import Config
from p2pchunks.errors import BadConfig
from p2pchunks.hub.publish import publish
from p2pchunks.hub.server import open_hub_server
from p2pchunks.swarm.session import SwarmSettings, session_settings

from .swarmkit import CHUNK, address, agent_config, agents, bare_torrent, make_image

TOKEN = "s3cret-token"


@pytest.mark.parametrize(
    ("listen", "token", "refused"),
    [
        ("0.0.0.0:7760", "", True),
        ("[::]:7760", "", True),
        ("10.1.2.3:7760", "", True),
        ("192.0.2.1:7760", "", True),
        ("[2001:db8::1]:7760", "", True),
        ("node.example:7760", "", True),
        (":7760", "", True),
        ("127.0.0.1:7760", "", False),
        ("127.0.0.9:0", "", False),
        ("[::1]:7760", "", False),
        ("localhost:7760", "", False),
        ("0.0.0.0:7760", TOKEN, False),
        ("10.1.2.3:7760", TOKEN, False),
    ],
)
def test_check_exposure(listen: str, token: str, refused: bool) -> None:
    if refused:
        with pytest.raises(BadConfig, match=r"api\.token"):
            check_exposure(listen, token)
    else:
        check_exposure(listen, token)


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


async def test_the_agent_does_not_start_on_a_public_address_without_a_token(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is never ours: were the check missing, binding would fail differently
    config = agent_config(tmp_path, "http://127.0.0.1:1/", name="a", api={"listen": "192.0.2.1:7760"})
    with pytest.raises(BaseException) as caught:  # noqa: PT011 - the nursery wraps it in a group
        async with open_agent(config, swarm=False):
            pytest.fail("the agent started")
    assert any(isinstance(leaf, BadConfig) for leaf in _leaves(caught.value)), caught.value


ROUTES = [
    ("GET", "/status", None),
    ("GET", "/metrics", None),
    ("GET", "/cache", None),
    ("GET", "/jobs/1", None),
    ("GET", "/manifests/img", None),
    ("GET", "/chunks/CHUNK", None),
    ("HEAD", "/chunks/CHUNK", None),
    ("POST", "/fetch", {"manifest": "img"}),
    ("POST", "/warm", {"manifest": "img"}),
    ("POST", "/cache/gc", {"dry_run": False, "force": True}),
    ("POST", "/cache/pin", {"manifest": "img", "pin": "none"}),
    ("GET", "/no/such/route", None),
]


async def test_with_a_token_every_route_needs_it(tmp_path: Path) -> None:
    image = make_image(tmp_path, mib=0.25, seed=41)
    chunk_id = image.manifest.piece_ids[0]
    async with open_hub_server(tmp_path / "hub") as (hub, url):
        config = agent_config(tmp_path, url, name="a", api={"token": TOKEN})
        async with agents([config], swarm=False) as (agent,):
            host = agent.config.api.listen.rsplit(":", 1)[0]
            base = f"http://{host}:{agent.api_port}"
            async with httpx.AsyncClient(base_url=base, timeout=20) as http:
                wrong = [
                    "",
                    "Bearer",
                    f"Bearer {TOKEN}x",
                    f"bearer {TOKEN}",
                    f"Basic {TOKEN}",
                    TOKEN,
                    f"Bearer  {TOKEN}",
                ]
                for method, path, body in ROUTES:
                    path = path.replace("CHUNK", chunk_id)
                    for given in wrong:
                        headers = {"authorization": given} if given else {}
                        answer = await http.request(method, path, json=body, headers=headers)
                        assert answer.status_code == 401, (method, path, given, answer.status_code)
                assert hub.stats.requests == 0  # nothing reached the hub on behalf of an unauthorized caller
                assert not agent.jobs.all()
                assert agent.cache.usage().chunks == 0
                good = {"authorization": f"Bearer {TOKEN}"}
                assert (await http.get("/status", headers=good)).status_code == 200
                served = await http.get(f"/chunks/{chunk_id}", headers=good)
                assert served.status_code == 200
                assert len(served.content) == image.manifest.chunk_size_of(chunk_id)


# ---- the seed over the swarm ----------------------------------------------------------------------------------


async def _leech(manifest: Any, directory: Path, seed_ip: str, seed_port: int, seconds: float) -> tuple[int, int]:
    """A bare libtorrent session that asks the seed for ``manifest``: (pieces it got, peers it ever saw)."""
    settings = SwarmSettings(listen=f"{address()}:0", utp=False, dht=False, lsd=False)
    async with bare_torrent(manifest, settings, directory) as (_, handle):
        handle.connect_peer((seed_ip, seed_port))
        peers = 0
        with trio.move_on_after(seconds):
            while True:
                status = handle.status()
                peers = max(peers, status.num_peers)
                if status.num_pieces == len(manifest.piece_ids):
                    break
                await trio.sleep(0.1)
        return int(handle.status().num_pieces), peers


async def test_a_seed_serves_only_the_torrents_of_manifests_it_holds(tmp_path: Path) -> None:
    held = make_image(tmp_path, mib=1, seed=42, name="held")
    # "other" shares most chunks with "held" (same disk image plus a file): the seed holds those chunks, but not
    # that torrent, and it must not serve them through it
    (held.source / "extra").write_bytes(b"x" * (CHUNK + 7))
    other = publish(held.source, tmp_path / "hub", name="other", version="1", chunk_size=CHUNK).manifest
    shared = set(other.piece_ids) & set(held.manifest.piece_ids)
    assert len(shared) >= len(other.piece_ids) - 2
    async with open_hub_server(tmp_path / "hub") as (hub, url):
        config = agent_config(tmp_path, url, name="seed", agent={"mode": "seed"})
        async with agents([config]) as (seed,):
            job = await seed.fetch(str(held.path))
            with trio.fail_after(60):
                await job.done.wait()
            assert job.state == "done"
            assert seed.swarm is not None
            host, port = seed.swarm.settings.host, seed.swarm.listen_port
            hub.stats.reset()
            got, _ = await _leech(held.manifest, tmp_path / "leech-held", host, port, 30)
            assert got == len(held.manifest.piece_ids)  # the positive control
            got, peers = await _leech(other, tmp_path / "leech-other", host, port, 3)
            assert got == 0
            assert peers == 0
            assert other.infohash not in seed.swarm.torrents
            assert hub.stats.total_bytes == 0  # and nobody made the seed fetch it


async def test_the_tracker_lists_nothing_but_peers_of_one_infohash(tmp_path: Path) -> None:
    ip = address()
    config = agent_config(
        tmp_path, "http://127.0.0.1:1/", name="t", ip=ip, tracker={"enabled": True, "listen": f"{ip}:0"}
    )
    async with agents([config], swarm=False) as (agent,):
        base = f"http://{ip}:{agent.tracker_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            for path in ("/", "/scrape", "/stats", "/announce/..", "/torrents", "/scrape?info_hash=" + "%aa" * 20):
                answer = await http.get(path)
                assert 400 <= answer.status_code < 500, (path, answer.status_code)
            answer = await http.get("/announce")  # no info_hash: refused, and nothing listed
            assert answer.status_code == 400
            assert b"peers" not in answer.content


# ---- the swarm's defaults --------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["node", "seed"])
def test_session_settings_reach_nothing_public_by_default(profile: str) -> None:
    pack = session_settings(SwarmSettings(profile=profile))  # type: ignore[arg-type]
    assert pack["dht_bootstrap_nodes"] == ""
    assert pack["webtorrent_stun_server"] == ""
    assert pack["enable_upnp"] is False
    assert pack["enable_natpmp"] is False
    assert "tracker" not in " ".join(str(v) for v in pack.values()).lower()
    defaults = swarm_settings(Config())
    assert defaults.trackers == ()
    assert defaults.dht_bootstrap == ()
    shipped = with_bootstrap(defaults, Config())  # the signed list shipped with the release
    assert all(
        not host.endswith(("libtorrent.org", "bittorrent.com", "transmissionbt.com"))
        for host, _ in shipped.dht_bootstrap
    )


GUARDS = (
    "dht_restrict_routing_ips",
    "dht_restrict_search_ips",
    "dht_ignore_dark_internet",
    "dht_prefer_verified_node_ids",
)


@pytest.mark.parametrize("profile", ["node", "seed"])
def test_the_dht_keeps_libtorrent_s_sybil_guards_unless_a_lab_relaxes_them(profile: str) -> None:
    defaults = lt.default_settings()
    assert all(defaults[name] is True for name in GUARDS)  # libtorrent's own choice
    production = swarm_settings(Config().replace(agent={"mode": profile}))
    assert production.relaxed_dht is False
    pack = session_settings(production)
    assert {name: pack[name] for name in GUARDS} == {name: defaults[name] for name in GUARDS}
    lab = swarm_settings(Config().replace(agent={"mode": profile}, swarm={"relaxed_dht": True}))
    assert {name: session_settings(lab)[name] for name in GUARDS} == dict.fromkeys(GUARDS, False)


def test_netsim_relaxes_the_dht_guards_explicitly() -> None:
    """Its nodes share 127.0.0.x (or the netns lab's few /24s): one DHT node per /24 would hide them."""
    import tomllib

    from netsim.nodeconfig import node_config
    from netsim.scenarios import Knobs, topology

    topo = topology("nat-behind-seed", Knobs())
    for node in topo.nodes:
        config = tomllib.loads(node_config(topo, node, node.address, "http://127.0.0.1:1/", Path("w"), []))
        assert config["swarm"]["dht"] is True
        assert config["swarm"]["relaxed_dht"] is True


def test_a_live_session_keeps_our_overrides() -> None:
    """libtorrent's own defaults reach out (dht.libtorrent.org, a STUN server): ours replace them."""
    assert lt.default_settings()["dht_bootstrap_nodes"] != ""  # what we override
    pack: Any = session_settings(SwarmSettings(listen=f"{address()}:0", utp=False, lsd=False))
    params = lt.session_params()
    params.settings = pack
    session = lt.session(params)
    try:
        live = session.get_settings()
        assert live["dht_bootstrap_nodes"] == ""
        assert live["webtorrent_stun_server"] == ""
        assert live["enable_upnp"] is False
        assert live["enable_natpmp"] is False
        assert all(live[name] is True for name in GUARDS)
    finally:
        session.pause()
        del session
