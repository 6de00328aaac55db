"""The netns backend: the harness's unix-socket bridge (anywhere) and whole runs in a lab (root only).

The bridge tests need no root: a forwarder process listens on a unix socket under ``tmp_path`` and bridges to a
small HTTP server on 127.0.0.1, exactly as it does inside a namespace. The lab tests run real agents in
namespaces addressed only inside 10.231.0.0/16 and check that nothing of the lab survives the run.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from netsim.netns import NAME_PREFIX, list_namespaces, missing_requirements
from netsim.netns_backend import HUB_HOST, LabTransport, NetnsBackend, forwarder_argv, wait_forwarding
from netsim.runner import Run, RunOptions
from netsim.scenarios import Knobs, knobs_for, run, topology
from netsim.topology import HubSpec, ImageSpec, Topology, farm
from p2pchunks.errors import BadConfig, P2PChunksError

MISSING = missing_requirements()
needs_netns = pytest.mark.skipif(bool(MISSING), reason="netns lab needs: " + "; ".join(MISSING))
Start = Callable[[int], tuple[subprocess.Popen[bytes], Path]]


async def _http_server(stream: trio.SocketStream, connections: Iterator[int]) -> None:
    """Answer each request with the connection's number and the request line, until the client closes."""
    buffer, number = b"", next(connections)
    async with stream:
        while True:
            while b"\r\n\r\n" not in buffer:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            body = b"%d %s" % (number, head.split(b"\r\n", 1)[0])
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.fixture
async def http_port(nursery: trio.Nursery) -> int:
    connections = itertools.count()
    listeners = await nursery.start(
        partial(trio.serve_tcp, host="127.0.0.1"), partial(_http_server, connections=connections), 0
    )
    return int(listeners[0].socket.getsockname()[1])


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # A short path: unix socket paths are limited to 107 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="p2pc-test-") as directory:
        yield Path(directory)


def _stop(process: subprocess.Popen[bytes]) -> int:
    """Close the forwarder's stdin (its stop signal) and return its exit code."""
    assert process.stdin is not None
    process.stdin.close()
    return process.wait(timeout=10)


