"""The netns lab, for real: namespaces, NAT, tbf caps and teardown (root only; skipped otherwise).

All traffic is between namespaces the lab creates (addresses in 10.231.0.0/16, which exist nowhere else). Each
probe is a small Python socket program started in a namespace with ``lab.run``, bounded by socket timeouts and
``communicate(timeout=...)``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from netsim.netns import Host, NetnsLab, cleanup_stale, list_namespaces, missing_requirements
from p2pchunks.errors import BadConfig

MISSING = missing_requirements()
needs_netns = pytest.mark.skipif(bool(MISSING), reason="netns lab needs: " + "; ".join(MISSING))
pytestmark = pytest.mark.netns

PORT = 7000
MIB = 1024 * 1024

PROBE = r"""
import json, socket, sys, time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "serve":
    server = socket.create_server((host, port))
    server.settimeout(20)
    print("ready", flush=True)
    for _ in range(int(sys.argv[4])):
        try:
            conn, (peer, _) = server.accept()
        except TimeoutError:
            break
        with conn:
            conn.settimeout(20)
            stream = conn.makefile("rb")
            verb, size = stream.readline().split()
            if verb == b"up":
                got = 0
                while chunk := stream.read1(65536):
                    got += len(chunk)
                conn.sendall(json.dumps({"peer": peer, "bytes": got}).encode())
            else:
                conn.sendall(b"x" * int(size))
            stream.close()
    server.close()
else:
    verb, size, timeout = sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
    start = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.settimeout(20)
            conn.sendall(f"{verb} {size}\n".encode())
            if verb == "up":
                conn.sendall(b"x" * size)
            conn.shutdown(socket.SHUT_WR)
            data = bytearray()
            while chunk := conn.recv(65536):
                data += chunk
        reply = json.loads(data) if verb == "up" else {"bytes": len(data)}
        print(json.dumps({"ok": True, "elapsed": time.monotonic() - start, **reply}))
    except OSError as error:
        print(json.dumps({"ok": False, "error": repr(error)}))
