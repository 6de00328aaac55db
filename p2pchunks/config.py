"""Configuration: a TOML file whose every key has a default, and ``P2PCHUNKS_<SECTION>_<KEY>`` env overrides.

Owns the names, types and defaults of every setting (docs/configuration.md is their reference) and their
validation. Unknown sections or keys, wrong types and impossible values are refused with a ``BadConfig`` that
names the key; nothing is silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadConfig


@dataclass(frozen=True)
class AgentSection:
    cache_dir: str = "/var/cache/p2pchunks"
    hub: str = "http://127.0.0.1:8080/"
    """The hub: ``http(s)://host:port/`` (reference hub) or ``zdb://host:port/namespace`` (the zos hub)."""
    mode: str = "node"
    """``node`` or ``seed`` (a volunteer farmer node: publicly reachable, holds the official images)."""
    farm: str = ""
    """Farm id, used by trackers to hand out nearby peers first."""


@dataclass(frozen=True)
class CacheSection:
    budget_bytes: int = 0
    """0: no byte budget (the percent budget applies)."""
    budget_percent: float = 50.0
    high_watermark: float = 0.90
    low_watermark: float = 0.80


@dataclass(frozen=True)
class ApiSection:
    listen: str = "127.0.0.1:7760"
    token: str = ""
    """Required (as ``Authorization: Bearer <token>``) when ``listen`` is not a loopback address."""


@dataclass(frozen=True)
class SwarmSection:
    enabled: bool = True
    """False: hub only, as zos fetches today (the netsim baseline)."""
    listen: str = "0.0.0.0:6881"
    inbound: bool = True
    utp: bool = True
    dht: bool = True
    lsd: bool = True
    port_mapping: bool = False
    upload_rate_bps: int = 0
    download_rate_bps: int = 0
    limit_local_peers: bool = False
    connections_limit: int = 200
    bootstrap_file: str = ""
    """Signed list of volunteer seeds (empty: the list shipped in the package)."""
    bootstrap: list[str] = field(default_factory=list)
    """Extra ``host:port`` DHT/BitTorrent endpoints of seeds, used as given (tests, private grids)."""
    trackers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FetchSection:
    discovery_grace_s: float = 1.0
    hot_deadline_s: float = 3.0
    owner_stall_s: float = 5.0
    peer_floor_bps: int = 64 * 1024
    peer_floor_window_s: float = 10.0
    peer_wait_s: float = 2.0
    """On-demand reads: how long to wait for peers that have a chunk before asking the hub."""
    hub_slots: int = 8
    hub_concurrency: int = 16
    hub_timeout_s: float = 10.0
    hub_retries: int = 3
    hub_rate_bps: int = 0
    """Hub budget of this agent (0: none)."""
    job_timeout_s: float = 3600.0


@dataclass(frozen=True)
class TrackerSection:
    enabled: bool = False
    listen: str = "0.0.0.0:6969"
    interval_s: int = 60


@dataclass(frozen=True)
class WarmSection:
    official: bool = True
    official_file: str = ""
    """Signed list of official images (empty: the list shipped in the package)."""
    refresh_s: float = 6 * 3600.0
    max_start_delay_s: float = 1800.0
    hub_rate_bps: int = 2 * 1024 * 1024
    trusted_keys: list[str] = field(default_factory=list)
    """Hex Ed25519 public keys trusted for signed lists, besides the release keys shipped in the package."""


@dataclass(frozen=True)
class RfsSection:
    cache_dir: str = ""
    """The node's rfs cache (``/var/cache/modules/flistd/cache`` on zos); empty: no cache fill."""
    zdb_listen: str = ""
    """``host:port`` of the zdb proxy (empty: off)."""


@dataclass(frozen=True)
class Config:
    agent: AgentSection = field(default_factory=AgentSection)
    cache: CacheSection = field(default_factory=CacheSection)
    api: ApiSection = field(default_factory=ApiSection)
    swarm: SwarmSection = field(default_factory=SwarmSection)
    fetch: FetchSection = field(default_factory=FetchSection)
    tracker: TrackerSection = field(default_factory=TrackerSection)
    warm: WarmSection = field(default_factory=WarmSection)
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
        return raw
    except ValueError:
        raise BadConfig(f"{value.var}={value.raw!r} is not a valid {where}") from None


def _validate(section: Any, name: str) -> None:
    if isinstance(section, AgentSection) and section.mode not in ("node", "seed"):
        raise BadConfig(f"agent.mode must be 'node' or 'seed', got {section.mode!r}")
    if isinstance(section, CacheSection):
        if not 0 < section.low_watermark <= section.high_watermark <= 1:
            raise BadConfig("cache watermarks need 0 < low_watermark <= high_watermark <= 1")
        if not 0 < section.budget_percent <= 100 or section.budget_bytes < 0:
            raise BadConfig("cache.budget_percent must be in (0, 100] and cache.budget_bytes >= 0")
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if f.name.endswith(("_s", "_bps", "_bytes")) and isinstance(value, int | float) and value < 0:
            raise BadConfig(f"{name}.{f.name} must not be negative")
        if f.name == "listen" and value and ":" not in value:
            raise BadConfig(f"{name}.listen must be host:port, got {value!r}")


def split_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise BadConfig(f"not host:port: {value!r}")
    return host.strip("[]"), int(port)
