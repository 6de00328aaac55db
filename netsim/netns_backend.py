"""The netns backend of the netsim runner: every host a network namespace of a :class:`NetnsLab`.

Owns mapping a ``Topology`` onto a lab (one public host for the hub, one host per node: NAT nodes behind their
farm's router, which does the blocking — the agents keep inbound on —, caps and farm WAN caps as tbf) and the only
way the harness reaches into it. It must not know scenarios or what the processes it starts do, beyond the two
ports the runner uses (the agents' API and the hub).

How the harness (root namespace, no route into the lab) talks to the hub and the agents' APIs — a unix-socket
bridge through the filesystem, because path-bound unix sockets belong to no network namespace:

    harness httpx client ── LabTransport ── unix socket <tmp>/<host>.sock ── forwarder (inside the host's netns)
                                                                               └── TCP to the service, in that netns

* One *forwarder* per host (``python -m netsim.netns_backend forward SOCK HOST PORT``, stdlib only, a thread per
  connection) is started with ``lab.run`` inside the host; it accepts on its unix socket and connects each client
  to the service over TCP inside the namespace. It exits when its stdin closes (the backend closes it, or the
  harness died), and the lab kills it anyway on close.
* The harness keeps using lab URLs (``http://<lab address>:<port>``, so logs read naturally): ``http_transport()``
  returns a :class:`LabTransport` that sends each request to the unix socket of its ``(host, port)`` and refuses
  every other destination with ``httpx.ConnectError``, so the root namespace never sends a packet anywhere, and
  its routes are never touched.
* Agents' APIs listen on ``127.0.0.1:7760`` *inside* their namespace (``spawn`` sets ``P2PCHUNKS_API_LISTEN`` for
  every process started on a node host, overriding the config's lab address): no token is needed and other lab
  hosts cannot reach the API. Swarm and tracker listen on the node's lab address as configured. The hub listens on
  its lab address (agents fetch from it), and its forwarder connects there.

Every address used is inside the lab's subnet or loopback; everything (processes, namespaces, socket directory)
goes in ``close``, which ``__init__`` also runs when building the lab fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import httpx

from p2pchunks.errors import P2PChunksError

from .netns import DEFAULT_SUBNET, Host, NetnsLab
from .topology import NodeSpec, Topology

API_PORT = 7760
"""The agents' API port (``runner.API_PORT``; repeated so forwarders need not import the runner)."""
HUB_PORT = 8080
"""The hub's port on non-loopback backends (``runner.HUB_PORT``)."""
HUB_HOST = "_hub"
"""The lab host name of the hub (node names never start with ``_`` in generated topologies)."""
API_LISTEN_ENV = "P2PCHUNKS_API_LISTEN"
_READY_TIMEOUT_S = 20.0
_CONNECT_TIMEOUT_S = 5.0
_BUFFER = 65536


# ---- the forwarder (runs inside a namespace; stdlib only) -----------------------------------------------------


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until EOF, then half-close ``sink``; on error, shut both down."""
    try:
        while data := source.recv(_BUFFER):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _bridge(client: socket.socket, host: str, port: int) -> None:
    with client:
        try:
            upstream = socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S)
        except OSError:
            return  # the client sees EOF before a response: "not up yet"
        with upstream:
            upstream.settimeout(None)
            back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
            back.start()
            _pipe(client, upstream)
            back.join()


def _accept(server: socket.socket, host: str, port: int) -> None:
    while True:
        client, _ = server.accept()
        threading.Thread(target=_bridge, args=(client, host, port), daemon=True).start()


def forward(path: Path, host: str, port: int, stdin: IO[bytes]) -> None:
    """Serve the unix socket ``path``, bridging each connection to TCP ``host:port``, until ``stdin`` closes.

    ``path`` appears only once the socket listens (bound under a staging name, then renamed)."""
    staging = path.with_name(path.name + ".tmp")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(staging))
    server.listen(128)
    os.rename(staging, path)
    threading.Thread(target=_accept, args=(server, host, port), daemon=True).start()
    stdin.read()
    # The accept thread is a daemon blocked in accept(): the process simply ends, closing every socket.


def forwarder_argv(path: Path, host: str, port: int) -> list[str]:
    """The command of a forwarder (start it with ``stdin=subprocess.PIPE``; closing that pipe stops it)."""
    return [sys.executable, "-m", "netsim.netns_backend", "forward", str(path), host, str(port)]


def wait_forwarding(process: subprocess.Popen[Any], path: Path, timeout_s: float = _READY_TIMEOUT_S) -> None:
    """Return once ``path`` listens; raise :class:`P2PChunksError` if the forwarder died or took too long."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            raise P2PChunksError(f"forwarder for {path.name} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise P2PChunksError(f"forwarder for {path.name} not listening after {timeout_s:.0f} s")
        time.sleep(0.02)


