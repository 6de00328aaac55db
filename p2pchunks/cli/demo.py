"""``p2pchunks demo``: the whole system on one machine, on the embedded default.

A local reference hub (with the latency and egress cap of a far hub) serves a generated image; N agents on
127.0.0.2… fetch it at once, first hub-only (what zos does today), then as a swarm. A progress bar per round shows
the chunks done over all agents; the table shows time and where the bytes came from (the hub's own byte counter
gives its egress); the last line says what the swarm gained, in words and figures.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import trio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from ..agent import Agent, Job, open_agent
from ..config.schema import Config
from ..hub.publish import publish
from ..hub.server import open_hub_server


@dataclass
class RoundResult:
    label: str
    seconds: float
    hub_bytes: int
    peer_bytes: int
    per_agent: list[tuple[str, float, int, int]]


KERNEL_MIB = 3


def make_image(root: Path, size_mib: int) -> list[str]:
    """A small VM-like tree: a kernel and config (hot) and a big disk image. Returns the hot paths."""
    (root / "boot").mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir(exist_ok=True)
    (root / "boot" / "vmlinuz").write_bytes(os.urandom(KERNEL_MIB * 1024 * 1024))
    (root / "etc" / "hostname").write_text("demo-vm\n")
    with (root / "image.raw").open("wb") as fh:
        for _ in range(size_mib):
            fh.write(os.urandom(1024 * 1024))
    return ["boot/vmlinuz", "etc/hostname"]


def agent_config(work: Path, index: int, hub_url: str, *, swarm: bool, bootstrap: list[str]) -> Config:
    address = f"127.0.0.{2 + index}"
    return Config().replace(
        agent={"cache_dir": str(work / f"agent{index}-{'swarm' if swarm else 'hub'}"), "hub": hub_url},
        api={"listen": f"{address}:0"},
        swarm={"listen": f"{address}:0", "utp": False, "bootstrap": bootstrap, "lsd": True},
        cache={"budget_bytes": 8 * 2**30},
        warm={"official": False},
    )


async def run_round(
    label: str,
    work: Path,
    hub_url: str,
    manifest_path: Path,
    agents: int,
    *,
    swarm: bool,
    progress: Progress,
) -> RoundResult:
    """One round: ``agents`` fresh agents fetch the image at once; ``progress`` shows chunks done over all of them."""
    async with AsyncExitStack() as stack:
        running: list[Agent] = []
        bootstrap: list[str] = []
        for i in range(agents):
            agent = await stack.enter_async_context(
                open_agent(agent_config(work, i, hub_url, swarm=swarm, bootstrap=bootstrap), swarm=swarm)
            )
            running.append(agent)
            if swarm and not bootstrap and agent.swarm is not None:
                bootstrap = [f"127.0.0.2:{agent.swarm.listen_port}"]
        task = progress.add_task(label, total=None)
        start = trio.current_time()
        jobs = [await agent.fetch(str(manifest_path)) for agent in running]
        progress.update(task, total=sum(job.report.chunks for job in jobs if job.report is not None))
        per_agent: list[tuple[str, float, int, int]] = []

        async def one(job: Job, name: str) -> None:
            await job.done.wait()
            report = job.report
            if job.state != "done" or report is None:
                raise RuntimeError(f"{name}: {job.error}")
            per_agent.append((name, trio.current_time() - start, report.bytes_from_hub, report.bytes_from_peers))

        async with trio.open_nursery() as nursery:
            for i, job in enumerate(jobs):
                nursery.start_soon(one, job, f"127.0.0.{2 + i}")
            while len(per_agent) < len(jobs):
                progress.update(task, completed=sum(job.report.done for job in jobs if job.report is not None))
                await trio.sleep(0.1)
        seconds = trio.current_time() - start
        progress.update(task, completed=progress.tasks[task].total, description=f"{label}: {seconds:.1f} s")
    per_agent.sort()
    return RoundResult(label, seconds, sum(a[2] for a in per_agent), sum(a[3] for a in per_agent), per_agent)


def gain(agents: int, image_bytes: int, hub_only: RoundResult, swarm: RoundResult) -> str:
    """The last line: what the swarm gained over hub-only, in words and figures."""
    speed = hub_only.seconds / swarm.seconds if swarm.seconds > 0 else 1.0
    if speed >= 1.05:
        pace = f"{speed:.1f}× faster"
    elif speed > 1 / 1.05:
        pace = "in about the same time"
    else:
        pace = f"{1 / speed:.1f}× slower"
    image = f"{image_bytes / 2**20:.0f} MiB"
    return (
        f"{agents} nodes deployed the {image} image {pace} "
        f"({swarm.seconds:.1f} s instead of {hub_only.seconds:.1f} s), and the hub sent "
        f"{swarm.hub_bytes / image_bytes:.1f}× the image instead of {hub_only.hub_bytes / image_bytes:.1f}×."
    )


async def run_demo(agents: int, image_mib: int, latency_ms: float, rate_mbps: float, workdir: Path | None) -> int:
    console = Console()
    with tempfile.TemporaryDirectory(prefix="p2pchunks-demo-") as tmp:
        work = workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        console.print(
            f"[bold]p2pchunks demo[/]: {agents} agents on 127.0.0.2–{1 + agents} fetch a {image_mib + KERNEL_MIB} MiB "
            f"VM image from a hub {latency_ms:g} ms away with {rate_mbps:g} Mbit/s of egress: first from the hub "
            "alone (what zos does today), then as a swarm."
        )
        console.print(f"[dim]work files: {work}[/]", soft_wrap=True)
        with console.status("making and publishing the image…"):
            hot = await trio.to_thread.run_sync(make_image, work / "image", image_mib)
            result = await trio.to_thread.run_sync(
                lambda: publish(work / "image", work / "hub", name="demo-vm", version="1", hot_paths=hot)
            )
        image_bytes = result.manifest.image_bytes
        rounds = []
        columns = (BarColumn(), MofNCompleteColumn(), "chunks", TimeElapsedColumn())
        async with open_hub_server(work / "hub", latency_ms=latency_ms, rate_mbps=rate_mbps) as (hub, url):
            with Progress("{task.description:<24}", *columns, console=console) as progress:
                for label, swarm in (("round 1: hub only", False), ("round 2: swarm", True)):
                    hub.stats.reset()
                    round_result = await run_round(
                        label, work, url, result.manifest_path, agents, swarm=swarm, progress=progress
                    )
                    round_result.hub_bytes = hub.stats.total_bytes
                    rounds.append(round_result)
        console.print(result_table(agents, image_bytes, rounds))
        console.print(f"[bold]{gain(agents, image_bytes, rounds[0], rounds[1])}[/]")
    return 0


def result_table(agents: int, image_bytes: int, rounds: list[RoundResult]) -> Table:
    table = Table(title=f"{agents} agents fetch {image_bytes / 2**20:.0f} MiB (hub only = what zos does today)")
    for column in ("round", "agent", "time s", "from hub MiB", "from peers MiB"):
        table.add_column(column, justify="right" if column != "round" else "left")
    for r in rounds:
        label = r.label.split(": ", 1)[-1]
        for name, seconds, hub_bytes, peer_bytes in r.per_agent:
            table.add_row(label, name, f"{seconds:.1f}", f"{hub_bytes / 2**20:.0f}", f"{peer_bytes / 2**20:.0f}")
        table.add_row(
            f"[bold]{label}[/]",
            "all",
            f"{r.seconds:.1f}",
            f"{r.hub_bytes / 2**20:.0f} ({r.hub_bytes / image_bytes:.2f}× image)",
            f"{r.peer_bytes / 2**20:.0f}",
            end_section=True,
        )
    return table
