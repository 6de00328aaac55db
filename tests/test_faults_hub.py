"""Hub faults: a fake hub (a real HTTP server on 127.0.0.1, ``httpserver.serve_http``) that stays silent, answers
5xx, cuts the body halfway, trickles it, or sends the wrong bytes.

The hub client retries with backoff, never hands out wrong bytes, and gives a clear error once its budget is
spent; the agent's API turns those errors into 502 (wrong bytes), 503 (unavailable) and 504 (timeout) naming the
chunk, and stores nothing.
"""

from __future__ import annotations

import itertools
import os
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

from p2pchunks.errors import ChunkCorrupt, ChunkNotFound, HubTimeout, HubUnavailable
from p2pchunks.http.server import Request, Response, serve_http
from p2pchunks.hub.client import HubClient
from p2pchunks.ids import chunk_id_of

from .swarmkit import agent_config, agents

TIMEOUT = 0.4
RETRIES = 2
BACKOFF = 0.05
BEHAVIOURS = ("ok", "500", "503", "504", "silent", "cut", "drip", "wrong", "flaky", "404", "bad-length")


@dataclass
class FakeHub:
    """Answers ``/chunks/.../<id>`` by the behaviour given to that id; records when each request came."""

    data: dict[str, bytes] = field(default_factory=dict)
    behaviour: dict[str, str] = field(default_factory=dict)
    calls: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, behaviour: str) -> str:
        # the drip is cut once it is slower than hub.MIN_BODY_BPS: a small chunk keeps that wait short
        data = os.urandom(2 * 1024 if behaviour == "drip" else 48 * 1024)
        chunk_id = chunk_id_of(data)
        self.data[chunk_id], self.behaviour[chunk_id] = data, behaviour
        return chunk_id

    async def handle(self, request: Request) -> Response:
        chunk_id = request.path.rsplit("/", 1)[-1]
        self.calls[chunk_id].append(trio.current_time())
        behaviour, data = self.behaviour.get(chunk_id, "404"), self.data.get(chunk_id, b"")
        length = [("content-length", str(len(data)))]
        if behaviour == "ok" or (behaviour == "flaky" and len(self.calls[chunk_id]) > RETRIES):
            return Response(200, length, data)
        if behaviour in ("500", "503", "504", "flaky"):
            return Response(int(behaviour) if behaviour != "flaky" else 500, [], b'{"error": "down"}')
        if behaviour == "silent":
            await trio.sleep(3600)
        if behaviour == "cut":
            return Response(200, length, _cut(data))
        if behaviour == "drip":
            return Response(200, length, _drip(data))
        if behaviour == "wrong":
            return Response(200, length, bytes(b ^ 0x55 for b in data))
        if behaviour == "bad-length":  # right bytes plus junk: the length alone says it is not the chunk
            return Response(200, [], data + b"junk")
        return Response(404, [], b'{"error": "no such chunk"}')


