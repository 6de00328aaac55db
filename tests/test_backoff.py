"""The one backoff formula (``policy.retry.backoff_s``) and the two places that wait by it."""

from __future__ import annotations

import pytest

from p2pchunks.policy.retry import HubRetries, backoff_s


@pytest.mark.parametrize(
    ("failures", "jitter", "expected"),
    [
        (1, None, 0.25),  # the first failure waits the base
        (2, None, 0.5),
        (3, None, 1.0),
        (4, None, 2.0),
        (9, None, 4.0),  # capped
        (0, None, 0.25),  # nothing below the base
        (1, 0.0, 0.125),  # jitter scales by [0.5, 1.5)
        (1, 0.5, 0.25),
        (3, 0.75, 1.25),
        (9, 0.0, 2.0),  # the cap applies before the jitter
    ],
)
def test_backoff_table(failures: int, jitter: float | None, expected: float) -> None:
    assert backoff_s(failures, base_s=0.25, max_s=4.0, jitter=jitter) == pytest.approx(expected)


def test_hub_retries_wait_by_the_same_formula() -> None:
    retries = HubRetries(give_up_s=30.0, base_backoff_s=0.25, max_backoff_s=1.0)
    chunk = "ab" * 32
    now = 100.0
    for failures in range(1, 6):
        retries.failed(chunk, now, "timeout")
        wait = backoff_s(failures, base_s=0.25, max_s=1.0)
        assert not retries.ready(chunk, now + wait - 0.001)
        assert retries.ready(chunk, now + wait)
        now += wait
    assert wait == 1.0  # capped: a hub that comes back is asked again within a second
    retries.failed(chunk, now, "404", definitive=True)
    assert not retries.ready(chunk, now + 3600)
