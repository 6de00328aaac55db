"""``p2pchunks demo``: its last line says what the swarm gained, in words and figures; a toy run end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pchunks.cli.demo import RoundResult, gain, run_demo

MIB = 2**20


def result(seconds: float, hub_mib: int) -> RoundResult:
    return RoundResult("r", seconds, hub_mib * MIB, 0, [])


@pytest.mark.parametrize(
    ("hub_only", "swarm", "line"),
    [
        (
            result(10.0, 768),
            result(2.9, 192),
            "4 nodes deployed the 192 MiB image 3.4× faster (2.9 s instead of 10.0 s), "
            "and the hub sent 1.0× the image instead of 4.0×.",
        ),
        (result(3.0, 768), result(3.05, 200), "in about the same time (3.0 s instead of 3.0 s)"),
        (result(2.0, 768), result(4.0, 192), "2.0× slower (4.0 s instead of 2.0 s)"),
    ],
)
def test_the_last_line_says_what_the_swarm_gained(hub_only: RoundResult, swarm: RoundResult, line: str) -> None:
    said = gain(4, 192 * MIB, hub_only, swarm)
    assert line in said
    assert said.startswith("4 nodes deployed the 192 MiB image ")


async def test_a_toy_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_demo(2, 1, 5.0, 400.0, tmp_path) == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())  # rich wraps long lines at the terminal's width
    assert flat.startswith("p2pchunks demo: 2 agents on 127.0.0.2–3 fetch a 4 MiB VM image")
    assert "round 1: hub only:" in out
    assert "round 2: swarm:" in out
    assert "2 nodes deployed the 4 MiB image" in flat
    assert flat.endswith("×.")
