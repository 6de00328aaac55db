"""Hostile input: the local API and the seeds' tracker fuzzed over real sockets, path traversal, oversized heads and
bodies, slow clients, and hostile documents (bencode bombs, cross-kind and replayed signed lists).

The servers run in a thread of their own (a real agent, its tracker and a hub, each on 127.0.0.x) so that
Hypothesis can drive them example after example with a plain blocking socket: whatever arrives, the answer is
never a 5xx other than 503/504/507 (hub down, hub timeout, cache full) and the server still answers afterwards.
"""

from __future__ import annotations

import json
import socket
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pchunks.agent import Agent, open_agent
from p2pchunks.errors import BadManifest, StaleVersion
from p2pchunks.formats.bencoding import bencode
from p2pchunks.formats.manifest import Manifest
from p2pchunks.formats.seedlist import ListInForce
from p2pchunks.formats.signing import TrustedKeys, generate_keypair, load_signing_key, sign_file
from p2pchunks.http.server import ServerLimits, serve_http
from p2pchunks.hub.server import open_hub_server
from p2pchunks.swarm.tracker import Tracker

from .swarmkit import address, agent_config, make_image

ALLOWED_5XX = {503, 504, 507}
ROUTES = ["chunks", "status", "metrics", "fetch", "warm", "fill", "jobs", "manifests", "cache", "announce", "pin", "gc"]
TRAVERSALS = [
    "/chunks/..%2f..%2fetc%2fpasswd",
    "/chunks/../../etc/passwd",
    "/chunks/%2e%2e/%2e%2e/etc/passwd",
    "/chunks/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/chunks/..%5c..%5cetc%5cpasswd",
    "/chunks/%252e%252e%252fetc%252fpasswd",
    "/chunks//etc/passwd",
    "/manifests/..%2f..%2f..%2fetc%2fpasswd",
    "/manifests/%2fetc%2fpasswd",
    "/manifests/..%2f..%2f..%2fetc%2fpasswd.p2p",
    "/manifests/%2e%2e",
    "//etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/jobs/..%2f1",
]


class Served:
    """The servers of the module (a plain class: Hypothesis prints it by its short repr)."""

    def __init__(
        self,
        agent: Agent,
        host: str,
        tracker_port: int,
        hub_url: str,
        image: Manifest,
        token: trio.lowlevel.TrioToken,
        scope: trio.CancelScope,
    ) -> None:
        self.agent, self.host, self.tracker_port, self.hub_url = agent, host, tracker_port, hub_url
        self.image, self.token, self.scope = image, token, scope

    def __repr__(self) -> str:
        return f"Served({self.host})"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """An agent (with its tracker) and a hub, served from a thread running its own trio loop."""
    tmp = tmp_path_factory.mktemp("input")
    image = make_image(tmp, mib=0.25, seed=31)
    ip = address()
    box: dict[str, Any] = {}
    ready = threading.Event()

    async def main() -> None:
        async with open_hub_server(tmp / "hub") as (_, url):
            config = agent_config(
                tmp, url, name="agent", ip=ip, tracker={"enabled": True, "listen": f"{ip}:0"}, fetch={"hub_retries": 0}
            )
            async with open_agent(config, swarm=False) as agent:
                await agent.manifests.remember(image.manifest)  # its tracker serves torrents of manifests it holds
                with trio.CancelScope() as scope:
                    box["served"] = Served(
                        agent, ip, agent.tracker_port, url, image.manifest, trio.lowlevel.current_trio_token(), scope
                    )
                    ready.set()
                    await trio.sleep_forever()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as error:
            box["error"] = error
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="served", daemon=True)
    thread.start()
    assert ready.wait(60)
    if "error" in box:
        raise box["error"]
    server: Served = box["served"]
    try:
        yield server
    finally:
        trio.from_thread.run_sync(server.scope.cancel, trio_token=server.token)
        thread.join(60)
    assert not thread.is_alive()
    assert "error" not in box, box.get("error")


