"""Driving one agent through its local API during a run: start its fetch jobs, wait for their end, read its report.

Owns ``NodeRun`` (what the harness knows of a node) and every call the harness makes to an agent's API while the
clock runs. An agent that does not answer is a fact about that node, never the end of the run: a call that fails or
times out is retried while the agent's process lives, for at most ``patience_s`` in a row, and then becomes the
node's ``error``; a process that has exited ends its node at once. Must not know how processes are started, nor
what a run measures beyond a node's own report.

A job's end is awaited with one long request (``POST /fetch`` with ``wait``, which joins the running job of the same
manifest and answers when it ends), not by polling: at 64 nodes, polling four times a second cost the agents and
the harness a good part of a core, and the completion time is exact rather than rounded up to the next poll.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from .topology import NodeSpec

READY_TIMEOUT_S = 60.0


@dataclass
class NodeRun:
    spec: NodeSpec
    address: str
    process: subprocess.Popen[bytes] | None = None
    done_s: float | None = None
    hot_s: float | None = None
    bytes_from_hub: int = 0
    bytes_from_peers: int = 0
    error: str = ""
    left: bool = False
    api_failures: int = 0
    """API calls that failed or timed out (each retried while the agent lived)."""
    hub_reasons: dict[str, int] = field(default_factory=dict)
    peer_bytes: dict[str, dict[str, int]] = field(default_factory=dict)
    """The agent's ``/status`` → ``peer_bytes`` at the end of the run."""


class AgentApi:
    """One agent's API as the harness uses it; failures land in ``node.error`` (see the module docstring)."""

    def __init__(self, http: httpx.AsyncClient, node: NodeRun, url: str, *, patience_s: float, poll_s: float):
        self.http = http
        self.node = node
        self.url = url
        self.patience_s = patience_s
        self.poll_s = poll_s

    async def call(
        self, method: str, path: str, *, json: dict[str, Any] | None = None, answer_s: float | None = 30.0
    ) -> httpx.Response | None:
        """``method path`` answered (within ``answer_s``, None: however long), or None once the agent is gone or has
        failed for ``patience_s`` in a row."""
        failing_since: float | None = None
        while True:
            try:
                return await self.http.request(method, f"{self.url}{path}", json=json, timeout=answer_s)
            except httpx.HTTPError as error:
                self.node.api_failures += 1
                now = trio.current_time()
                failing_since = now if failing_since is None else failing_since
                process = self.node.process
                code = None if process is None else process.poll()
                if code is not None:
                    self.node.error = f"agent exited (status {code}); {method} {path}: {error!r}"
                    return None
                if now - failing_since >= self.patience_s:
                    self.node.error = f"API gave no answer to {method} {path} for {self.patience_s:g} s: {error!r}"
                    return None
                await trio.sleep(self.poll_s)

    async def wait_ready(self) -> bool:
        """Wait for ``/status`` to answer 200 (at most ``READY_TIMEOUT_S``); False (and the node's error) if not."""
        with trio.move_on_after(READY_TIMEOUT_S):
            while True:
                process = self.node.process
                if process is not None and process.poll() is not None:
                    self.node.error = f"agent exited (status {process.poll()}) before its API answered"
                    return False
                try:
                    if (await self.http.get(f"{self.url}/status", timeout=5.0)).status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.1)
        self.node.error = f"API not ready within {READY_TIMEOUT_S:g} s"
        return False

    async def fetch(self, images: list[str], started: Callable[[], None], start: float) -> None:
        """Fetch ``images`` (one job each), call ``started()`` once every job runs, and record their reports."""
        node = self.node
        jobs: list[tuple[str, int]] = []
        for name in images:
            response = await self.call("POST", "/fetch", json={"manifest": name})
            if response is None:
                break
            if response.status_code != 202:
                node.error = f"fetch {name}: {response.status_code} {response.text[:300]}"
                break
            jobs.append((name, int(response.json()["job"])))
        started()
        if node.error:
            return
        reports: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:
            for name, job in jobs:
                nursery.start_soon(self._await_job, name, job, reports)
        for report in reports:
            self._record(report)
        if not node.error and len(reports) == len(jobs):
            node.done_s = trio.current_time() - start

    async def _await_job(self, name: str, job: int, reports: list[dict[str, Any]]) -> None:
        while True:
            response = await self.call("POST", "/fetch", json={"manifest": name, "wait": True}, answer_s=None)
            if response is None:
                return
            try:
                report = response.json()
            except ValueError:
                report = {}
            if response.status_code not in (200, 502) or "id" not in report:
                self.node.error = f"waiting for {name}: {response.status_code} {response.text[:300]}"
                return
            if report["id"] != job:  # ours had ended before we asked: a new job ran; read ours
                response = await self.call("GET", f"/jobs/{job}")
                if response is None:
                    return
                report = response.json()
            if report.get("state") != "running":
                reports.append(report)
                return

    def _record(self, job: dict[str, Any]) -> None:
        node = self.node
        node.bytes_from_hub += job.get("bytes_from_hub", 0)
        node.bytes_from_peers += job.get("bytes_from_peers", 0)
        for reason, count in job.get("hub_reasons", {}).items():
            node.hub_reasons[reason] = node.hub_reasons.get(reason, 0) + count
        if job.get("state") != "done":
            node.error = node.error or job.get("error") or "failed"
        node.hot_s = max(node.hot_s or 0.0, node.spec.join_s + (job.get("hot_seconds") or 0.0))

    async def wait_warm(self, start: float) -> None:
        """Wait for the agent's first warm-up pass (update-storm) and record what its jobs fetched."""
        node = self.node
        while True:
            response = await self.call("GET", "/status")
            if response is None:
                return
            status = response.json()
            warm = status.get("warm") or {}
            if warm.get("passes", 0) >= 1:
                break
            await trio.sleep(self.poll_s)
        for job in status["jobs"]:
            node.bytes_from_hub += job.get("bytes_from_hub", 0)
            node.bytes_from_peers += job.get("bytes_from_peers", 0)
        if warm.get("errors"):
            node.error = "; ".join(warm["errors"][-3:])
        node.done_s = trio.current_time() - start

    async def peer_bytes(self) -> None:
        """The agent's bytes per peer address, once, at the end (a node that does not answer keeps none)."""
        try:
            status = (await self.http.get(f"{self.url}/status", timeout=10.0)).json()
        except (httpx.HTTPError, ValueError):
            return
        self.node.peer_bytes = status.get("peer_bytes") or {}