async def _cut(data: bytes) -> AsyncIterator[bytes]:
    yield data[: len(data) // 2]
    raise OSError("hub died mid-body")  # the server closes the connection with the body half sent


async def _drip(data: bytes) -> AsyncIterator[bytes]:
    """A byte at a time, each just inside the read timeout: a hub that never ends an answer."""
    for i in range(len(data)):
        await trio.sleep(TIMEOUT / 2)
        yield data[i : i + 1]


EXPECTED: dict[str, tuple[type[Exception] | None, int]] = {
    # behaviour: (error the client raises, None = the right bytes), requests the hub sees
    "ok": (None, 1),
    "500": (HubUnavailable, RETRIES + 1),
    "503": (HubUnavailable, RETRIES + 1),
    "504": (HubTimeout, RETRIES + 1),
    "silent": (HubTimeout, RETRIES + 1),
    "cut": (HubUnavailable, RETRIES + 1),
    "drip": (HubTimeout, RETRIES + 1),
    "wrong": (ChunkCorrupt, RETRIES + 1),
    "flaky": (None, RETRIES + 1),
    "404": (ChunkNotFound, 1),
    "bad-length": (ChunkCorrupt, RETRIES + 1),
}


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
async def test_hub_client_against_a_failing_hub(nursery: trio.Nursery, behaviour: str) -> None:
    fake = FakeHub()
    chunk_id = fake.add(behaviour)
    port = await nursery.start(serve_http, fake.handle, "127.0.0.1", 0)
    error, requests = EXPECTED[behaviour]
    async with HubClient(
        f"http://127.0.0.1:{port}/", timeout=TIMEOUT, retries=RETRIES, backoff=BACKOFF, rng=random.Random(1)
    ) as hub:
        with trio.fail_after(30):
            if error is None:
                assert await hub.get_chunk(chunk_id) == fake.data[chunk_id]
            else:
                with pytest.raises(error) as caught:
                    await hub.get_chunk(chunk_id)
                assert type(caught.value) is error
                if isinstance(caught.value, ChunkCorrupt | ChunkNotFound):
                    assert caught.value.chunk_id == chunk_id
    calls = fake.calls[chunk_id]
    assert len(calls) == requests, calls
    # backoff: retry n waits at least backoff * 2^n * 0.5 (the low end of the jitter)
    for n, (before, after) in enumerate(itertools.pairwise(calls)):
        assert after - before >= BACKOFF * 2**n * 0.5
    assert hub.stats.failures == (0 if error is None else 1)


AGENT_STATUS = {
    "ok": 200,
    "500": 503,
    "503": 503,
    "504": 504,
    "silent": 504,
    "cut": 503,
    "drip": 504,
    "wrong": 502,
    "flaky": 200,
    "404": 404,
    "bad-length": 502,
}


async def test_agent_api_maps_hub_faults_and_stores_nothing_wrong(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake = FakeHub()
    ids = {behaviour: fake.add(behaviour) for behaviour in BEHAVIOURS}
    port = await nursery.start(serve_http, fake.handle, "127.0.0.1", 0)
    config = agent_config(
        tmp_path, f"http://127.0.0.1:{port}/", name="a", fetch={"hub_timeout_s": TIMEOUT, "hub_retries": RETRIES}
    )
    async with agents([config], swarm=False) as (agent,):
        host = agent.config.api.listen.rsplit(":", 1)[0]
        async with httpx.AsyncClient(base_url=f"http://{host}:{agent.api_port}", timeout=30) as http:
            got = {}
            for behaviour, chunk_id in ids.items():
                with trio.fail_after(30):
                    answer = await http.get(f"/chunks/{chunk_id}")
                got[behaviour] = answer.status_code
                if answer.status_code == 200:
                    assert answer.content == fake.data[chunk_id]
                else:
                    body = answer.json()
                    assert body["chunk"] == chunk_id, body
                    assert body["status"] == answer.status_code, body
                    assert not agent.cache.has(chunk_id)
                    assert not agent.cache.path_for(chunk_id).exists()
            assert got == AGENT_STATUS
            assert (await http.get("/status")).status_code == 200
    files = [p for p in (tmp_path / "a" / "chunks").rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == sorted([ids["ok"], ids["flaky"]])


async def test_a_body_that_raises_does_not_take_the_server_down(nursery: trio.Nursery) -> None:
    """A handler's streamed body failing with any exception costs that connection only."""

    async def broken() -> AsyncIterator[bytes]:
        yield b"half"
        raise ValueError("a bug in the handler's body")

    async def handler(request: Request) -> Response:
        if request.path == "/broken":
            return Response(200, [("content-length", "100")], broken())
        return Response(200, [], b"fine")

    port = await nursery.start(serve_http, handler, "127.0.0.1", 0)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        for _ in range(3):
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get("/broken")
            assert (await http.get("/ok")).text == "fine"