def exchange(host: str, port: int, raw: bytes, *, timeout: float = 20.0) -> tuple[int | None, bytes]:
    """Send ``raw``, half-close, read until the server closes: (status or None if it closed silently, body)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may already have answered and closed (e.g. 431 before the whole head was sent)
        received = b""
        try:
            while len(received) < 4 * 2**20:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        except ConnectionResetError:
            pass
    if not received.startswith(b"HTTP/1.1 "):
        return None, received
    return int(received[9:12]), received.partition(b"\r\n\r\n")[2]


def request(method: str, target: str, headers: list[tuple[str, str]] = (), body: bytes = b"") -> bytes:  # type: ignore[assignment]
    lines = [f"{method} {target} HTTP/1.1", "Host: fuzz"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def assert_acceptable(status: int | None, what: object) -> None:
    assert status is None or status < 500 or status in ALLOWED_5XX, (status, what)


def assert_alive(server: Served) -> None:
    status, body = exchange(server.host, server.agent.api_port, request("GET", "/status"))
    assert status == 200, body[:200]


# ---- strategies ----------------------------------------------------------------------------------------------

HEX = "0123456789abcdef"
chunk_ids = st.one_of(
    st.text(HEX, min_size=64, max_size=64),
    st.text(HEX, min_size=32, max_size=32),
    st.text(HEX + "ABCDEFxyz./%", min_size=0, max_size=70),
)
segments = st.one_of(
    st.sampled_from(ROUTES),
    chunk_ids,
    st.sampled_from(
        ["..", ".", "%2e%2e", "..%2f", "%00", "%ff", "%C2%B2", "\u00b2", "img", "1", "-1", "99999999999999"]
    ),
    st.text(max_size=20).map(lambda s: quote(s, safe="")),
)
paths = st.lists(segments, min_size=0, max_size=5).map(lambda parts: "/" + "/".join(parts))
queries = st.one_of(
    st.just(""),
    st.dictionaries(
        st.sampled_from(["limit", "farm", "info_hash", "peer_id", "port", "numwant", "event", "x"]),
        st.one_of(st.text(max_size=30), st.integers().map(str), st.sampled_from(["\u00b2", "٣", "1e9", "-5"])),
        max_size=4,
    ).map(lambda q: "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in q.items())),
)
methods = st.one_of(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]), st.from_regex(r"\A[A-Z]{1,10}\Z")
)
header_names = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z").filter(
    lambda n: n.lower() not in ("content-length", "host", "transfer-encoding")
)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
json_bodies = st.dictionaries(
    st.sampled_from(["manifest", "wait", "pin", "chunk", "dry_run", "force", "x"]), json_values, max_size=4
).map(lambda d: json.dumps(d).encode())
bodies = st.one_of(st.just(b""), json_bodies, st.binary(max_size=512))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=methods,
    path=paths,
    query=queries,
    headers=st.lists(st.tuples(header_names, header_values), max_size=4),
    body=bodies,
)
def test_fuzz_the_api(
    served: Served, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    target = path + query
    # a valid manifest with "wait" would start a real (small) fetch: fine, it is allowed to take its time
    status, answer = exchange(served.host, served.agent.api_port, request(method, target, headers, body))
    assert_acceptable(status, (method, target, headers, body[:100]))
    if status is not None and status >= 400 and method != "HEAD":
        assert json.loads(answer)["status"] == status  # errors are the documented JSON shape
    assert_alive(served)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=queries, raw=st.binary(max_size=200), method=methods)
def test_fuzz_the_tracker(served: Served, query: str, raw: bytes, method: str) -> None:
    raw_query = quote(raw, safe="=&")
    for target in (f"/announce{query}", f"/announce?{raw_query}", f"/announce?info_hash={quote(raw)}&peer_id=x&port=1"):
        status, _ = exchange(served.host, served.tracker_port, request(method, target))
        assert status is not None, (method, target)
        assert status < 500, (method, target, status)
    status, body = exchange(served.host, served.tracker_port, request("GET", "/announce?" + _valid_announce(served)))
    assert status == 200
    assert b"5:peers" in body, body  # a peer list, not a failure


def _valid_announce(served: Served) -> str:
    info_hash = bytes.fromhex(served.image.infohash or "")[:20]
    return f"info_hash={quote(info_hash)}&peer_id=fuzzer&port=6881&left=0"


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=1, max_size=300))
def test_fuzz_raw_bytes_on_the_wire(served: Served, raw: bytes) -> None:
    """Not even HTTP: whatever the bytes, the answer is a 4xx (or a quiet close), never a crash."""
    for port in (served.agent.api_port, served.tracker_port):
        status, _ = exchange(served.host, port, raw)
        assert status is None or 400 <= status < 500, (raw, status)
    assert_alive(served)


# ---- explicit cases --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TRAVERSALS)
def test_traversal_is_a_4xx_and_leaks_nothing(served: Served, target: str) -> None:
    for method in ("GET", "HEAD"):
        status, body = exchange(served.host, served.agent.api_port, request(method, target))
        assert status is not None, (method, target)
        assert 400 <= status < 500, (method, target, status)
        assert b"root:" not in body


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("GET", "/jobs/%C2%B2", b""),  # "²".isdigit() is True, int("²") is not
        ("GET", "/jobs/%D9%A3", b""),  # an Arabic-Indic 3
        ("GET", "/jobs/99999999999999999999999999", b""),
        ("GET", "/cache?limit=%C2%B2", b""),
        ("GET", "/cache?limit=99999999999999999999999999", b""),
        ("GET", "/cache?limit=-1", b""),
        ("POST", "/fetch", b'{"manifest": "\\u0000.p2p"}'),
        ("POST", "/fetch", b'{"manifest": "a\\u0000b"}'),
        ("POST", "/fetch", b'{"manifest": "' + b"x" * 5000 + b'.p2p"}'),
        ("POST", "/fetch", b'{"manifest": "img", "pin": ["official"]}'),
        ("POST", "/warm", b'{"manifest": {"a": 1}}'),
        ("POST", "/cache/pin", b'{"chunk": "' + b"a" * 64 + b'", "pin": 7}'),
        ("POST", "/cache/pin", b'{"chunk": null}'),
        ("POST", "/cache/pin", b'{"manifest": 5}'),
        ("POST", "/cache/gc", b"[1, 2]"),
        ("POST", "/cache/gc", b'{"dry_run": "no"}'),
        ("POST", "/fetch", b"\xff\xfe"),
        ("POST", "/fetch", b"1e999999"),
        ("POST", "/fetch", b"[" * 100_000 + b"]" * 100_000),
        ("GET", "/manifests/%00", b""),
        ("GET", "/manifests/" + "a" * 300, b""),
        ("GET", "/manifests/http:%2F%2F127.0.0.1:1%2Fx.p2p", b""),
    ],
)
def test_odd_but_well_formed_requests_are_4xx(served: Served, method: str, target: str, body: bytes) -> None:
    status, answer = exchange(served.host, served.agent.api_port, request(method, target, body=body))
    assert status is not None, answer[:300]
    assert 400 <= status < 500, (status, answer[:300])
    assert_alive(served)


def test_huge_head_is_431_and_huge_body_is_413(served: Served) -> None:
    port = served.agent.api_port
    status, _ = exchange(served.host, port, request("GET", "/status", [("X-Pad", "a" * 40_000)]))
    assert status == 431
    status, _ = exchange(served.host, port, request("GET", "/" + "a" * 40_000))
    assert status == 431
    many = [(f"X-{i}", "v" * 100) for i in range(400)]
    status, _ = exchange(served.host, port, request("GET", "/status", many))
    assert status == 431
    body = b'{"manifest": "' + b"a" * (2 * 2**20) + b'"}'
    status, _ = exchange(served.host, port, request("POST", "/fetch", body=body))
    assert status == 413
    # over the API's own JSON limit, under the server's: still refused as too large
    body = b'{"manifest": "' + b"a" * (200 * 1024) + b'"}'
    status, _ = exchange(served.host, port, request("POST", "/fetch", body=body))
    assert status == 413
    # declared but never sent
    status, _ = exchange(served.host, port, b"POST /fetch HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n")
    assert status == 413
    assert_alive(served)


# ---- slow clients and memory -----------------------------------------------------------------------------------


async def test_fifty_slow_and_flooding_clients_get_408_and_431_in_bounded_memory(nursery: trio.Nursery) -> None:
    limits = ServerLimits(max_header_bytes=4096, header_timeout=0.5, body_timeout=0.5, idle_timeout=1.0)
    host = address()
    port = await nursery.start(
        lambda task_status: serve_http(Tracker(lambda _: False).handle, host, 0, limits=limits, task_status=task_status)
    )
    flood = b"X-Flood: " + b"a" * 65536
    statuses: list[int | None] = []

    async def client(slow: bool) -> None:
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            received = b""
            with trio.move_on_after(10):
                try:
                    await stream.send_all(b"GET /announce?port=1 HTTP/1.1\r\nHost: x\r\n")
                    for _ in range(200):
                        await stream.send_all(b"X-Slow: 1\r\n" if slow else flood)
                        if slow:
                            await trio.sleep(0.05)
                except trio.BrokenResourceError:
                    pass
                while data := await stream.receive_some(65536):
                    received += data
            statuses.append(int(received[9:12]) if received.startswith(b"HTTP/1.1 ") else None)

    tracemalloc.start()
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as clients:
                for i in range(50):
                    clients.start_soon(client, i % 2 == 0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sorted(s or 0 for s in statuses) == [408] * 25 + [431] * 25, statuses
    assert peak < 8 * 2**20, peak  # ~50 x 4 KiB heads; a server that kept what floods it would hold > 100 MiB
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(b"GET /announce HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        with trio.fail_after(5):
            while data := await stream.receive_some(65536):
                answer += data
    assert answer.startswith(b"HTTP/1.1 400")


# ---- hostile documents -----------------------------------------------------------------------------------------

BOMBS: list[tuple[str, bytes]] = [
    ("deep lists", b"l" * 200_000 + b"e" * 200_000),
    ("deep dicts", b"d1:a" * 50_000 + b"i0e" + b"e" * 50_000),
    ("huge declared string", b"d4:info99999999999999:"),
    ("declared string past the end", b"d4:name2147483647:x"),
    ("a million items", b"l" + b"i0e" * 1_000_000 + b"e"),
    ("huge integer", b"d1:ai" + b"9" * 10_000 + b"ee"),
    ("not a dict", bencode([b"p2pchunks", 1])),
    ("wrong types", bencode({b"p2pchunks": b"1", b"name": 5, b"files": {}, b"hot": b"x"})),
    ("empty dict", bencode({})),
    ("signature without body", bencode({b"signature": {b"key": b"k" * 32, b"sig": b"s" * 64}})),
]


@pytest.mark.parametrize("doc", [doc for _, doc in BOMBS], ids=[name for name, _ in BOMBS])
def test_manifest_bombs_are_bad_manifest(doc: bytes) -> None:
    with pytest.raises(BadManifest):
        Manifest.decode(doc)


LIST_TEXT = {
    "official": 'version = 9\n[[image]]\nname = "a"\nmanifest = "a"\n',
    "bootstrap": 'version = 9\n[[seed]]\nname = "s"\naddress = "127.0.0.1:6881"\n',
}


@pytest.mark.parametrize(
    ("signed_as", "offered_as"),
    [("official", "bootstrap"), ("bootstrap", "official")],
)
def test_a_signed_list_of_one_kind_is_not_accepted_as_the_other(
    tmp_path: Path, signed_as: str, offered_as: str
) -> None:
    secret, public = generate_keypair(tmp_path / "release")
    trusted = TrustedKeys.from_hex([public.read_text().strip()])
    path = tmp_path / f"{signed_as}.toml"
    path.write_text(LIST_TEXT[signed_as])
    sign_file(path, load_signing_key(secret))
    in_force = ListInForce(offered_as, trusted)
    with pytest.raises(BadManifest):
        in_force.offer(path)
    assert in_force.current is None


def test_replaying_each_older_version_is_refused(tmp_path: Path) -> None:
    secret, public = generate_keypair(tmp_path / "release")
    trusted = TrustedKeys.from_hex([public.read_text().strip()])
    in_force = ListInForce("official", trusted)
    files = []
    for version in range(1, 6):
        path = tmp_path / f"v{version}.toml"
        path.write_text(f'version = {version}\n[[image]]\nname = "a"\nmanifest = "m{version}"\n')
        sign_file(path, load_signing_key(secret))
        files.append(path)
    in_force.offer(files[-1])
    for older in files[:-1]:
        with pytest.raises(StaleVersion):
            in_force.offer(older)
        assert in_force.current is not None
        assert in_force.current.version == 5
