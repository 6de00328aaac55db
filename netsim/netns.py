"""The root-only netsim backend's plumbing: hosts as Linux network namespaces, NAT farms, bandwidth caps.

Owns creating and removing everything a run needs below the agents: one *switch* namespace holding a bridge (the
public network), one namespace per host joined to it by a veth pair, and for NAT farms a *router* namespace (a WAN
veth on the switch, a LAN bridge for the farm's hosts) doing nftables masquerade with every new inbound connection
dropped. Per-host caps are tbf qdiscs: upload on the host's end of its veth, download on the other end; a NAT farm's
WAN caps the same way on its router's WAN veth (``cap_wan``), whose byte counters tell what crossed it
(``wan_bytes``). It must not know agents, hubs or scenarios: the runner asks for hosts and starts processes in them
with ``run``.

Isolation: every address is inside one private test prefix (``10.231.0.0/16`` by default) that exists only in the
namespaces made here; commands only ever target those namespaces (``ip -n``, ``ip netns exec``), so the root
namespace gets no interface, address, route or rule. Names carry a per-lab prefix ``p2pc-<pid>-<n>-``. A lab is a
context manager; ``close`` (also run at exit for labs left open) kills the processes it started and deletes its
namespaces, which takes their interfaces, qdiscs and rules with them. ``cleanup_stale`` removes leftovers of dead
runs (a SIGKILLed run cannot clean up after itself).

Addresses: public hosts and routers' WAN ends get ``<prefix>.0.2`` upward in the lower half (/17); NAT farm k gets
the LAN ``<prefix>.(128+k).0/24``, its router ``.1``. Public hosts and routers route each NAT LAN via its router, so
private addresses are reachable in principle and only the router's firewall keeps inbound connections out (as on a
real LAN). Latency is not injected here (this kernel has no netem): the hub adds its own.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from p2pchunks.errors import BadConfig, P2PChunksError

NAME_PREFIX = "p2pc-"
DEFAULT_SUBNET = "10.231.0.0/16"
REQUIRED_TOOLS = {"ip": "iproute2", "nft": "nftables", "tc": "iproute2"}
_COMMAND_TIMEOUT_S = 30.0
_labs: weakref.WeakSet[NetnsLab] = weakref.WeakSet()
_serial = itertools.count()


def missing_requirements() -> list[str]:
    """What this machine lacks for a lab (empty: ready): root, and the ``ip``, ``nft``, ``tc`` tools."""
    missing = [] if os.geteuid() == 0 else ["root privileges (network namespaces)"]
    missing += [f"{tool} (apt-get install -y {pkg})" for tool, pkg in REQUIRED_TOOLS.items() if not shutil.which(tool)]
    return missing


def require() -> None:
    """Raise :class:`BadConfig` naming what is missing for a lab."""
    missing = missing_requirements()
    if missing:
        raise BadConfig("the netns backend needs: " + "; ".join(missing))


def _cmd(argv: Sequence[str], stdin: str | None = None, check: bool = True) -> str:
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise P2PChunksError(f"{' '.join(argv)}: {error}") from None
    if check and done.returncode != 0:
        raise P2PChunksError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def list_namespaces() -> list[str]:
    """Names of all network namespaces (``ip netns list``)."""
    return [line.split()[0] for line in _cmd(["ip", "netns", "list"]).splitlines() if line.strip()]


def _kill_inside(netns: str) -> None:
    """Kill the processes still inside ``netns`` (ours: only our runs enter our namespaces), by pid."""
    for pid in _cmd(["ip", "netns", "pids", netns], check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _delete_namespace(netns: str) -> None:
    _kill_inside(netns)
    _cmd(["ip", "netns", "delete", netns], check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str = NAME_PREFIX, *, only_dead: bool = True) -> list[str]:
    """Delete namespaces named ``prefix…``; with ``only_dead``, spare those of a still-running ``p2pc-<pid>-`` run.

    Returns the names removed."""
    removed = []
    for name in list_namespaces():
        if not name.startswith(prefix):
            continue
        match = re.match(re.escape(NAME_PREFIX) + r"(\d+)-", name)
        if only_dead and match and _pid_alive(int(match.group(1))):
            continue
        _delete_namespace(name)
        removed.append(name)
    return removed


def _tbf(netns: str, dev: str, mbps: float) -> None:
    rate_bytes = mbps * 1_000_000 / 8
    burst = max(int(rate_bytes * 0.01), 16 * 1024)
    _cmd(
        [
            *("ip", "netns", "exec", netns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf"),
            *("rate", f"{int(mbps * 1_000_000)}bit", "burst", str(burst), "latency", "100ms"),
        ]
    )


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    address: str
    """The host's own address (private for a NAT host)."""
    farm: str = ""
    nat: bool = False
    seen_as: str = ""
    """The address others see its connections come from (its router's WAN address for a NAT host)."""


