"""Official images: signed lists (refused when bad or older), the staggered schedule, and the warmer for real."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import trio

from p2pchunks.errors import BadManifest, BadSignature, StaleVersion
from p2pchunks.formats.seedlist import (
    ListInForce,
    OfficialImage,
    OfficialList,
    parse_bootstrap,
    parse_official,
    shipped_keys,
    shipped_list,
)
from p2pchunks.formats.signing import TrustedKeys, generate_keypair, load_signing_key, sign_file
from p2pchunks.hub.server import open_hub_server
from p2pchunks.policy.eviction import Pin
from p2pchunks.policy.warmup import plan_warm, start_delay

from .swarmkit import agent_config, agents, make_image


def signed(tmp: Path, name: str, text: str, key: Path) -> Path:
    path = tmp / name
    path.write_text(text)
    sign_file(path, load_signing_key(key))
    return path


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, TrustedKeys]:
    secret, public = generate_keypair(tmp_path / "release")
    return secret, TrustedKeys.from_hex([public.read_text().strip()])


def test_shipped_lists_verify_against_shipped_keys() -> None:
    for kind in ("official", "bootstrap"):
        listed = ListInForce(kind, shipped_keys()).offer(shipped_list(f"{kind}.toml"))
        assert listed.version >= 1


def test_both_release_keys_are_trusted_and_the_official_list_names_todays_hub() -> None:
    keys_dir = Path(__file__).resolve().parent.parent / "p2pchunks" / "keys"
    names = sorted(path.name for path in keys_dir.glob("*.pub"))
    assert names == ["release-2026-11.pub", "release-2026-12.pub"]
    assert not list(keys_dir.glob("*.key"))  # secrets never ship
    december = TrustedKeys.from_hex([(keys_dir / "release-2026-12.pub").read_text().strip()])
    listed = ListInForce("official", december).offer(shipped_list("official.toml"))  # re-signed with the new key
    assert isinstance(listed, OfficialList)
    assert listed.version == 2
    assert all(image.flist.startswith("https://hub.threefold.me/") for image in listed.images)


def test_a_bad_signature_or_an_older_version_is_refused_and_the_list_in_force_stays(
    tmp_path: Path, keys: tuple[Path, TrustedKeys]
) -> None:
    secret, trusted = keys
    in_force = ListInForce("official", trusted)
    v2 = signed(tmp_path, "v2.toml", 'version = 2\n[[image]]\nname = "a"\nmanifest = "a"\n', secret)
    assert in_force.offer(v2).version == 2
    v1 = signed(tmp_path, "v1.toml", 'version = 1\n[[image]]\nname = "old"\nmanifest = "old"\n', secret)
    with pytest.raises(StaleVersion):
        in_force.offer(v1)
    tampered = signed(tmp_path, "v3.toml", 'version = 3\n[[image]]\nname = "a"\nmanifest = "a"\n', secret)
    tampered.write_text(tampered.read_text().replace('"a"', '"evil"'))
    with pytest.raises(BadSignature):
        in_force.offer(tampered)
    other_secret, _ = generate_keypair(tmp_path / "stranger")
    foreign = signed(tmp_path, "v4.toml", "version = 4\n", other_secret)
    with pytest.raises(BadSignature):
        in_force.offer(foreign)
    unsigned = tmp_path / "v5.toml"
    unsigned.write_text("version = 5\n")
    with pytest.raises(BadSignature):
        in_force.offer(unsigned)
    assert in_force.current is not None
    assert in_force.current.version == 2


@pytest.mark.parametrize(
    "text",
    [
        "",
        "version = -1\n",
        "version = 'one'\n",
        "version = 1\nimage = 3\n",
        'version = 1\n[[image]]\nname = "a"\n',
        "version = 1\n",  # no [[image]] at all: maybe a list of another kind
        'version = 1\nimage = []\n[[seed]]\nname = "s"\naddress = "127.0.0.1:1"\n',
        'version = 1\n[[image]]\nname = "a"\nmanifest = "a"\ncolour = "red"\n',
        'version = 1\n[[image]]\nname = "a"\nmanifest = "a"\npriority = "high"\n',
        'version = 1\n[[image]]\nname = "a"\nmanifest = "a"\n[[image]]\nname = "a"\nmanifest = "b"\n',
        "version = [",
    ],
)
def test_malformed_official_lists(text: str) -> None:
    with pytest.raises(BadManifest):
        parse_official(text.encode())


def test_bootstrap_list_gives_dht_nodes_and_trackers() -> None:
    listed = parse_bootstrap(
        b'version = 3\n[[seed]]\nname = "s"\naddress = "127.0.0.9:6881"\ntracker = "http://127.0.0.9:6969/announce"\n'
    )
    assert listed.dht_nodes == [("127.0.0.9", 6881)]
    assert listed.trackers == ["http://127.0.0.9:6969/announce"]
    with pytest.raises(BadManifest):
        parse_bootstrap(b'version = 1\n[[seed]]\nname = "s"\naddress = "nowhere"\n')


def test_start_delays_spread_a_release_over_the_window() -> None:
    delays = [start_delay(f"10.0.{i // 250}.{i % 250}", 7, 600.0) for i in range(2000)]
    assert all(0 <= d < 600 for d in delays)
    assert 250 < statistics.mean(delays) < 350  # uniform: mean ≈ 300
    assert max(delays) - min(delays) > 550
    assert start_delay("10.0.0.1", 7, 600.0) == start_delay("10.0.0.1", 7, 600.0)  # a restart keeps its slot
    assert start_delay("10.0.0.1", 8, 600.0) != start_delay("10.0.0.1", 7, 600.0)  # a new release re-rolls
    assert start_delay("10.0.0.1", 7, 0.0) == 0.0


def test_plan_warm_new_changed_and_dropped_images() -> None:
    images = [OfficialImage("b", "b", priority=2), OfficialImage("a", "a", priority=1)]
    plan = plan_warm(images, held={"a": "id-a", "gone": "id-gone"}, resolved={"a": "id-a2", "b": "id-b"})
    assert [image.name for image in plan.warm] == ["a", "b"]
    assert set(plan.unpin) == {"id-a", "id-gone"}
    steady = plan_warm(images, held={"a": "id-a2", "b": "id-b"}, resolved={"a": "id-a2", "b": "id-b"})
    assert steady.warm == ()
    assert steady.unpin == ()


async def test_the_warmer_fetches_pins_waits_its_delay_and_respects_its_hub_budget(
    tmp_path: Path, keys: tuple[Path, TrustedKeys]
) -> None:
    secret, trusted = keys
    image = make_image(tmp_path, mib=1, name="official-vm")
    official = signed(
        tmp_path, "official.toml", 'version = 1\n[[image]]\nname = "vm"\nmanifest = "official-vm"\n', secret
    )
    budget = 400_000  # bytes/s: the ~1.3 MB image needs ≥ 3 s at this budget
    async with open_hub_server(tmp_path / "hub") as (_, url):
        config = agent_config(
            tmp_path,
            url,
            name="warm",
            warm={
                "official": True,
                "official_file": str(official),
                "trusted_keys": [k.hex() for k in trusted],
                "max_start_delay_s": 2.0,
                "hub_rate_bps": budget,
                "refresh_s": 3600.0,
            },
            custody={"enabled": False},  # every image whole, pinned as a manifest (custody: tests/test_custody_agents)
        )
        delay = start_delay(config.swarm.listen.rsplit(":", 1)[0], 1, 2.0)
        started = trio.current_time()
        async with agents([config]) as (agent,):
            assert agent.warmer is not None
            with trio.fail_after(60):
                while agent.warmer.passes == 0:  # noqa: ASYNC110 - the warmer runs on its own schedule
                    await trio.sleep(0.05)
            took = trio.current_time() - started
            pins = {mid: pin for mid, _, pin in agent.cache.manifests()}
            assert pins[image.manifest.manifest_id] == Pin.OFFICIAL
            assert all(agent.cache.has(c) for c in image.manifest.chunk_ids)
            assert agent.warmer.held == {"vm": image.manifest.manifest_id}
    assert took >= delay + image.manifest.unique_bytes / budget * 0.8
