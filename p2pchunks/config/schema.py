"""Configuration: a TOML file whose every key has a default, and ``P2PCHUNKS_<SECTION>_<KEY>`` env overrides.

Owns the names, types and defaults of every setting (docs/configuration.md is their reference) and their
validation. Unknown sections or keys, wrong types and impossible values are refused with a ``BadConfig`` that
names the key; nothing is silently ignored.

A default lives in one place: the lowest layer that uses it. The pure policy cannot import the config, so the
keys it reads take their defaults from it here (``FetchParams``, ``HubRetries``, ``Watermarks``:
:func:`default_of`); the services above (the hub client, the swarm's ``SwarmSettings``) take theirs from these
sections. Must not know libtorrent, HTTP or the agent.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadConfig
from ..policy.custody import CustodyParams
from ..policy.eviction import Watermarks
from ..policy.fetch import FetchParams
from ..policy.retry import HubRetries


def default_of(cls: type[Any], name: str) -> Any:
    """The default of the field ``name`` of the dataclass ``cls`` (works for slotted dataclasses too)."""
    for f in dataclasses.fields(cls):
        if f.name == name and f.default is not dataclasses.MISSING:
            return f.default
    raise AttributeError(f"{cls.__name__}.{name} has no plain default")


@dataclass(frozen=True)
class AgentSection:
    cache_dir: str = "/var/cache/p2pchunks"
    """Holds ``chunks/ab/cd/<id>``, ``index.sqlite3`` and ``manifests/``; also the swarm's save path."""
    hub: str | list[str] = "http://127.0.0.1:8080/"
    """The hub, or a list of hubs tried in turn (mirrors): ``zdb://host:port/namespace`` (the zos hub),
    ``http(s)://host:port/`` (a p2pchunks hub root), ``rfs+http(s)://host/path`` (an rfs HTTP store),
    ``server://http/host:port`` (an rfs server). See docs/zos.md."""
    mode: str = "node"
    """``node`` or ``seed`` (a volunteer farmer node: publicly reachable, holds the official images)."""
    farm: str = ""
    """Farm id, sent to seed trackers (``?farm=``) so they hand out peers of the same farm first."""


@dataclass(frozen=True)
class CacheSection:
    budget_bytes: int = 0
    """0: no byte budget (the percent budget applies)."""
    budget_percent: float = 50.0
    """Budget as a share of the filesystem holding the cache; the smaller of the two budgets applies."""
    high_watermark: float = default_of(Watermarks, "high")
    """Eviction starts when the cache holds more than this share of its budget."""
    low_watermark: float = default_of(Watermarks, "low")
    """... and stops below this share. Nothing is ever evicted for being old."""
    scrub_rate_bps: int = 1024 * 1024
    """The scrub re-hashes every cached file in turn at this many bytes/s (0: off); reads are always verified."""


@dataclass(frozen=True)
class ApiSection:
    listen: str = "127.0.0.1:7760"
    """The local API (loopback by default)."""
    token: str = ""
    """Required (as ``Authorization: Bearer <token>``) when ``listen`` is not a loopback address."""


@dataclass(frozen=True)
class SwarmSection:
    enabled: bool = True
    """False: hub only, as zos fetches today (the netsim baseline)."""
    listen: str = "0.0.0.0:6881"
    """BitTorrent and DHT listener; a specific address is also used for outgoing connections."""
    inbound: bool = True
    """Keep true, behind a strict NAT router too: the router drops what comes from outside, and farm-mates must
    reach each other on the LAN. False refuses every inbound connection, farm-mates included (the loopback test
    stand-in for strict NAT); DHT, LSD and outgoing stay alive."""
    utp: bool = True
    """uTP besides TCP (slow on loopback: off in tests and the netsim)."""
    dht: bool = True
    """The private grid DHT, bootstrapped from the seeds (never the public DHT bootstrap)."""
    relaxed_dht: bool = False
    """Lab only (tests, netsim): lift libtorrent's DHT sybil guards, which allow one node per /24 in routing tables
    and search results and drop reserved networks; many nodes on 127.0.0.x need that. Never on the internet."""
    lsd: bool = True
    """Local service discovery: finds nodes of the same LAN/farm by multicast."""
    port_mapping: bool = False
    """Ask the router for a port mapping (UPnP / NAT-PMP)."""
    upload_rate_bps: int = 0
    """Upload cap in bytes/s (0: none)."""
    download_rate_bps: int = 0
    """Download cap from peers in bytes/s (0: none)."""
    limit_local_peers: bool = False
    """Apply the caps to LAN peers too (libtorrent exempts them by default)."""
    connections_limit: int = 0
    """Most peer connections at once (0: 200 for a node, 1,000 for a seed)."""
    bootstrap_file: str = ""
    """Signed list of volunteer seeds (empty: the list shipped in the package)."""
    bootstrap: list[str] = field(default_factory=list)
    """Extra ``host:port`` DHT/BitTorrent endpoints of seeds, used as given (tests, private grids)."""
    trackers: list[str] = field(default_factory=list)
    """Extra tracker announce URLs (seed trackers from the bootstrap list are added)."""


