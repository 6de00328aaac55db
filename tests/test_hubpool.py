"""The hub pool against real HTTP hubs on 127.0.0.1 that fail in every way ``test_faults_hub`` knows.

One hub: the pool is ``HubClient`` (same errors, same number of requests, same backoff). Two hubs: whatever the
first one does wrong, the chunk comes from the second, the first is marked down and skipped until its probe is due,
and a chunk is missing only when both said so.
"""

from __future__ import annotations

import itertools
import random

import pytest
import trio

from p2pchunks.errors import BadConfig, ChunkNotFound, HubUnavailable, ManifestNotFound
from p2pchunks.http.server import serve_http
from p2pchunks.hub.pool import HubPool, hub_urls

from .test_faults_hub import BACKOFF, BEHAVIOURS, EXPECTED, RETRIES, TIMEOUT, FakeHub


async def _serve(nursery: trio.Nursery, hub: FakeHub) -> str:
    port = await nursery.start(serve_http, hub.handle, "127.0.0.1", 0)
    return f"http://127.0.0.1:{port}/"


def _pool(urls: list[str], clock: list[float] | None = None) -> HubPool:
    options = {"clock": (lambda: clock[0])} if clock is not None else {}
    return HubPool(
        urls,
        timeout=TIMEOUT,
        retries=RETRIES,
        backoff=BACKOFF,
        rng=random.Random(1),
        down_backoff=60.0,
        max_down_backoff=60.0,
        **options,
    )


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
async def test_one_hub_pool_is_the_hub_client(nursery: trio.Nursery, behaviour: str) -> None:
    fake = FakeHub()
    chunk_id = fake.add(behaviour)
    error, requests = EXPECTED[behaviour]
    async with _pool([await _serve(nursery, fake)]) as pool:
        with trio.fail_after(30):
            if error is None:
                assert await pool.get_chunk(chunk_id) == fake.data[chunk_id]
            else:
                with pytest.raises(error) as caught:
                    await pool.get_chunk(chunk_id)
                assert type(caught.value) is error
    calls = fake.calls[chunk_id]
    assert len(calls) == requests, calls
    for n, (before, after) in enumerate(itertools.pairwise(calls)):
        assert after - before >= BACKOFF * 2**n * 0.5
    assert pool.stats.failures == (0 if error is None else 1)


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
async def test_failover_whatever_the_first_hub_does(nursery: trio.Nursery, behaviour: str) -> None:
    first, second = FakeHub(), FakeHub()
    chunk_id = first.add(behaviour)
    second.data[chunk_id], second.behaviour[chunk_id] = first.data[chunk_id], "ok"
    later = first.add(behaviour)
    second.data[later], second.behaviour[later] = first.data[later], "ok"
    async with _pool([await _serve(nursery, first), await _serve(nursery, second)]) as pool:
        with trio.fail_after(30):
            assert await pool.get_chunk(chunk_id) == first.data[chunk_id]
            assert await pool.get_chunk(later) == first.data[later]
        health = pool.health()
    fine = behaviour in ("ok", "404")
    # the first hub is asked once; once it has failed it is down, and the next chunk does not even try it
    assert len(first.calls[chunk_id]) == 1
    assert len(first.calls[later]) == (1 if fine else 0)
    assert len(second.calls[chunk_id]) == (0 if behaviour == "ok" else 1)
    assert [row["state"] for row in health] == ["up" if fine else "down", "up"]
    assert health[0]["errors"] == (0 if fine else 1)
    assert health[1]["bytes"] == (0 if behaviour == "ok" else 2 * len(first.data[chunk_id]))


async def test_missing_only_when_every_hub_says_so(nursery: trio.Nursery) -> None:
    first, second = FakeHub(), FakeHub()
    absent = "ab" * 32
    urls = [await _serve(nursery, first), await _serve(nursery, second)]
    async with _pool(urls) as pool:
        with pytest.raises(ChunkNotFound) as caught:
            await pool.get_chunk(absent)
        assert caught.value.chunk_id == absent
        assert (len(first.calls[absent]), len(second.calls[absent])) == (1, 1)
        # one says 404, the other fails: the chunk may be at the failing one, so it is not "missing"
        flaky = first.add("404")
        second.data[flaky], second.behaviour[flaky] = first.data[flaky], "503"
        with trio.fail_after(30), pytest.raises(HubUnavailable):
            await pool.get_chunk(flaky)
        assert (len(first.calls[flaky]), len(second.calls[flaky])) == (1, RETRIES + 1)
        with pytest.raises(ManifestNotFound):
            await pool.get_manifest("nope")


async def test_a_down_hub_is_probed_when_due_and_comes_back(nursery: trio.Nursery) -> None:
    first, second = FakeHub(), FakeHub()
    ids = [first.add("503") for _ in range(3)]
    for chunk_id in ids:
        second.data[chunk_id], second.behaviour[chunk_id] = first.data[chunk_id], "ok"
    clock = [0.0]
    async with _pool([await _serve(nursery, first), await _serve(nursery, second)], clock) as pool:
        assert await pool.get_chunk(ids[0]) == first.data[ids[0]]  # first fails, down until t=60
        clock[0] = 30.0
        assert await pool.get_chunk(ids[1]) == first.data[ids[1]]
        assert ids[1] not in first.calls  # not due: not asked
        first.behaviour[ids[2]] = "ok"  # the first hub is back
        clock[0] = 61.0
        assert await pool.get_chunk(ids[2]) == first.data[ids[2]]
        assert len(first.calls[ids[2]]) == 1
        assert ids[2] not in second.calls
        assert [row["state"] for row in pool.health()] == ["up", "up"]


def test_hub_lists() -> None:
    assert hub_urls("zdb://a:9900/x") == ["zdb://a:9900/x"]
    assert hub_urls(["http://a/", " server://http/b:4000 "]) == ["http://a/", "server://http/b:4000"]
    for bad in ([], [""], ["http://a/", "http://a/"]):
        with pytest.raises(BadConfig, match=r"agent\.hub"):
            hub_urls(bad)