# ---- the harness's side ---------------------------------------------------------------------------------------


class LabTransport(httpx.AsyncBaseTransport):
    """Send each request to the forwarder of its ``(host, port)``; refuse every other destination."""

    def __init__(self, sockets: Mapping[tuple[str, int], Path]) -> None:
        self._transports = {key: httpx.AsyncHTTPTransport(uds=str(path)) for key, path in sockets.items()}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        key = (url.host, url.port or (443 if url.scheme == "https" else 80))
        transport = self._transports.get(key)
        if transport is None:
            raise httpx.ConnectError(f"{key[0]}:{key[1]} is not an endpoint of this netns lab", request=request)
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()


def _release(lab: NetnsLab, forwarders: list[subprocess.Popen[bytes]], directory: Path) -> None:
    """Stop the forwarders (close their stdin), close the lab, remove the socket directory. Idempotent."""
    for process in forwarders:
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
    for process in forwarders:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=2)
    lab.close()  # kills whatever is still running in the lab, deletes its namespaces
    forwarders.clear()
    shutil.rmtree(directory, ignore_errors=True)


class NetnsBackend:
    """A :class:`NetnsLab` holding the hub and every node of ``topo``; reached through :meth:`http_transport`."""

    nat_standin = False
    shapes_links = True

    def __init__(self, topo: Topology, subnet: str = DEFAULT_SUBNET) -> None:
        self.lab = NetnsLab(subnet)
        self.hosts: dict[str, Host] = {}
        self.sockets = Path(tempfile.mkdtemp(prefix=f"p2pc-fwd-{os.getpid()}-"))
        self._routes: dict[tuple[str, int], Path] = {}
        self._forwarders: list[subprocess.Popen[bytes]] = []
        self._finalizer = weakref.finalize(self, _release, self.lab, self._forwarders, self.sockets)
        try:
            self.lab.open()
            hub = self.lab.add_host(HUB_HOST, farm="", nat=False)
            self.hub_address = hub.address
            for node in topo.nodes:
                self.hosts[node.name] = self.lab.add_host(
                    node.name, node.farm, nat=not node.public, up_mbps=node.up_mbps, down_mbps=node.down_mbps
                )
            for link in topo.wan:
                self.lab.cap_wan(link.farm, link.up_mbps, link.down_mbps)
            started = [self._forward(hub, "hub", hub.address, hub.address, HUB_PORT)]
            for i, host in enumerate(self.hosts.values()):
                started.append(self._forward(host, f"n{i}", host.address, "127.0.0.1", API_PORT))
            for process, path in started:
                wait_forwarding(process, path)
        except BaseException:
            self.close()
            raise

    def _forward(
        self, host: Host, label: str, address: str, target: str, port: int
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """Start the forwarder serving ``http://address:port`` for the harness, connecting to ``target:port``."""
        path = self.sockets / f"{label}.sock"
        process: subprocess.Popen[bytes] = self.lab.run(
            host, forwarder_argv(path, target, port), stdin=subprocess.PIPE, start_new_session=True
        )
        self._forwarders.append(process)
        self._routes[(address, port)] = path
        return process, path

    # ---- the runner's Backend protocol ----

    def address(self, node: NodeSpec) -> str:
        """The node's lab address (private for a NAT node): where its swarm listens and its API is reached."""
        return self.hosts[node.name].address

    def seen_as(self, node: NodeSpec) -> str:
        return self.hosts[node.name].seen_as

    def wan_bytes(self) -> dict[str, tuple[int, int]]:
        return {farm: self.lab.wan_bytes(farm) for farm in self.lab.nat_farms}

    def http_transport(self) -> httpx.AsyncBaseTransport:
        """A new transport for the harness's client: lab URLs, carried over the forwarders' unix sockets."""
        return LabTransport(self._routes)

    def spawn(self, host: str | None, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the node host ``host`` (``None``: the hub's), output appended to ``log``.

        On a node host the agent API is moved to ``127.0.0.1:7760`` inside the namespace (``P2PCHUNKS_API_LISTEN``),
        where that host's forwarder reaches it."""
        env = dict(os.environ)
        if host is None:
            target = self.lab.hosts[HUB_HOST]
        else:
            target = self.hosts[host]
            env[API_LISTEN_ENV] = f"127.0.0.1:{API_PORT}"
        with log.open("ab") as out:
            process: subprocess.Popen[bytes] = self.lab.run(
                target, argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )  # fmt: skip
        return process

    def close(self) -> None:
        """Stop every process of the lab, delete its namespaces and the socket directory. Safe to call twice."""
        self._finalizer()


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] != "forward":
        print("usage: python -m netsim.netns_backend forward SOCKET HOST PORT", file=sys.stderr)
        return 2
    forward(Path(argv[1]), argv[2], int(argv[3]), sys.stdin.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