@dataclass(frozen=True)
class FetchSection:
    discovery_grace_s: float = default_of(FetchParams, "discovery_grace_s")
    """Wait this long for peers before the first hub request of a job."""
    hot_deadline_s: float = default_of(FetchParams, "hot_deadline_s")
    """Boot-critical chunks still missing this long after a job started come from the hub."""
    owner_stall_s: float = default_of(FetchParams, "owner_stall_s")
    """A peer that completes no piece for this long loses its share of the hub work."""
    peer_floor_bps: int = int(default_of(FetchParams, "peer_floor_bps"))
    """Peers slower than this (bytes/s) ..."""
    peer_floor_window_s: float = default_of(FetchParams, "peer_floor_window_s")
    """... for this long: the hub may serve chunks peers have."""
    peer_wait_s: float = 2.0
    """On-demand reads: how long to wait for peers that have a chunk before asking the hub."""
    hub_slots: int = default_of(FetchParams, "hub_slots")
    """Hub requests in flight per job."""
    hub_concurrency: int = 16
    """Hub requests in flight per agent."""
    hub_timeout_s: float = 10.0
    """Per-request hub timeout."""
    hub_retries: int = 3
    """Retries (jittered exponential backoff) after a hub timeout, 5xx, reset or corrupt chunk."""
    hub_rate_bps: int = 0
    """Hub budget of this agent (0: none)."""
    job_timeout_s: float = 3600.0
    """A fetch or warm job that has not finished by then fails."""
    give_up_s: float = default_of(HubRetries, "give_up_s")
    """A chunk no peer holds and the hub has failed for this long in a row fails its job (naming it)."""


@dataclass(frozen=True)
class TrackerSection:
    enabled: bool = False
    """Run the HTTP tracker (``seed`` mode turns it on)."""
    listen: str = "0.0.0.0:6969"
    """Tracker address (port-forward it on a seed)."""
    interval_s: int = 60
    """Announce interval handed to peers."""


@dataclass(frozen=True)
class WarmSection:
    official: bool = True
    """Keep the official images of the signed list warm."""
    official_file: str = ""
    """Signed list of official images (empty: the list shipped in the package)."""
    refresh_s: float = 6 * 3600.0
    """How often the list and the images' manifests are re-checked."""
    max_start_delay_s: float = 1800.0
    """Each node starts warming a new list at its own moment in this window (no hub storm)."""
    hub_rate_bps: int = 2 * 1024 * 1024
    """Hub budget of warm-up (bytes/s, 0: none)."""
    trusted_keys: list[str] = field(default_factory=list)
    """Hex Ed25519 public keys trusted for signed lists, besides the release keys shipped in the package."""


@dataclass(frozen=True)
class CustodySection:
    enabled: bool = True
    """The farm as one cache: each node warms only its custody share of the official list (`custody.copies`
    farm copies of every chunk, split by rendezvous hashing among the farm-mates it sees) and keeps the farm's last
    copies from eviction. Off: every node warms every official image whole (a seed always does)."""
    copies: int = default_of(CustodyParams, "copies")
    """Farm copies of every chunk of the official list."""
    share: float = default_of(CustodyParams, "share")
    """Most of the cache budget this node's custody may take; images past it (in list order) are left out."""
    settle_s: float = 5.0
    """Custody is computed once the farm's membership has not changed for this long (after a change too)."""
    hold_s: float = default_of(CustodyParams, "hold_s")
    """A farm-mate stays a member this long after it was last seen connected (a restart is not a leave)."""
    refresh_s: float = 2.0
    """How often the farm view (members, replica counts, histogram) is read from the swarm."""


@dataclass(frozen=True)
class RfsSection:
    cache_dir: str = ""
    """The node's rfs cache (``/var/cache/modules/flistd/cache`` on zos); empty: no cache fill."""
    zdb_listen: str = ""
    """``host:port`` of the zdb proxy (empty: off)."""
    http_listen: str = ""
    """``host:port`` of the rfs HTTP store proxy: ``/api/v1/block/<id>`` and ``/<id[0:2]>/<id>`` (empty: off)."""
    quota_bytes: int = 0
    """Most bytes the rfs cache may hold after a fill writes to it (0: no quota; ``rfs-fill --quota`` lowers it)."""
    min_free_bytes: int = 512 * 1024 * 1024
    """A fill never leaves less than this free on the rfs cache's file system."""