@dataclass
class _Router:
    netns: str
    wan: str
    lan: ipaddress.IPv4Network
    uplink: str = ""
    """The switch's end of the router's WAN veth."""
    hosts: int = 0


_RULES = """\
table ip p2pc {{
  chain nat_out {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" ip saddr {lan} masquerade
  }}
  chain filter_forward {{
    type filter hook forward priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" counter drop
  }}
  chain filter_input {{
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" counter drop
  }}
}}
"""


class NetnsLab:
    """A set of namespaces for one run; use as a context manager (``close`` is idempotent)."""

    def __init__(self, subnet: str = DEFAULT_SUBNET, prefix: str | None = None) -> None:
        net = ipaddress.IPv4Network(subnet)
        if net.prefixlen != 16 or not net.is_private:
            raise BadConfig(f"netns subnet must be a private /16: {subnet}")
        self.prefix = prefix or f"{NAME_PREFIX}{os.getpid()}-{next(_serial)}-"
        self.hosts: dict[str, Host] = {}
        self._net = net
        self._routers: dict[str, _Router] = {}
        self._public: list[str] = []
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._next_public = 2
        self._links = 0
        self._open = False

    @property
    def switch(self) -> str:
        return f"{self.prefix}sw"

    def __enter__(self) -> NetnsLab:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Create the switch namespace and its bridge."""
        if self._open:
            return
        require()
        self._open = True
        _labs.add(self)
        try:
            self._namespace(self.switch)
            # A plain switch: multicast floods (with IGMP snooping and no querier, a host whose join the bridge has
            # not learned yet misses its farm-mates' LSD announces)
            self._ip(self.switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
            self._ip(self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    # ---- building ----

    def _ip(self, netns: str, *args: str) -> None:
        _cmd(["ip", "-n", netns, *args])

    def _namespace(self, name: str) -> None:
        _cmd(["ip", "netns", "add", name])
        self._namespaces.append(name)
        self._ip(name, "link", "set", "lo", "up")

    def _address(self, offset: int) -> str:
        return str(self._net.network_address + offset)

    def _take_public(self) -> str:
        if self._next_public >= 2**15 - 1:
            raise BadConfig("netns lab: no public address left")
        address = self._address(self._next_public)
        self._next_public += 1
        return address

    def _plug(self, outer_ns: str, bridge: str, inner_ns: str, inner_dev: str) -> str:
        """A veth pair: ``inner_dev`` in ``inner_ns``, the other end (returned) on ``bridge`` in ``outer_ns``."""
        self._links += 1
        outer = f"v{self._links}"
        self._ip(outer_ns, "link", "add", outer, "type", "veth", "peer", "name", inner_dev, "netns", inner_ns)
        self._ip(outer_ns, "link", "set", outer, "master", bridge, "up")
        self._ip(inner_ns, "link", "set", inner_dev, "up")
        return outer

    def _route_nat_lans(self, netns: str, routers: Sequence[_Router]) -> None:
        for router in routers:
            if router.netns != netns:
                self._ip(netns, "route", "add", str(router.lan), "via", router.wan)

    def _router(self, farm: str) -> _Router:
        router = self._routers.get(farm)
        if router is not None:
            return router
        k = len(self._routers)
        if k >= 127:
            raise BadConfig("netns lab: at most 127 NAT farms")
        netns = f"{self.prefix}r{k}"
        lan = ipaddress.IPv4Network(f"{self._net.network_address + (128 + k) * 256}/24")
        router = _Router(netns, self._take_public(), lan)
        self._namespace(netns)
        router.uplink = self._plug(self.switch, "br0", netns, "wan")
        self._ip(netns, "addr", "add", f"{router.wan}/17", "dev", "wan")
        self._ip(netns, "link", "add", "lan", "type", "bridge", "mcast_snooping", "0")
        self._ip(netns, "addr", "add", f"{lan.network_address + 1}/24", "dev", "lan")
        self._ip(netns, "link", "set", "lan", "up")
        _cmd(["ip", "netns", "exec", netns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        _cmd(["ip", "netns", "exec", netns, "nft", "-f", "-"], stdin=_RULES.format(lan=lan))
        self._route_nat_lans(netns, list(self._routers.values()))
        for other in self._public + [r.netns for r in self._routers.values()]:
            self._route_nat_lans(other, [router])
        self._routers[farm] = router
        return router

    def add_host(
        self, name: str, farm: str, nat: bool, up_mbps: float | None = None, down_mbps: float | None = None
    ) -> Host:
        """A host in ``farm``; behind the farm's NAT router when ``nat``, else on the public switch."""
        if not self._open:
            raise BadConfig("netns lab: add_host before open (use it as a context manager)")
        if name in self.hosts:
            raise BadConfig(f"netns lab: host {name!r} exists already")
        for label, value in (("up_mbps", up_mbps), ("down_mbps", down_mbps)):
            if value is not None and not value > 0:
                raise BadConfig(f"netns lab: {label} must be positive or None: {value}")
        netns = f"{self.prefix}h{len(self.hosts)}"
        if nat:
            router = self._router(farm)
            if router.hosts >= 253:
                raise BadConfig(f"netns lab: NAT farm {farm!r} is full (253 hosts)")
            router.hosts += 1
            address, seen_as = str(router.lan.network_address + 1 + router.hosts), router.wan
            self._namespace(netns)
            outer_ns, outer = router.netns, self._plug(router.netns, "lan", netns, "eth0")
            self._ip(netns, "addr", "add", f"{address}/24", "dev", "eth0")
            self._ip(netns, "route", "add", "default", "via", str(router.lan.network_address + 1))
        else:
            address = seen_as = self._take_public()
            self._namespace(netns)
            outer_ns, outer = self.switch, self._plug(self.switch, "br0", netns, "eth0")
            self._ip(netns, "addr", "add", f"{address}/17", "dev", "eth0")
            # No default route here, so multicast needs its own: without it LSD cannot announce, and hosts of one
            # farm would not find each other on their LAN. (Multicast stays on the lab's switch.)
            self._ip(netns, "route", "add", "224.0.0.0/4", "dev", "eth0")
            self._route_nat_lans(netns, list(self._routers.values()))
            self._public.append(netns)
        if up_mbps is not None:
            _tbf(netns, "eth0", up_mbps)
        if down_mbps is not None:
            _tbf(outer_ns, outer, down_mbps)
        host = Host(name, netns, address, farm, nat, seen_as)
        self.hosts[name] = host
        return host

    def cap_wan(self, farm: str, up_mbps: float | None = None, down_mbps: float | None = None) -> None:
        """Cap what the NAT router of ``farm`` (created by its first NAT host) sends out and lets in."""
        router = self._routers.get(farm)
        if router is None:
            raise BadConfig(f"netns lab: farm {farm!r} has no NAT router (add a NAT host first)")
        for label, value in (("up_mbps", up_mbps), ("down_mbps", down_mbps)):
            if value is not None and not value > 0:
                raise BadConfig(f"netns lab: WAN {label} must be positive or None: {value}")
        if up_mbps is not None:
            _tbf(router.netns, "wan", up_mbps)
        if down_mbps is not None:
            _tbf(self.switch, router.uplink, down_mbps)

    # ---- using ----

    def run(self, host: Host, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host`` (``ip netns exec``); the lab kills it on close if still running."""
        proc: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", host.netns, *argv], **popen)
        self._procs.append(proc)
        return proc

    def output(self, host: Host, argv: Sequence[str], stdin: str | None = None) -> str:
        """Run ``argv`` inside ``host`` to completion and return its stdout (raises on failure)."""
        return _cmd(["ip", "netns", "exec", host.netns, *argv], stdin=stdin)

    def dropped_inbound(self, farm: str) -> int:
        """Packets the NAT router of ``farm`` dropped coming in from outside (new connections)."""
        netns = self._routers[farm].netns
        listing = _cmd(["ip", "netns", "exec", netns, "nft", "list", "table", "ip", "p2pc"])
        return sum(int(n) for n in re.findall(r"counter packets (\d+) bytes \d+ drop", listing))

    def wan_bytes(self, farm: str) -> tuple[int, int]:
        """Bytes (received, sent) on the WAN port of ``farm``'s NAT router so far: what entered and left the farm,
        headers included."""
        netns = self._routers[farm].netns
        stats = json.loads(_cmd(["ip", "-n", netns, "-s", "-j", "link", "show", "dev", "wan"]))[0]["stats64"]
        return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])

    def wan_qdiscs(self, farm: str) -> tuple[str, str]:
        """``tc -s qdisc`` of the router's WAN port (its upload) and of the switch's end (the farm's download)."""
        router = self._routers[farm]
        up = _cmd(["ip", "netns", "exec", router.netns, "tc", "-s", "qdisc", "show", "dev", "wan"])
        down = _cmd(["ip", "netns", "exec", self.switch, "tc", "-s", "qdisc", "show", "dev", router.uplink])
        return up, down

    @property
    def nat_farms(self) -> list[str]:
        """Farms that have a NAT router, in creation order."""
        return list(self._routers)

    def qdisc_stats(self, host: Host) -> str:
        """``tc -s qdisc`` of the host's interface (its upload cap)."""
        return self.output(host, ["tc", "-s", "qdisc", "show", "dev", "eth0"])

    # ---- tearing down ----

    def close(self) -> None:
        """Stop the processes started here, delete every namespace of the lab. Safe to call twice."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=3)
        self._procs.clear()
        for netns in reversed(self._namespaces):
            _delete_namespace(netns)
        self._namespaces.clear()
        self._open = False
        _labs.discard(self)


@atexit.register
def _close_open_labs() -> None:
    for lab in list(_labs):
        lab.close()
