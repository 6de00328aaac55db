"""An agent as a child process: its config file, its start, its readiness, its end.

Owns ``python -m p2pchunks agent --config F`` as a subprocess (used by the benchmarks, the crash tests and
netsim's loopback backend), the config file it reads (:func:`write_config`), and the readiness protocol: the agent
prints one JSON line on stdout once every listener is bound (:data:`READY_KEY`, the ports, its pid), so nobody
parses prose and every port can be 0 (``hub serve`` prints the same line: :func:`open_ready_process` runs either).
Must not know the agent's internals: it sees the process and its line.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from .. import procfs

READY_TIMEOUT = 30.0
READY_KEY = "p2pchunks_ready"
MAX_LINE = 64 * 1024


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def write_config(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write an agent config file (``{"agent": {"cache_dir": ...}, ...}``) and return its path."""
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def ready_line(mode: str, api: str, ports: Mapping[str, int | None], pid: int) -> str:
    """The line the agent prints once it serves (what :func:`open_agent_process` waits for)."""
    return json.dumps({READY_KEY: True, "mode": mode, "api": api, "pid": pid, **ports})


@dataclass
class AgentProcess:
    process: trio.Process
    ready: dict[str, Any]

    @property
    def api_port(self) -> int:
        return int(self.ready["api_port"])

    @property
    def host(self) -> str:
        return str(self.ready["api"]).rpartition(":")[0]

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    @property
    def api(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    def rss_bytes(self, field: str = "VmRSS") -> int:
        """A memory figure of the process from ``/proc/<pid>/status`` (``VmRSS``, ``RssAnon``...), 0 once gone."""
        return procfs.memory_bytes(self.pid, field) or 0

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used (0.0 once gone)."""
        return procfs.cpu_seconds(self.pid) or 0.0

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind (the crash tests' weapon)."""
        if self.process.returncode is None:
            self.process.kill()


@asynccontextmanager
async def open_agent_process(config: Path, *, stderr: Path | None = None) -> AsyncIterator[AgentProcess]:
    """Run ``python -m p2pchunks agent --config <config>`` until the block ends (SIGTERM, then SIGKILL).

    Yields once the agent printed its ready line.
    """
    async with open_ready_process(["agent", "--config", str(config)], stderr=stderr) as (process, ready):
        yield AgentProcess(process, ready)


@asynccontextmanager
async def open_ready_process(
    args: list[str], *, stderr: Path | None = None
) -> AsyncIterator[tuple[trio.Process, dict[str, Any]]]:
    """Run ``python -m p2pchunks <args>`` (an agent, ``hub serve``) until the block ends (SIGTERM, then SIGKILL);
    yields the process and its ready line once it printed it."""
    err = stderr.open("ab") if stderr is not None else subprocess.DEVNULL
    try:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "p2pchunks", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    finally:
        if not isinstance(err, int):
            err.close()
    try:
        assert process.stdout is not None
        with trio.fail_after(READY_TIMEOUT):
            ready = await read_ready(process.stdout)
        yield process, ready
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(5):
                    await process.wait()
            if process.returncode is None:
                process.kill()
            await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()


async def read_ready(stdout: trio.abc.ReceiveStream) -> dict[str, Any]:
    """Read lines until the agent's JSON ready line; anything else it printed first is skipped."""
    seen = b""
    while True:
        while b"\n" not in seen:
            if len(seen) > MAX_LINE:
                raise RuntimeError(f"the agent printed {len(seen)} bytes without a line end")
            data = await stdout.receive_some(4096)
            if not data:
                raise RuntimeError(f"agent exited before it was ready: {seen[-500:]!r}")
            seen += data
        line, seen = seen.split(b"\n", 1)
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get(READY_KEY) is True:
            return doc
