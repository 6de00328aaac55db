"""The hub client: retry policy against scripted in-memory transports (on trio's autojump clock), and the HTTP
transport against the real reference hub and a scripted HTTP server on 127.0.0.1."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from p2pchunks.errors import (
    BadChunkId,
    BadConfig,
    ChunkCorrupt,
    ChunkNotFound,
    HubError,
    HubTimeout,
    HubUnavailable,
    ManifestNotFound,
)
from p2pchunks.http.server import Request, Response, serve_http
from p2pchunks.hub.client import MAX_BODY_BYTES, HttpTransport, HubClient, transport_for
from p2pchunks.hub.server import open_hub_server
from p2pchunks.ids import chunk_id_of

GOOD = b"the right bytes" * 100
GOOD_ID = chunk_id_of(GOOD)
Outcome = bytes | Exception


class ScriptedTransport:
    """Answers each call with the next scripted outcome (the last one repeats); records times and concurrency."""

    def __init__(self, script: list[Outcome], delay: float = 0.0) -> None:
        self.script = script
        self.delay = delay
        self.calls: list[float] = []
        self.active = 0
        self.peak = 0
        self.closed = False

    async def _answer(self) -> bytes:
        self.calls.append(trio.current_time())
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await trio.sleep(self.delay)
            outcome = self.script[min(len(self.calls) - 1, len(self.script) - 1)]
        finally:
            self.active -= 1
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def fetch_chunk(self, chunk_id: str) -> bytes:
        return await self._answer()

    async def fetch_manifest(self, name: str) -> bytes:
        return await self._answer()

    async def aclose(self) -> None:
        self.closed = True


def client(transport: ScriptedTransport, **knobs: object) -> HubClient:
    return HubClient("http://fake.invalid/", transport=transport, rng=random.Random(7), **knobs)  # type: ignore[arg-type]


# ---- policy, in memory ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "error", "calls"),
    [
        (ChunkNotFound(GOOD_ID, "404"), ChunkNotFound, 1),
        (HubError("403"), HubError, 1),
        (HubTimeout("slow"), HubTimeout, 4),
        (HubUnavailable("503"), HubUnavailable, 4),
        (b"wrong bytes", ChunkCorrupt, 4),
    ],
    ids=["not-found", "refused", "timeout", "unavailable", "corrupt"],
)
async def test_each_failure_is_its_own_error(
    autojump_clock: trio.testing.MockClock, outcome: Outcome, error: type[Exception], calls: int
) -> None:
    transport = ScriptedTransport([outcome])
    hub = client(transport, retries=3)
    with pytest.raises(error) as caught:
        await hub.get_chunk(GOOD_ID)
    assert type(caught.value) is error  # a timeout is not reported as mere unavailability, nor the reverse
    assert len(transport.calls) == calls
    assert hub.stats.requests == calls
    assert hub.stats.retries == calls - 1
    assert hub.stats.failures == 1
    assert hub.stats.corrupt == (calls if error is ChunkCorrupt else 0)


async def test_retries_back_off_exponentially_with_jitter_then_succeed(autojump_clock: trio.testing.MockClock) -> None:
    transport = ScriptedTransport([HubTimeout("t"), HubUnavailable("u"), b"wrong", GOOD])
    hub = client(transport, retries=3, backoff=0.5)
    assert await hub.get_chunk(GOOD_ID) == GOOD
    gaps = [b - a for a, b in zip(transport.calls, transport.calls[1:], strict=False)]
    for retry, gap in enumerate(gaps):
        nominal = 0.5 * 2**retry
        assert 0.5 * nominal <= gap < 1.5 * nominal
    assert gaps[2] > gaps[0]
    assert (hub.stats.requests, hub.stats.retries, hub.stats.failures, hub.stats.corrupt) == (4, 3, 0, 1)
    assert hub.stats.bytes == len(b"wrong") + len(GOOD)


async def test_corrupt_bytes_are_never_returned(autojump_clock: trio.testing.MockClock) -> None:
    transport = ScriptedTransport([GOOD[:-1] + b"?"])
    hub = client(transport, retries=2)
    with pytest.raises(ChunkCorrupt) as caught:
        await hub.get_chunk(GOOD_ID)
    assert caught.value.chunk_id == GOOD_ID
    assert hub.stats.corrupt == 3


async def test_custom_verifier_is_used(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tuple[str, bytes]] = []

    def verifier(chunk_id: str, data: bytes) -> bool:
        seen.append((chunk_id, data))
        return data == b"ok"

    hub = client(ScriptedTransport([b"no", b"ok"]), verifier=verifier)
    assert await hub.get_chunk("0" * 32) == b"ok"
    assert seen == [("0" * 32, b"no"), ("0" * 32, b"ok")]


async def test_concurrency_bound_is_respected(autojump_clock: trio.testing.MockClock) -> None:
    transport = ScriptedTransport([GOOD], delay=0.1)
    hub = client(transport, concurrency=4)
    results: list[bytes] = []

    async def one() -> None:
        results.append(await hub.get_chunk(GOOD_ID))

    async with trio.open_nursery() as nursery:
        for _ in range(40):
            nursery.start_soon(one)
    assert results == [GOOD] * 40
    assert transport.peak == 4


async def test_rate_budget_is_enforced(autojump_clock: trio.testing.MockClock) -> None:
    piece = os.urandom(10_000)
    hub = client(ScriptedTransport([piece]), rate_bps=20_000.0)
    start = trio.current_time()
    for _ in range(10):
        await hub.get_chunk(chunk_id_of(piece))
    elapsed = trio.current_time() - start
    assert elapsed >= (10 * 10_000 - 2_000) / 20_000  # all bytes, less the bucket's burst (rate / 10)


async def test_bad_chunk_id_never_reaches_the_transport() -> None:
    transport = ScriptedTransport([GOOD])
    with pytest.raises(BadChunkId):
        await client(transport).get_chunk("../../etc/passwd")
    assert transport.calls == []


async def test_manifest_is_retried_but_not_verified(autojump_clock: trio.testing.MockClock) -> None:
    transport = ScriptedTransport([HubUnavailable("503"), b"any manifest bytes"])
    async with client(transport) as hub:
        assert await hub.get_manifest("demo") == b"any manifest bytes"
    assert transport.closed
    assert hub.stats.retries == 1


@pytest.mark.parametrize("knobs", [{"concurrency": 0}, {"retries": -1}, {"backoff": -1.0}, {"timeout": 0.0}], ids=str)
def test_bad_settings_are_refused(knobs: dict[str, float]) -> None:
    with pytest.raises(BadConfig):
        client(ScriptedTransport([GOOD]), **knobs)


async def test_transport_for_picks_by_scheme() -> None:
    transport = transport_for("HTTP://127.0.0.1:1", timeout=1, max_connections=2)
    assert isinstance(transport, HttpTransport)
    assert transport.base_url == "HTTP://127.0.0.1:1/"
    await transport.aclose()
    with pytest.raises(BadConfig):
        transport_for("ftp://127.0.0.1/", timeout=1, max_connections=2)


async def test_transport_for_zdb() -> None:
    from p2pchunks.zos.zdb import ZdbTransport

    transport = transport_for("zdb://127.0.0.1:9900/ns", timeout=1, max_connections=2)
    assert isinstance(transport, ZdbTransport)
    await transport.aclose()


# ---- over HTTP --------------------------------------------------------------------------------------------------


@pytest.fixture
def hub_root(tmp_path: Path) -> Path:
    root = tmp_path / "hub"
    folder = root / "chunks" / GOOD_ID[:2] / GOOD_ID[2:4]
    folder.mkdir(parents=True)
    (folder / GOOD_ID).write_bytes(GOOD)
    bad_id = chunk_id_of(b"what it should be")
    (root / "chunks" / bad_id[:2] / bad_id[2:4]).mkdir(parents=True)
    (root / "chunks" / bad_id[:2] / bad_id[2:4] / bad_id).write_bytes(b"what it is")
    (root / "manifests").mkdir()
    (root / "manifests" / "demo.p2p").write_bytes(b"d4:demoi1ee")
    return root


async def test_against_the_reference_hub(hub_root: Path) -> None:
    bad_id = chunk_id_of(b"what it should be")
    absent = chunk_id_of(b"absent")
    async with open_hub_server(hub_root) as (server, url):
        with trio.fail_after(20):
            async with HubClient(url, retries=2, backoff=0.01) as hub:
                assert await hub.get_chunk(GOOD_ID) == GOOD
                assert await hub.get_manifest("demo") == b"d4:demoi1ee"
                assert await hub.get_manifest("demo.p2p") == b"d4:demoi1ee"
                assert await hub.get_manifest(f"{url}manifests/demo.p2p") == b"d4:demoi1ee"
                requests_before = server.stats.requests
                with pytest.raises(ChunkNotFound):
                    await hub.get_chunk(absent)
                assert server.stats.requests == requests_before + 1  # not found: asked once
                with pytest.raises(ManifestNotFound):
                    await hub.get_manifest("nope")
                with pytest.raises(ManifestNotFound):
                    await hub.get_manifest(f"{url}manifests/nope.p2p")
                with pytest.raises(ManifestNotFound):
                    await hub.get_manifest("../chunks")
                with pytest.raises(ChunkCorrupt):
                    await hub.get_chunk(bad_id)
                server.available = False
                with pytest.raises(HubUnavailable) as caught:
                    await hub.get_chunk(GOOD_ID)
                assert type(caught.value) is HubUnavailable
    assert hub.stats.corrupt == 3
    assert hub.stats.bytes == len(GOOD) + 3 * len(b"d4:demoi1ee") + 3 * len(b"what it is")


STATUS_BY_ID = {chunk_id_of(bytes([i])): status for i, status in enumerate((403, 404, 410, 429, 500, 503, 504, 206))}


async def scripted(request: Request) -> Response:
    chunk_id = request.path.rsplit("/", 1)[-1]
    if chunk_id == GOOD_ID:
        return Response(200, [("content-length", str(MAX_BODY_BYTES + 1))], _short_body())
    return Response(STATUS_BY_ID[chunk_id], [], b"{}")


async def _short_body() -> AsyncIterator[bytes]:
    yield b"not nearly as much as declared"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (403, HubError),
        (404, ChunkNotFound),
        (410, ChunkNotFound),
        (429, HubUnavailable),
        (500, HubUnavailable),
        (503, HubUnavailable),
        (504, HubTimeout),
        (206, HubError),
    ],
)
async def test_http_statuses_map_to_errors(nursery: trio.Nursery, status: int, error: type[Exception]) -> None:
    port = await nursery.start(serve_http, scripted, "127.0.0.1", 0)
    chunk_id = next(i for i, s in STATUS_BY_ID.items() if s == status)
    transport = HttpTransport(f"http://127.0.0.1:{port}", timeout=5, max_connections=2)
    try:
        with trio.fail_after(10), pytest.raises(error) as caught:
            await transport.fetch_chunk(chunk_id)
    finally:
        await transport.aclose()
    assert type(caught.value) is error
    assert str(status) in str(caught.value)


async def test_oversized_answer_is_refused(nursery: trio.Nursery) -> None:
    port = await nursery.start(serve_http, scripted, "127.0.0.1", 0)
    transport = HttpTransport(f"http://127.0.0.1:{port}/", timeout=5, max_connections=2)
    try:
        with trio.fail_after(10), pytest.raises(HubError, match="over"):
            await transport.fetch_chunk(GOOD_ID)
    finally:
        await transport.aclose()


async def test_silent_hub_times_out(nursery: trio.Nursery) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted: list[trio.SocketStream] = []

    async def accept_and_ignore() -> None:
        accepted.append(await listeners[0].accept())  # never answers
        await trio.sleep_forever()

    nursery.start_soon(accept_and_ignore)
    transport = HttpTransport(f"http://127.0.0.1:{port}/", timeout=0.3, max_connections=2)
    try:
        with trio.fail_after(10), pytest.raises(HubTimeout):
            await transport.fetch_chunk(GOOD_ID)
    finally:
        await transport.aclose()
        for stream in accepted:
            await stream.aclose()
        await listeners[0].aclose()


async def test_refused_connection_is_unavailable() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago, with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = HttpTransport(f"http://127.0.0.1:{port}/", timeout=2, max_connections=2)
    try:
        with trio.fail_after(10), pytest.raises(HubUnavailable) as caught:
            await transport.fetch_manifest("demo")
    finally:
        await transport.aclose()
    assert type(caught.value) is HubUnavailable


async def test_big_chunk_verified_in_a_thread_over_http(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    chunk_id = chunk_id_of(data)
    folder = tmp_path / "chunks" / chunk_id[:2] / chunk_id[2:4]
    folder.mkdir(parents=True)
    (folder / chunk_id).write_bytes(data)
    async with open_hub_server(tmp_path) as (_, url), HubClient(url) as hub:
        with trio.fail_after(20):
            assert await hub.get_chunk(chunk_id) == data
