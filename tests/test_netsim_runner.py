"""The harness never ends in a traceback: stalls and CPU from the outside (pure, /proc), and real runs in which the
hub's ``_stats`` stops answering for a while, an agent dies mid-run, or the deadline passes."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from netsim.report import validate_result
from netsim.runner import Run, RunOptions
from netsim.scenarios import knobs_for, topology
from netsim.timeline import NO_STALL, CpuLedger, Stall, longest_stall
from p2pchunks.procfs import cpu_seconds

# ---- stalls, pure ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "to_finish", "expected"),
    [
        ([], 2, NO_STALL),
        ([(0.0, 0, 0), (0.2, 0, 10), (0.4, 1, 20), (0.6, 2, 30)], 2, NO_STALL),  # always moving
        # hub bytes stand still from 0.2 to 1.0 while nodes wait: 0.8 s
        ([(0.0, 0, 0), (0.2, 0, 5), (0.6, 0, 5), (1.0, 0, 5), (1.2, 0, 9)], 2, Stall(0.2, 0.8)),
        # a node finishing is progress even when the hub is still
        ([(0.0, 0, 5), (0.5, 1, 5), (1.0, 1, 5), (1.2, 1, 6)], 2, Stall(0.5, 0.5)),
        # after the last node is done nothing counts
        ([(0.0, 0, 0), (0.2, 2, 9), (5.0, 2, 9)], 2, NO_STALL),
        # the longer of two, and the earlier of two equal ones
        ([(0, 0, 0), (1, 0, 0), (2, 0, 1), (5, 0, 1), (6, 0, 2), (9, 0, 2)], 1, Stall(2.0, 3.0)),
        # a gap (a failed sample) between equal values counts as standing still
        ([(0.0, 0, 1), (0.2, 0, 1), (2.2, 0, 1), (2.4, 0, 2)], 3, Stall(0.0, 2.2)),
        # rows may carry peer bytes as a fourth column
        ([(0.0, 0, 0, 0), (0.4, 0, 0, 99)], 1, Stall(0.0, 0.4)),
    ],
)
def test_longest_stall_table(rows: list[tuple[float, ...]], to_finish: int, expected: Stall) -> None:
    got = longest_stall(rows, to_finish)
    assert (got.start_s, got.seconds) == pytest.approx((expected.start_s, expected.seconds))


def test_cpu_seconds_of_a_live_process_grow_and_a_gone_one_reads_as_none(tmp_path: Path) -> None:
    before = cpu_seconds(os.getpid())
    assert before is not None
    sum(i * i for i in range(2_000_000))  # burn a little CPU
    after = cpu_seconds(os.getpid())
    assert after is not None
    assert after > before
    assert cpu_seconds(os.getpid(), proc=tmp_path) is None  # no such /proc entry
    ledger = CpuLedger()
    ledger.read("me", os.getpid())
    ledger.mark()
    sum(i * i for i in range(2_000_000))
    ledger.read("me", os.getpid())
    ledger.read("gone", 2**22 + 1)  # beyond pid_max: never read, never counted
    assert ledger.total(["me", "gone"]) >= ledger.total(["me", "gone"], since_mark=True) > 0
    assert list(ledger.seconds) == ["me"]


# ---- real runs with faults ------------------------------------------------------------------------------------


def small_run(tmp_path: Path, nodes: int, **options: Any) -> Run:
    knobs = knobs_for("farm-deploy", nodes=nodes, image_mib=4, hub_mbps=8, deadline_s=120)
    return Run(topology("farm-deploy", knobs), RunOptions(workdir=tmp_path, scenario="farm-deploy", **options))


async def clock_started(run: Run) -> None:
    with trio.fail_after(120):
        await run.clock_started.wait()
    await trio.sleep(0.3)  # a sample or two before the faults


@pytest.mark.slow
async def test_a_hub_that_stops_answering_and_an_agent_that_dies_still_give_a_result(tmp_path: Path) -> None:
    # 4 MiB at 8 Mbit/s: T* is 4.2 s, so the faults land while the nodes fetch
    run = small_run(tmp_path, 3, sample_timeout_s=0.5)
    results: list[dict[str, Any]] = []

    async def execute() -> None:
        results.append(await run.execute())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(execute)
        await clock_started(run)
        hub, victim = run.hub_processes[0], run.nodes[2]
        assert victim.process is not None
        os.kill(hub.pid, signal.SIGSTOP)  # _stats (and everything else of the hub) stops answering
        try:
            victim.process.send_signal(signal.SIGKILL)  # and n2's API dies with its agent
            await trio.sleep(1.5)
        finally:
            os.kill(hub.pid, signal.SIGCONT)
    (result,) = results
    validate_result(result)
    assert result["sample_errors"], result["timeline"]
    gap_at = result["sample_errors"][0][0]
    assert any(row[0] > gap_at for row in result["timeline"])  # sampling went on after the gap
    assert [e for e in result["errors"] if e.startswith("n2: agent exited")], result["errors"]
    assert [e for e in result["errors"] if not e.startswith("n2: ")] == []
    assert None not in result["per_node_done_s"][:2]
    assert result["per_node_done_s"][2] is None
    assert result["last_node_done_s"] is None  # a node that neither finished nor left: no last-node time
    assert result["corrupt_chunks"] == 0
    assert result["longest_stall_s"] >= 1.0  # the hub stood still while it was stopped
    assert result["agent_cpu_s"] > 0
    assert result["hub_cpu_s"] > 0


@pytest.mark.slow
async def test_a_run_past_its_deadline_ends_with_a_result_naming_the_unfinished(tmp_path: Path) -> None:
    run = small_run(tmp_path, 1, deadline_s=1.0)  # 4 MiB at 8 Mbit/s takes 4 s at least
    result = await run.execute()
    validate_result(result)
    assert result["per_node_done_s"] == [None]
    assert len(result["errors"]) == 1
    assert "deadline of 1 s passed; unfinished: ['n0']" in result["errors"][0]
    assert result["hub_bytes"] > 0  # the final _stats was read
