"""Configuration: defaults, TOML, env overrides, and clear refusals."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from p2pchunks.agent.swarmconfig import swarm_settings
from p2pchunks.config.schema import Config, default_of, load_config, split_hostport
from p2pchunks.errors import BadConfig
from p2pchunks.hub.client import HubClient
from p2pchunks.policy.eviction import Watermarks
from p2pchunks.policy.fetch import FetchParams
from p2pchunks.policy.retry import HubRetries
from p2pchunks.swarm.session import SwarmSettings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_defaults_need_no_file() -> None:
    config = load_config(None, env={})
    assert config == Config()
    assert config.api.listen.startswith("127.0.0.1:")


def test_file_then_env_override(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[agent]\nhub = "http://a/"\n[cache]\nbudget_bytes = 1000\n[swarm]\nbootstrap = ["h:1"]\n')
    env = {
        "P2PCHUNKS_AGENT_HUB": "zdb://b:9900/ns",
        "P2PCHUNKS_SWARM_INBOUND": "false",
        "P2PCHUNKS_SWARM_TRACKERS": "http://t1/announce, http://t2/announce",
        "OTHER": "x",
    }
    config = load_config(path, env=env)
    assert config.agent.hub == "zdb://b:9900/ns"
    assert config.cache.budget_bytes == 1000
    assert config.swarm.inbound is False
    assert config.swarm.bootstrap == ["h:1"]
    assert config.swarm.trackers == ["http://t1/announce", "http://t2/announce"]


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[nope]\na = 1\n", {}, "unknown config section [nope]"),
        ("[agent]\ncolour = 1\n", {}, "unknown key agent.colour"),
        ("[cache]\nbudget_bytes = 'lots'\n", {}, "cache.budget_bytes must be int"),
        ("[swarm]\ninbound = 1\n", {}, "swarm.inbound must be true or false"),
        ("[cache]\nhigh_watermark = 0.5\nlow_watermark = 0.7\n", {}, "watermarks"),
        ("[agent]\nmode = 'leech'\n", {}, "agent.mode"),
        ("[api]\nlisten = 'nocolon'\n", {}, "api.listen must be host:port"),
        ("[fetch]\nhub_timeout_s = -1\n", {}, "must not be negative"),
        ("agent = [", {}, "c.toml"),
        ("", {"P2PCHUNKS_SWARM_INBOUND": "maybe"}, "P2PCHUNKS_SWARM_INBOUND='maybe'"),
        ("", {"P2PCHUNKS_CACHE_BUDGET_BYTES": "12x"}, "P2PCHUNKS_CACHE_BUDGET_BYTES"),
    ],
)
def test_bad_configs_are_refused_naming_the_key(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(BadConfig, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(path, env=env)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BadConfig, match="cannot read config"):
        load_config(tmp_path / "absent.toml", env={})


@pytest.mark.parametrize("name", ["agent.toml", "seed.toml"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(DEPLOY / name, env={})
    assert config.agent.mode == name.removesuffix(".toml").replace("agent", "node")


def test_split_hostport() -> None:
    assert split_hostport("127.0.0.2:80") == ("127.0.0.2", 80)
    assert split_hostport("[::1]:9900") == ("::1", 9900)
    with pytest.raises(BadConfig):
        split_hostport("host")


def test_configuration_reference_is_current() -> None:
    from p2pchunks.config.doc import reference

    current = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    assert current == reference(), "regenerate: python -m p2pchunks.config.doc > docs/configuration.md"


def test_hub_may_be_a_list(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[agent]\nhub = ["zdb://a:9900/default", "server://http/b:4000"]\n')
    assert load_config(path, env={}).agent.hub == ["zdb://a:9900/default", "server://http/b:4000"]
    env = {"P2PCHUNKS_AGENT_HUB": "zdb://a:9900/default, rfs+http://b/store"}
    assert load_config(None, env=env).agent.hub == ["zdb://a:9900/default", "rfs+http://b/store"]
    assert load_config(None, env={"P2PCHUNKS_AGENT_HUB": "zdb://a"}).agent.hub == "zdb://a"
    for bad, message in (("[1]", "list of strings"), ("3", "agent.hub must be str")):
        path.write_text(f"[agent]\nhub = {bad}\n")
        with pytest.raises(BadConfig, match=message):
            load_config(path, env={})


def test_rfs_listeners_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[rfs]\nhttp_listen = "9920"\n')
    with pytest.raises(BadConfig, match=r"rfs\.http_listen must be host:port"):
        load_config(path, env={})


def test_each_default_lives_in_one_place() -> None:
    """The config's defaults are the ones the code uses when it is given nothing (and the reverse)."""
    config = Config()
    assert swarm_settings(config) == SwarmSettings()
    fetch = config.fetch
    params = FetchParams()
    for key in ("discovery_grace_s", "hot_deadline_s", "owner_stall_s", "peer_floor_bps", "peer_floor_window_s"):
        assert getattr(fetch, key) == getattr(params, key), key
    assert fetch.hub_slots == params.hub_slots
    assert fetch.give_up_s == HubRetries().give_up_s
    marks = Watermarks(budget_bytes=1)
    assert (config.cache.high_watermark, config.cache.low_watermark) == (marks.high, marks.low)
    hub = inspect.signature(HubClient).parameters
    assert (hub["concurrency"].default, hub["timeout"].default, hub["retries"].default) == (
        fetch.hub_concurrency,
        fetch.hub_timeout_s,
        fetch.hub_retries,
    )
    with pytest.raises(AttributeError, match="no plain default"):
        default_of(Config, "swarm")  # a default_factory is no plain default