@dataclass(frozen=True)
class Config:
    agent: AgentSection = field(default_factory=AgentSection)
    cache: CacheSection = field(default_factory=CacheSection)
    api: ApiSection = field(default_factory=ApiSection)
    swarm: SwarmSection = field(default_factory=SwarmSection)
    fetch: FetchSection = field(default_factory=FetchSection)
    tracker: TrackerSection = field(default_factory=TrackerSection)
    warm: WarmSection = field(default_factory=WarmSection)
    custody: CustodySection = field(default_factory=CustodySection)
    rfs: RfsSection = field(default_factory=RfsSection)

    def replace(self, **sections: Mapping[str, Any]) -> Config:
        """A copy with some keys changed: ``config.replace(api={"listen": "127.0.0.2:0"})``."""
        changed = {
            name: _section(type(getattr(self, name)), values, name, getattr(self, name))
            for name, values in sections.items()
        }
        return dataclasses.replace(self, **changed)


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the TOML file (if any), then ``P2PCHUNKS_SECTION_KEY`` variables from ``env``."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as error:
            raise BadConfig(f"cannot read config {path}: {error.strerror}") from error
        except tomllib.TOMLDecodeError as error:
            raise BadConfig(f"{path}: {error}") from error
    config = Config()
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for name in data:
        if name not in sections:
            raise BadConfig(f"unknown config section [{name}] (known: {', '.join(sections)})")
        if not isinstance(data[name], dict):
            raise BadConfig(f"[{name}] must be a table")
    for name, values in _env_overrides(env if env is not None else os.environ, sections).items():
        data.setdefault(name, {}).update(values)
    return config.replace(**data)


def _env_overrides(env: Mapping[str, str], sections: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for var, raw in env.items():
        if not var.startswith("P2PCHUNKS_"):
            continue
        rest = var[len("P2PCHUNKS_") :].lower()
        section, _, key = rest.partition("_")
        if section in sections and key:
            out.setdefault(section, {})[key] = _EnvValue(raw, var)
    return out


@dataclass(frozen=True)
class _EnvValue:
    raw: str
    var: str


def _section(cls: type[Any], values: Mapping[str, Any], name: str, base: Any) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    changed = {}
    for key, value in values.items():
        if key not in known:
            raise BadConfig(f"unknown key {name}.{key} (known: {', '.join(sorted(known))})")
        changed[key] = _coerce(value, hints[key], f"{name}.{key}")
    section = dataclasses.replace(base, **changed)
    _validate(section, name)
    return section


def _coerce(value: Any, hint: Any, where: str) -> Any:
    if isinstance(value, _EnvValue):
        return _from_env(value, hint, where)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # str | list[str]: either form
        return _coerce(value, list[str] if isinstance(value, list) else str, where)
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise BadConfig(f"{where} must be a list of strings")
        return list(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise BadConfig(f"{where} must be true or false, got {value!r}")
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    raise BadConfig(f"{where} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def _from_env(value: _EnvValue, hint: Any, where: str) -> Any:
    raw = value.raw.strip()
    try:
        if hint is bool:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if typing.get_origin(hint) is list:
            return [item.strip() for item in raw.split(",") if item.strip()]
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and "," in raw:
            return [item.strip() for item in raw.split(",") if item.strip()]
        return raw
    except ValueError:
        raise BadConfig(f"{value.var}={value.raw!r} is not a valid {where}") from None


def _validate(section: Any, name: str) -> None:
    if isinstance(section, AgentSection) and section.mode not in ("node", "seed"):
        raise BadConfig(f"agent.mode must be 'node' or 'seed', got {section.mode!r}")
    if isinstance(section, CustodySection) and not (section.copies >= 1 and 0 < section.share <= 1):
        raise BadConfig("custody needs copies >= 1 and 0 < share <= 1")
    if isinstance(section, CustodySection) and (section.settle_s <= 0 or section.refresh_s <= 0):
        raise BadConfig("custody.settle_s and custody.refresh_s must be > 0")
    if isinstance(section, CacheSection):
        if not 0 < section.low_watermark <= section.high_watermark <= 1:
            raise BadConfig("cache watermarks need 0 < low_watermark <= high_watermark <= 1")
        if not 0 < section.budget_percent <= 100 or section.budget_bytes < 0:
            raise BadConfig("cache.budget_percent must be in (0, 100] and cache.budget_bytes >= 0")
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if f.name.endswith(("_s", "_bps", "_bytes")) and isinstance(value, int | float) and value < 0:
            raise BadConfig(f"{name}.{f.name} must not be negative")
        if (f.name == "listen" or f.name.endswith("_listen")) and value and ":" not in value:
            raise BadConfig(f"{name}.{f.name} must be host:port, got {value!r}")


def split_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise BadConfig(f"not host:port: {value!r}")
    return host.strip("[]"), int(port)


def join_hostport(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets: what ``split_hostport`` reads."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
