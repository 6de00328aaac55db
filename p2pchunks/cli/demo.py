"""``p2pchunks demo``: the whole system on one machine, on the embedded default.

A local reference hub (with the latency and egress cap of a far hub) serves a generated image; N agents on
127.0.0.2… fetch it at once, first hub-only (what zos does today), then as a swarm. The table shows time and
where the bytes came from; the hub's own byte counter gives its egress.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import trio
from rich.console import Console
from rich.table import Table

from ..agent import Agent, open_agent
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


def make_image(root: Path, size_mib: int) -> list[str]:
    """A small VM-like tree: a kernel and config (hot) and a big disk image. Returns the hot paths."""
    (root / "boot").mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir(exist_ok=True)
    (root / "boot" / "vmlinuz").write_bytes(os.urandom(3 * 1024 * 1024))
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
    label: str, work: Path, hub_url: str, manifest_path: Path, agents: int, *, swarm: bool
) -> RoundResult:
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
        start = trio.current_time()
        per_agent: list[tuple[str, float, int, int]] = []

        async def one(agent: Agent, name: str) -> None:
            job = await agent.fetch(str(manifest_path))
            await job.done.wait()
            report = job.report
            if job.state != "done" or report is None:
                raise RuntimeError(f"{name}: {job.error}")
            per_agent.append((name, trio.current_time() - start, report.bytes_from_hub, report.bytes_from_peers))

        async with trio.open_nursery() as nursery:
            for i, agent in enumerate(running):
                nursery.start_soon(one, agent, f"127.0.0.{2 + i}")
        seconds = trio.current_time() - start
    per_agent.sort()
    return RoundResult(label, seconds, sum(a[2] for a in per_agent), sum(a[3] for a in per_agent), per_agent)


async def run_demo(agents: int, image_mib: int, latency_ms: float, rate_mbps: float, workdir: Path | None) -> int:
    console = Console()
    with tempfile.TemporaryDirectory(prefix="p2pchunks-demo-") as tmp:
        work = workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        console.print(
            f"[bold]p2pchunks demo[/]: {agents} agents, {image_mib} MiB image, hub {latency_ms:g} ms "
            f"latency, {rate_mbps:g} Mbit/s egress — work dir {work}"
        )
        hot = await trio.to_thread.run_sync(make_image, work / "image", image_mib)
        result = await trio.to_thread.run_sync(
            lambda: publish(work / "image", work / "hub", name="demo-vm", version="1", hot_paths=hot)
        )
        image_bytes = result.manifest.image_bytes
        rounds = []
        async with open_hub_server(work / "hub", latency_ms=latency_ms, rate_mbps=rate_mbps) as (hub, url):
            for label, swarm in (("hub only", False), ("swarm", True)):
                hub.stats.reset()
                round_result = await run_round(label, work, url, result.manifest_path, agents, swarm=swarm)
                round_result.hub_bytes = hub.stats.total_bytes
                rounds.append(round_result)
                console.print(f"  {label}: done in {round_result.seconds:.1f} s")
        table = Table(title=f"{agents} agents fetch {image_bytes / 2**20:.0f} MiB (hub only = what zos does today)")
        for column in ("round", "agent", "time s", "from hub MiB", "from peers MiB"):
            table.add_column(column, justify="right" if column != "round" else "left")
        for r in rounds:
            for name, seconds, hub_bytes, peer_bytes in r.per_agent:
                table.add_row(r.label, name, f"{seconds:.1f}", f"{hub_bytes / 2**20:.0f}", f"{peer_bytes / 2**20:.0f}")
            table.add_row(
                f"[bold]{r.label}[/]",
                "all",
                f"{r.seconds:.1f}",
                f"{r.hub_bytes / 2**20:.0f} ({r.hub_bytes / image_bytes:.2f}× image)",
                f"{r.peer_bytes / 2**20:.0f}",
                end_section=True,
            )
        console.print(table)
        if len(rounds) == 2 and rounds[1].seconds > 0:
            console.print(
                f"speed-up {rounds[0].seconds / rounds[1].seconds:.1f}×, hub egress "
                f"{rounds[0].hub_bytes / max(rounds[1].hub_bytes, 1):.1f}× lower"
            )
    return 0