"""


def serve(lab: NetnsLab, host: Host, connections: int) -> subprocess.Popen[str]:
    proc = lab.run(
        host,
        [sys.executable, "-c", PROBE, "serve", "0.0.0.0", str(PORT), str(connections)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.communicate(timeout=10)


def connect(
    lab: NetnsLab, host: Host, target: str, verb: str = "up", size: int = 1000, timeout: float = 3.0
) -> dict[str, Any]:
    argv = [sys.executable, "-c", PROBE, "client", target, str(PORT), verb, str(size), str(timeout)]
    with lab.run(host, argv, stdout=subprocess.PIPE, text=True) as proc:
        out, _ = proc.communicate(timeout=60)
    result: dict[str, Any] = json.loads(out)
    return result


def root_namespace_state() -> tuple[str, str]:
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True, check=True).stdout
    names = "\n".join(sorted(line.split(":")[1].strip() for line in links.splitlines()))
    return names, routes


@pytest.fixture(scope="module")
def lab() -> Iterator[NetnsLab]:
    with NetnsLab() as lab:
        lab.add_host("pub", "hubfarm", nat=False)
        lab.add_host("a1", "fa", nat=False)
        lab.add_host("b1", "fb", nat=True)
        lab.add_host("b2", "fb", nat=True)
        lab.add_host("c1", "fc", nat=True)
        lab.add_host("slow-up", "fa", nat=False, up_mbps=8)
        lab.add_host("slow-down", "fa", nat=False, down_mbps=8)
        yield lab


# ---- no root needed ----


def test_a_public_subnet_is_refused() -> None:
    with pytest.raises(BadConfig, match="private /16"):
        NetnsLab(subnet="8.8.0.0/16")


def test_add_host_before_open_is_refused() -> None:
    with pytest.raises(BadConfig, match="before open"):
        NetnsLab().add_host("x", "f", nat=False)


# ---- root ----


@needs_netns
def test_public_and_farm_hosts_connect_both_ways(lab: NetnsLab) -> None:
    pub, a1 = lab.hosts["pub"], lab.hosts["a1"]
    for server, client in ((pub, a1), (a1, pub)):
        proc = serve(lab, server, 1)
        result = connect(lab, client, server.address)
        stop(proc)
        assert result["ok"], result
        assert result["peer"] == client.address
        assert result["bytes"] == 1000


@needs_netns
def test_nat_host_connects_out_through_its_router(lab: NetnsLab) -> None:
    pub, b1 = lab.hosts["pub"], lab.hosts["b1"]
    proc = serve(lab, pub, 1)
    result = connect(lab, b1, pub.address)
    stop(proc)
    assert result["ok"], result
    assert result["peer"] == b1.seen_as != b1.address  # masqueraded behind the router's WAN address


@needs_netns
def test_nobody_outside_a_nat_farm_connects_in(lab: NetnsLab) -> None:
    pub, b1, b2, c1 = (lab.hosts[n] for n in ("pub", "b1", "b2", "c1"))
    dropped_before = lab.dropped_inbound("fb")
    proc = serve(lab, b1, 1)
    from_public = connect(lab, pub, b1.address, timeout=1.5)
    via_router = connect(lab, pub, b1.seen_as, timeout=1.5)
    from_other_nat = connect(lab, c1, b1.address, timeout=1.5)
    same_farm = connect(lab, b2, b1.address)  # control: the server is up and reachable from its own LAN
    stop(proc)
    assert same_farm["ok"], same_farm
    assert same_farm["peer"] == b2.address
    for attempt in (from_public, via_router, from_other_nat):
        assert not attempt["ok"], attempt
        assert "timed out" in attempt["error"], attempt  # dropped, not refused
    assert lab.dropped_inbound("fb") > dropped_before


def _sent_bytes(stats: str) -> int:
    match = re.search(r"qdisc tbf .*?Sent (\d+) bytes", stats, re.S)
    assert match, stats
    return int(match.group(1))


@needs_netns
def test_tbf_caps_upload_and_download(lab: NetnsLab) -> None:
    pub, a1, slow_up, slow_down = (lab.hosts[n] for n in ("pub", "a1", "slow-up", "slow-down"))
    size = MIB
    proc = serve(lab, pub, 4)
    fast_up = connect(lab, a1, pub.address, "up", size)
    capped_up = connect(lab, slow_up, pub.address, "up", size)
    fast_down = connect(lab, a1, pub.address, "down", size)
    capped_down = connect(lab, slow_down, pub.address, "down", size)
    stop(proc)
    for result in (fast_up, capped_up, fast_down, capped_down):
        assert result["ok"], result
        assert result["bytes"] == size
    # loose: 1 MiB at 8 Mbit/s takes about a second; uncapped over veth, milliseconds
    assert capped_up["elapsed"] > 3 * fast_up["elapsed"]
    assert capped_down["elapsed"] > 3 * fast_down["elapsed"]
    assert _sent_bytes(lab.qdisc_stats(slow_up)) >= size
    assert "tbf" not in lab.qdisc_stats(a1)


@needs_netns
def test_a_farm_wan_is_capped_both_ways_and_counted() -> None:
    with NetnsLab() as lab:
        pub = lab.add_host("pub", "p", nat=False)
        inside = lab.add_host("in", "f", nat=True)
        with pytest.raises(BadConfig, match="no NAT router"):
            lab.cap_wan("p", down_mbps=8)
        lab.cap_wan("f", up_mbps=40, down_mbps=80)
        before = lab.wan_bytes("f")
        proc = serve(lab, pub, 2)
        down = connect(lab, inside, pub.address, "down", MIB)
        up = connect(lab, inside, pub.address, "up", MIB // 2)
        stop(proc)
        received, sent = (after - start for after, start in zip(lab.wan_bytes("f"), before, strict=True))
        up_stats, down_stats = lab.wan_qdiscs("f")
    assert down["ok"], down
    assert up["ok"], up
    # payload plus headers and the other direction's acks (a few %)
    assert MIB <= received < 1.3 * MIB
    assert MIB // 2 <= sent < 0.7 * MIB
    assert "rate 40Mbit" in up_stats
    assert _sent_bytes(up_stats) >= MIB // 2
    assert "rate 80Mbit" in down_stats
    assert _sent_bytes(down_stats) >= MIB


@needs_netns
def test_close_stops_processes_and_removes_every_namespace() -> None:
    before = root_namespace_state()
    with NetnsLab() as lab:
        host = lab.add_host("h", "f", nat=True, up_mbps=10, down_mbps=10)
        lab.add_host("p", "g", nat=False)
        sleeper = lab.run(host, [sys.executable, "-c", "import time; time.sleep(60)"])
        ours = [n for n in list_namespaces() if n.startswith(lab.prefix)]
        assert len(ours) == 4  # switch, router, two hosts
        assert root_namespace_state() == before  # nothing added outside the namespaces
    assert sleeper.poll() is not None
    assert not [n for n in list_namespaces() if n.startswith(lab.prefix)]
    lab.close()  # idempotent


@needs_netns
def test_a_failure_inside_the_lab_still_tears_it_down() -> None:
    lab = NetnsLab()

    def build_twice() -> None:
        with lab:
            lab.add_host("twice", "f", nat=True)
            lab.add_host("twice", "f", nat=True)

    with pytest.raises(BadConfig, match="exists already"):
        build_twice()
    assert not [n for n in list_namespaces() if n.startswith(lab.prefix)]


@needs_netns
def test_cleanup_stale_removes_leftovers_but_spares_live_runs() -> None:
    with NetnsLab() as live, NetnsLab() as leftover:
        leftover.add_host("x", "f", nat=True)
        live.add_host("y", "f", nat=False)
        assert not any(n.startswith(live.prefix) for n in cleanup_stale())  # our pid is alive
        removed = cleanup_stale(leftover.prefix, only_dead=False)
        assert sorted(removed) == sorted(n for n in removed if n.startswith(leftover.prefix))
        assert len(removed) == 3
        names = list_namespaces()
        assert not [n for n in names if n.startswith(leftover.prefix)]
        assert len([n for n in names if n.startswith(live.prefix)]) == 2