@pytest.fixture
def forwarder(socket_dir: Path) -> Iterator[Start]:
    """Start a forwarder to 127.0.0.1:<port> on a fresh unix socket, listening on return; stopped at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> tuple[subprocess.Popen[bytes], Path]:
        path = socket_dir / f"f{len(started)}.sock"
        process = subprocess.Popen(forwarder_argv(path, "127.0.0.1", port), stdin=subprocess.PIPE)
        started.append(process)
        wait_forwarding(process, path)
        return process, path

    yield start
    for process in started:
        if process.poll() is None:
            _stop(process)
        elif process.stdin is not None:
            process.stdin.close()


async def test_forwarder_bridges_http_keepalive_and_stops_on_stdin_eof(http_port: int, forwarder: Start) -> None:
    process, path = await trio.to_thread.run_sync(forwarder, http_port)
    transport = LabTransport({("10.231.0.9", 7760): path})
    with trio.fail_after(20):
        async with httpx.AsyncClient(transport=transport) as http:
            first = await http.get("http://10.231.0.9:7760/status")
            second = await http.post("http://10.231.0.9:7760/fetch", content=b"{}")
    # Both requests over one bridged connection (keep-alive goes through the forwarder).
    assert (first.status_code, first.text) == (200, "0 GET /status HTTP/1.1")
    assert (second.status_code, second.text) == (200, "0 POST /fetch HTTP/1.1")
    assert await trio.to_thread.run_sync(_stop, process) == 0


async def test_forwarder_closes_client_when_service_is_down(forwarder: Start) -> None:
    with trio.socket.socket() as probe:  # a port with nobody listening
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _, path = await trio.to_thread.run_sync(forwarder, port)
    with trio.fail_after(20):
        async with httpx.AsyncClient(transport=LabTransport({("10.231.0.9", 7760): path})) as http:
            # Closed before any response: EOF or reset, never a hang and never a connect error (it listens).
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                await http.get("http://10.231.0.9:7760/status")


@pytest.mark.parametrize(
    "url",
    [
        "http://10.231.0.9:7761/status",  # known host, other port
        "http://10.231.0.10:7760/status",  # other host
        "http://127.0.0.1:7760/status",
        "https://10.231.0.9/status",
    ],
)
async def test_transport_refuses_every_other_destination(url: str, socket_dir: Path) -> None:
    transport = LabTransport({("10.231.0.9", 7760): socket_dir / "absent.sock"})
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(httpx.ConnectError, match="not an endpoint of this netns lab"):
            await http.get(url)


def test_wait_forwarding_reports_a_dead_forwarder(socket_dir: Path) -> None:
    argv = forwarder_argv(socket_dir / "missing-dir" / "x.sock", "127.0.0.1", 1)
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with pytest.raises(P2PChunksError, match="exited with 1"):
        wait_forwarding(process, socket_dir / "missing-dir" / "x.sock")
    process.wait(timeout=10)


def _leftovers() -> list[str]:
    ours = f"{NAME_PREFIX}{os.getpid()}-"
    namespaces = [name for name in list_namespaces() if name.startswith(ours)]
    sockets = [p.name for p in Path(tempfile.gettempdir()).glob(f"p2pc-fwd-{os.getpid()}-*")]
    return namespaces + sockets


@pytest.mark.netns
@pytest.mark.slow
@needs_netns
async def test_farm_deploy_in_a_lab_shares_the_hub_work() -> None:
    # 32 chunks: more than a node's hub slots (8), so one node that has not found its peers by the end of the
    # discovery grace (it then fetches alone, a slot-full at most) cannot double the hub's work on its own.
    knobs = Knobs(nodes=3, image_mib=16, backend="netns", hub_mbps=50, deadline_s=120)
    result = await run("farm-deploy", knobs)
    assert result["backend"] == "netns"
    assert result["errors"] == []
    assert len(result["per_node_done_s"]) == 3
    assert all(done is not None for done in result["per_node_done_s"])
    assert result["corrupt_chunks"] == 0
    assert result["image_bytes"] == 16 * 2**20
    assert result["hub_bytes"] <= 1.3 * result["image_bytes"], (result["hub_reasons"], result["timeline"])
    assert result["peer_bytes"] > 0
    assert _leftovers() == []


@pytest.mark.netns
@pytest.mark.slow
@needs_netns
async def test_nat_farm_mates_share_on_their_lan_what_the_seed_sends_through_their_router(tmp_path: Path) -> None:
    # Two hosts behind one strict-NAT router (agents with inbound on: the router drops what comes from outside),
    # a public seed holding the image. The seed sees the farm as one address (the router's) and keeps one
    # connection per address and port: it serves the farm through one of them, and the two share on their LAN.
    topo = topology("nat-behind-seed", knobs_for("nat-behind-seed", nodes=2, image_mib=8, up_mbps=None, down_mbps=None))
    backend = NetnsBackend(topo)
    try:
        lans = ipaddress.IPv4Network("10.231.128.0/17")
        roles = {node.role: ipaddress.IPv4Address(backend.address(node)) in lans for node in topo.nodes}
        assert roles == {"seed": False, "nat": True}
        options = RunOptions(workdir=tmp_path, scenario="nat-behind-seed", deadline_s=120)
        result = await Run(topo, options, backend).execute()
    finally:
        backend.close()
    image = result["image_bytes"]
    nodes = {name: line for name, line in result["per_node"].items() if line["fetches"]}
    assert result["errors"] == []
    assert (result["nodes"], result["seeds"]) == (2, 1)
    assert all(done is not None for done in result["per_node_done_s"])
    assert result["corrupt_chunks"] == 0
    assert result["hub_bytes"] <= 0.05 * image, result["hub_reasons"]
    # every byte came from the seed or the farm-mate, and some went over the LAN
    for name, line in nodes.items():
        peers = line["from_peers"]
        assert peers["seed"] + peers["farm"] + line["from_hub"] >= image, (name, line)
        assert peers["other"] == peers["unknown"] == 0, (name, line)
    assert sum(line["from_peers"]["farm"] for line in nodes.values()) > 0
    assert sum(line["to_peers"]["farm"] for line in nodes.values()) > 0
    # the seed served the farm (through its router's address), about one copy through the farm's WAN
    assert result["bytes_by_source"]["seed_upload"] >= image
    assert result["bytes_by_source"]["from_seed"] >= image
    assert image <= result["wan"]["farm0"]["in_bytes"] <= 1.3 * image
    assert _leftovers() == []


@pytest.mark.netns
@needs_netns
def test_a_lab_that_fails_to_build_leaves_nothing() -> None:
    nodes = (*farm(2, up_mbps=None, down_mbps=None), *farm(1, up_mbps=None, down_mbps=None, first_address=9))
    clash = dataclasses.replace(nodes[2], name=HUB_HOST)  # the hub's host name: add_host refuses it
    topo = Topology(hub=HubSpec(), nodes=(*nodes[:2], clash), image=ImageSpec(size_mib=1))
    with pytest.raises(BadConfig, match="exists already"):
        NetnsBackend(topo)
    assert _leftovers() == []
