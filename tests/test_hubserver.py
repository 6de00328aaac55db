"""The reference hub over real sockets on 127.0.0.x: routes, RFC 9110 ranges, validators, knobs and accounting."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from p2pchunks.errors import HubUnavailable
from p2pchunks.hub.client import HubClient
from p2pchunks.hub.server import (
    HubServer,
    RangeDecision,
    decide_range,
    etag_matches,
    open_hub_server,
    serve_hub_forever,
)
from p2pchunks.ids import chunk_id_of

SIZE = 100_000


class Root:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.blobs: dict[str, bytes] = {}
        self.manifest = b"d4:name4:demoe" * 10

    def add(self, data: bytes, digest_size: int = 32) -> str:
        chunk_id = chunk_id_of(data, digest_size)
        folder = self.path / "chunks" / chunk_id[:2] / chunk_id[2:4]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / chunk_id).write_bytes(data)
        self.blobs[chunk_id] = data
        return chunk_id


@pytest.fixture
def root(tmp_path: Path) -> Root:
    hub = Root(tmp_path / "hub")
    hub.add(os.urandom(SIZE))
    hub.add(os.urandom(5000), digest_size=16)
    (hub.path / "manifests").mkdir(parents=True)
    (hub.path / "manifests" / "demo.p2p").write_bytes(hub.manifest)
    (hub.path / "manifests" / "other-1.2.p2p").write_bytes(b"de")
    (tmp_path / "secret").write_text("top secret")
    return hub


@pytest.fixture
async def hub(root: Root) -> AsyncIterator[tuple[HubServer, str]]:
    async with open_hub_server(root.path) as served:
        yield served


def big_id(root: Root) -> str:
    return next(i for i, b in root.blobs.items() if len(b) == SIZE)


# ---- Range decisions, pure ----------------------------------------------------------------------------------

R100 = 100


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, R100, RangeDecision(200, 0, 100)),
        ("bytes=0-9", R100, RangeDecision(206, 0, 10)),
        ("bytes=10-19", R100, RangeDecision(206, 10, 20)),
        ("bytes=99-99", R100, RangeDecision(206, 99, 100)),
        ("bytes=90-", R100, RangeDecision(206, 90, 100)),
        ("bytes=-10", R100, RangeDecision(206, 90, 100)),
        ("bytes=-500", R100, RangeDecision(206, 0, 100)),
        ("bytes=50-1000", R100, RangeDecision(206, 50, 100)),
        ("bytes=0-" + "9" * 30, R100, RangeDecision(206, 0, 100)),
        ("BYTES = 0-0", R100, RangeDecision(206, 0, 1)),
        ("bytes= 5-6 ,", R100, RangeDecision(206, 5, 7)),
        ("bytes=100-", R100, RangeDecision(416)),
        ("bytes=100-200", R100, RangeDecision(416)),
        ("bytes=" + "9" * 30 + "-", R100, RangeDecision(416)),
        ("bytes=-0", R100, RangeDecision(416)),
        ("bytes=5-4", R100, RangeDecision(416)),
        ("bytes=abc", R100, RangeDecision(416)),
        ("bytes=", R100, RangeDecision(416)),
        ("bytes", R100, RangeDecision(416)),
        ("bytes=-", R100, RangeDecision(416)),
        ("bytes=1-2-3", R100, RangeDecision(416)),
        ("bytes=+1-2", R100, RangeDecision(416)),
        ("bytes=٣-٤", R100, RangeDecision(416)),  # non-ASCII digits are not DIGIT
        ("items=0-5", R100, RangeDecision(200, 0, 100)),
        ("bytes=0-1,5-6", R100, RangeDecision(200, 0, 100)),
        ("bytes=200-300,400-", R100, RangeDecision(416)),
        ("bytes=0-1,x", R100, RangeDecision(416)),
        ("bytes=0-", 0, RangeDecision(416)),
        ("bytes=-5", 0, RangeDecision(416)),
        (None, 0, RangeDecision(200, 0, 0)),
    ],
)
def test_decide_range_table(header: str | None, size: int, expected: RangeDecision) -> None:
    assert decide_range(header, size) == expected


@given(st.text(max_size=40), st.integers(min_value=0, max_value=10**6))
def test_decide_range_never_raises_and_stays_in_bounds(header: str, size: int) -> None:
    decision = decide_range(header, size)
    assert decision.status in (200, 206, 416)
    if decision.status == 206:
        assert 0 <= decision.start < decision.stop <= size
    if decision.status == 200:
        assert (decision.start, decision.stop) == (0, size)


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 10**6))
def test_decide_range_first_last(first: int, last: int, size: int) -> None:
    decision = decide_range(f"bytes={first}-{last}", size)
    if first > last or first >= size:
        assert decision.status == 416
    else:
        assert decision == RangeDecision(206, first, min(last, size - 1) + 1)


@pytest.mark.parametrize(
    ("header", "matches"),
    [('"a"', True), ('W/"a"', True), ('"b", "a"', True), ("*", True), ('"b"', False), ("a", False)],
)
def test_etag_matches(header: str, matches: bool) -> None:
    assert etag_matches(header, '"a"') is matches


# ---- over HTTP ------------------------------------------------------------------------------------------------


async def test_chunk_routes_serve_the_bytes(root: Root, hub: tuple[HubServer, str]) -> None:
    _, url = hub
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=url) as client:
            for chunk_id, data in root.blobs.items():
                for route in (f"chunks/{chunk_id[:2]}/{chunk_id[2:4]}/{chunk_id}", f"chunks/{chunk_id}"):
                    reply = await client.get(route)
                    assert reply.status_code == 200
                    assert reply.content == data
                    assert reply.headers["etag"] == f'"{chunk_id}"'
                    assert reply.headers["accept-ranges"] == "bytes"
                    assert reply.headers["content-type"] == "application/octet-stream"
                    assert "last-modified" in reply.headers


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [
        ("bytes=0-999", 0, 1000),
        ("bytes=4000-4999", 4000, 5000),
        ("bytes=-100", SIZE - 100, SIZE),
        ("bytes=99000-", 99000, SIZE),
        ("bytes=99990-200000", 99990, SIZE),
    ],
    ids=["first", "middle", "suffix", "open-ended", "past-end-clamped"],
)
async def test_ranges(root: Root, hub: tuple[HubServer, str], header: str, start: int, stop: int) -> None:
    chunk_id = big_id(root)
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=hub[1]) as client:
            reply = await client.get(f"chunks/{chunk_id}", headers={"range": header})
    assert reply.status_code == 206
    assert reply.content == root.blobs[chunk_id][start:stop]
    assert reply.headers["content-range"] == f"bytes {start}-{stop - 1}/{SIZE}"
    assert reply.headers["content-length"] == str(stop - start)


@pytest.mark.parametrize("header", ["bytes=100000-", "bytes=200000-300000", "bytes=9-1", "bytes=x-y", "bytes=-0"])
async def test_bad_or_unsatisfiable_range_is_416(root: Root, hub: tuple[HubServer, str], header: str) -> None:
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=hub[1]) as client:
            reply = await client.get(f"chunks/{big_id(root)}", headers={"range": header})
    assert reply.status_code == 416
    assert reply.headers["content-range"] == f"bytes */{SIZE}"


async def test_head_and_validators(root: Root, hub: tuple[HubServer, str]) -> None:
    chunk_id = big_id(root)
    etag = f'"{chunk_id}"'
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=hub[1]) as client:
            head = await client.head(f"chunks/{chunk_id}")
            cached = await client.get(f"chunks/{chunk_id}", headers={"if-none-match": f'"zz", {etag}'})
            stale = await client.get(f"chunks/{chunk_id}", headers={"if-none-match": '"zz"'})
            if_range_stale = await client.get(f"chunks/{chunk_id}", headers={"range": "bytes=0-9", "if-range": '"zz"'})
            if_range_ok = await client.get(f"chunks/{chunk_id}", headers={"range": "bytes=0-9", "if-range": etag})
            head_range = await client.head(f"chunks/{chunk_id}", headers={"range": "bytes=0-9"})
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", str(SIZE))
    assert head.headers["etag"] == etag
    assert (cached.status_code, cached.content, cached.headers["etag"]) == (304, b"", etag)
    assert (stale.status_code, len(stale.content)) == (200, SIZE)
    assert (if_range_stale.status_code, len(if_range_stale.content)) == (200, SIZE)
    assert (if_range_ok.status_code, if_range_ok.content) == (206, root.blobs[chunk_id][:10])
    assert (head_range.status_code, head_range.headers["content-length"]) == (200, str(SIZE))


async def test_manifests(root: Root, hub: tuple[HubServer, str]) -> None:
    etag = f'"{hashlib.sha256(root.manifest).hexdigest()}"'
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=hub[1]) as client:
            listing = await client.get("manifests/")
            got = await client.get("manifests/demo.p2p")
            ranged = await client.get("manifests/demo.p2p", headers={"range": "bytes=-5"})
            cached = await client.get("manifests/demo.p2p", headers={"if-none-match": etag})
            missing = await client.get("manifests/nope.p2p")
            no_suffix = await client.get("manifests/demo")
            (root.path / "manifests" / "demo.p2p").write_bytes(b"le")  # republished: new bytes, new ETag
            again = await client.get("manifests/demo.p2p", headers={"if-none-match": etag})
    assert listing.json() == ["demo", "other-1.2"]
    assert (got.status_code, got.content, got.headers["etag"]) == (200, root.manifest, etag)
    assert got.headers["content-type"] == "application/x-bittorrent"
    assert (ranged.status_code, ranged.content) == (206, root.manifest[-5:])
    assert cached.status_code == 304
    assert missing.status_code == no_suffix.status_code == 404
    assert (again.status_code, again.content) == (200, b"le")


async def test_errors(root: Root, hub: tuple[HubServer, str]) -> None:
    chunk_id = big_id(root)
    absent = chunk_id_of(b"absent")
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=hub[1]) as client:
            replies = {
                "missing": await client.get(f"chunks/{absent}"),
                "missing-layout": await client.get(f"chunks/{absent[:2]}/{absent[2:4]}/{absent}"),
                "bad-id": await client.get("chunks/NOT-AN-ID"),
                "upper-hex": await client.get(f"chunks/{chunk_id.upper()}"),
                "wrong-prefix": await client.get(f"chunks/00/00/{chunk_id}"),
                "post": await client.post(f"chunks/{chunk_id}"),
                "unknown": await client.get("nothing/here"),
            }
    statuses = {name: reply.status_code for name, reply in replies.items()}
    assert statuses == {
        "missing": 404,
        "missing-layout": 404,
        "bad-id": 400,
        "upper-hex": 400,
        "wrong-prefix": 404,
        "post": 405,
        "unknown": 404,
    }
    assert replies["missing"].json()["chunk"] == absent
    assert replies["post"].headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    "target",
    [
        "/chunks/../../etc/passwd",
        "/chunks/%2e%2e/%2e%2e/etc/passwd",
        "/chunks/%2e%2e%2f%2e%2e%2fsecret",
        "/manifests/../../secret",
        "/manifests/%2e%2e%2fsecret",
        "/manifests/..%2f..%2fsecret.p2p",
        "/manifests/..secret.p2p",
        "/manifests/%2e%2e%2f%2e%2e%2fsecret%00.p2p",
    ],
)
async def test_traversal_never_reaches_files(hub: tuple[HubServer, str], target: str) -> None:
    port = int(hub[1].rsplit(":", 1)[1].strip("/"))
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while data := await stream.receive_some(65536):
                answer += data
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 404)
    assert b"top secret" not in answer
    assert b"root:" not in answer


async def test_latency_knob_delays_data_but_not_control(root: Root) -> None:
    async with open_hub_server(root.path, latency_ms=300) as (_, url):
        with trio.fail_after(10):
            async with httpx.AsyncClient(base_url=url) as client:
                start = trio.current_time()
                reply = await client.get(f"chunks/{big_id(root)}")
                elapsed = trio.current_time() - start
    assert reply.status_code == 200
    assert elapsed >= 0.3


async def test_rate_knob_caps_total_egress(root: Root) -> None:
    chunk_id = big_id(root)
    rate = 8.0  # Mbit/s = 1e6 bytes/s, burst 1e5 bytes
    async with open_hub_server(root.path, rate_mbps=rate) as (server, url):
        with trio.fail_after(20):
            async with httpx.AsyncClient(base_url=url) as client:
                got: list[bytes] = []

                async def fetch() -> None:
                    got.append((await client.get(f"chunks/{chunk_id}")).content)

                start = trio.current_time()
                async with trio.open_nursery() as nursery:
                    for _ in range(3):
                        nursery.start_soon(fetch)
                elapsed = trio.current_time() - start
    total = 3 * SIZE
    assert got == [root.blobs[chunk_id]] * 3
    assert elapsed >= (total - rate * 1e6 / 8 / 10) / (rate * 1e6 / 8) - 1e-3  # shared by all three, minus burst
    assert server.stats.total_bytes == total


async def test_per_client_bytes_equal_what_each_client_received(root: Root, hub: tuple[HubServer, str]) -> None:
    server, url = hub
    chunk_id = big_id(root)
    received: dict[str, int] = {}
    with trio.fail_after(10):
        for address, ranges in (("127.0.0.2", ["bytes=0-999", None]), ("127.0.0.3", ["bytes=-7", None, None])):
            transport = httpx.AsyncHTTPTransport(local_address=address)
            async with httpx.AsyncClient(base_url=url, transport=transport) as client:
                for header in ranges:
                    headers = {"range": header} if header else {}
                    received[address] = received.get(address, 0) + len(
                        (await client.get(f"chunks/{chunk_id}", headers=headers)).content
                    )
                await client.head(f"chunks/{chunk_id}")
                await client.get("_stats")
        async with httpx.AsyncClient(base_url=url) as client:
            stats = (await client.get("_stats")).json()
    assert received == {"127.0.0.2": 1000 + SIZE, "127.0.0.3": 7 + 2 * SIZE}
    assert dict(server.stats.bytes_by_client) == received
    assert stats["bytes_by_client"] == received
    assert stats["requests_by_client"] == {"127.0.0.2": 3, "127.0.0.3": 4}  # HEADs count, _stats does not
    assert stats["total_bytes"] == sum(received.values())
    assert stats["inflight"] == 0


async def test_inflight_peak_counts_concurrent_requests(root: Root) -> None:
    async with open_hub_server(root.path, latency_ms=1000) as (server, url):
        with trio.fail_after(20):
            async with httpx.AsyncClient(base_url=url) as client, trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(client.get, f"chunks/{big_id(root)}")
    assert server.stats.peak_inflight == 3
    assert server.stats.inflight == 0
    assert server.stats.requests == 3


async def test_down_up_and_reset(root: Root, hub: tuple[HubServer, str]) -> None:
    server, url = hub
    chunk = f"chunks/{big_id(root)}"
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get(chunk)).status_code == 200
            assert (await client.post("_admin/down")).json() == {"available": False}
            down = [(await client.get(path)).status_code for path in (chunk, "manifests/demo.p2p", "manifests/")]
            assert (await client.get("_stats")).status_code == 200  # control routes stay up
            assert (await client.post("_admin/up")).json() == {"available": True}
            up = (await client.get(chunk)).status_code
            before = (await client.get("_stats")).json()
            assert (await client.post("_stats/reset")).status_code == 200
            after = (await client.get("_stats")).json()
            wrong_method = (await client.get("_admin/down")).status_code
    assert down == [503, 503, 503]
    assert up == 200
    assert before["requests"] == 5
    assert before["total_bytes"] == 2 * SIZE + sum(
        len(b'{"error":"hub is down (outage emulation)","status":503}') for _ in range(3)
    )
    assert (after["requests"], after["total_bytes"], after["bytes_by_client"]) == (0, 0, {})
    assert wrong_method == 405
    assert server.available


async def test_handle_without_a_server(root: Root) -> None:
    from p2pchunks.http.server import FileBody, Request

    server = HubServer(root.path)
    chunk_id = big_id(root)
    request = Request("GET", f"/chunks/{chunk_id}", {}, {"range": "bytes=10-19"}, b"", ("127.0.0.9", 1))
    response = await server.handle(request)
    assert response.status == 206
    assert response.body == FileBody(root.path / "chunks" / chunk_id[:2] / chunk_id[2:4] / chunk_id, 10, 10)
    assert ("content-range", f"bytes 10-19/{SIZE}") in response.headers


async def test_hub_command_serves_http_and_zdb_with_one_switch_and_one_ledger(
    nursery: trio.Nursery, root: Root, capsys: pytest.CaptureFixture[str]
) -> None:
    chunk_id = big_id(root)
    ports = await nursery.start(partial(serve_hub_forever, root.path, "127.0.0.1:0", "127.0.0.2:0"))
    http_port, zdb_port = ports
    url = f"http://127.0.0.1:{http_port}/"
    with trio.fail_after(20):
        async with HubClient(f"zdb://127.0.0.2:{zdb_port}/default", retries=0) as over_zdb:
            assert await over_zdb.get_chunk(chunk_id) == root.blobs[chunk_id]
            async with httpx.AsyncClient(base_url=url) as client:
                assert (await client.get(f"chunks/{chunk_id}")).status_code == 200
                await client.post("_admin/down")
                with pytest.raises(HubUnavailable):
                    await over_zdb.get_chunk(chunk_id)
                await client.post("_admin/up")
                assert await over_zdb.get_chunk(chunk_id) == root.blobs[chunk_id]
                stats = (await client.get("_stats")).json()
    # one HTTP transfer and two zdb ones (the client's address is 127.0.0.1 for both), in one ledger
    assert 3 * SIZE <= stats["bytes_by_client"]["127.0.0.1"] < 3 * SIZE + 1000
    assert f"at {url}" in capsys.readouterr().out
