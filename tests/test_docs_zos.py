"""docs/zos.md, run: every ``sh`` line, the zinit ``exec`` and the config files of the page, in order, in a temp dir.

Real components stand in for what a node has around it: a 0-db hub (``zdbserver``) for ``hub.threefold.me:9900``,
an HTTP server of ``.fl``/``.flist`` files for ``https://hub.threefold.me``, temp directories for ``/etc``,
``/srv`` and ``/var/cache``, free loopback ports for the fixed ones; ``ip netns exec ndmz`` is dropped. The
commands themselves are not changed: ``p2pchunks`` runs this checkout, a line ending in ``&`` starts a daemon
(stopped at the end), every other line must exit 0. What the page promises is then checked: the fill wrote every
block, the rewritten flists really lead to the agent, the seed's tracker answers.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from p2pchunks.config.schema import load_config
from p2pchunks.http.server import Request, Response, serve_http
from p2pchunks.ids import chunk_relpath
from p2pchunks.zos.flist import read_flist
from p2pchunks.zos.flistwrite import write_fl, write_flist_v1
from p2pchunks.zos.importflist import import_flist
from p2pchunks.zos.zdbserver import HubRootBackend, open_zdb_server

from .test_importflist import CHUNK, make_tree

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "zos.md"
LIMIT = 120
READY_S = 60
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
REDIS_CLI_SHIM = """import socket, sys
args = sys.argv[1:]
port = int(args[args.index("-p") + 1]) if "-p" in args else 6379
words = [a.encode() for i, a in enumerate(args) if a != "-p" and (i == 0 or args[i - 1] != "-p")]
request = b"*%d\\r\\n" % len(words) + b"".join(b"$%d\\r\\n%s\\r\\n" % (len(w), w) for w in words)
with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
    sock.sendall(request)
    print(sock.recv(65536).split(b"\\r\\n")[0][1:].decode())
"""


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def command_lines(body: str) -> list[str]:
    """The commands of an ``sh`` block: continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        stripped = re.sub(r"\s+#[^'\"]*$", "", line).strip()  # a trailing comment (none holds a quote)
        if stripped and not stripped.startswith("#"):
            out.append(stripped)
    return out


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Node:
    """The stand-in world: where the page's names and paths lead."""

    tmp: Path
    subs: list[tuple[str, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    seed_env: dict[str, str] = field(default_factory=dict)
    """The seed's own ports: it runs beside the node's agent."""
    daemons: list[trio.Process] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    def localize(self, text: str) -> str:
        for old, new in self.subs:
            text = text.replace(old, new)
        return text

    def command(self, line: str) -> str:
        line = self.localize(line)
        outside = re.sub(re.escape(str(self.tmp)) + r"\S*", "<tmp>", line)
        for name in ("hub.threefold.me", "SEED", "PUBLIC_IP", "0.0.0.0", "/etc/", "/srv/", "/var/cache"):
            assert name not in outside, f"docs/zos.md: nothing stands in for {name!r} in: {line}"
        line = re.sub(r"(^|[;&|]\s*)p2pchunks ", rf"\1{sys.executable} -m p2pchunks ", line)
        return re.sub(r"(^|[;&|]\s*)python3 ", rf"\1{sys.executable} ", line)

    async def run(self, line: str) -> None:
        local = self.command(line)
        if local.endswith("&"):
            await self.start(local.removesuffix("&").strip(), self.seed_env if " p2pchunks seed " in local else None)
            return
        result = await trio.run_process(
            ["bash", "-o", "pipefail", "-c", local],
            cwd=self.tmp,
            env=self.env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        out, err = result.stdout.decode(), result.stderr.decode()
        assert result.returncode == 0, f"{line}\n→ exit {result.returncode}\n{out}\n{err}"
        self.outputs[line] = out

    async def start(self, command: str, env: dict[str, str] | None = None) -> None:
        log = (self.tmp / "logs" / f"daemon{len(self.daemons)}.log").open("wb")
        try:
            process = await trio.lowlevel.open_process(
                ["bash", "-c", f"exec {command}"],
                cwd=self.tmp,
                env=env or self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.daemons.append(process)

    async def stop(self) -> None:
        with trio.CancelScope(shield=True):
            for process in self.daemons:
                if process.returncode is None:
                    os.killpg(process.pid, signal.SIGTERM)
            for process in self.daemons:
                with trio.move_on_after(15) as waited:
                    await process.wait()
                if waited.cancelled_caught:
                    os.killpg(process.pid, signal.SIGKILL)
                    await process.wait()
            self.daemons.clear()


async def wait_tcp(port: int, what: str) -> None:
    with trio.fail_after(READY_S):
        while True:
            try:
                await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                return
            except OSError:
                await trio.sleep(0.1)


async def serve_files(directory: Path, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """``https://hub.threefold.me/<path>`` stands for ``GET /<path>`` here."""

    async def handler(request: Request) -> Response:
        path = (directory / request.path.lstrip("/")).resolve()
        if directory not in path.parents or not path.is_file():
            return Response(404, [], b"no such flist")
        return Response(200, [("content-type", "application/octet-stream")], path.read_bytes())

    await serve_http(handler, "127.0.0.1", 0, task_status=task_status)


@pytest.mark.slow
async def test_every_command_of_the_zos_page(nursery: trio.Nursery, tmp_path: Path) -> None:
    page = DOC.read_text()
    node = Node(tmp_path)
    (tmp_path / "logs").mkdir()
    etc, srv, var = tmp_path / "etc", tmp_path / "srv", tmp_path / "var-cache"
    etc.mkdir()
    hub_root, flists = tmp_path / "hub", tmp_path / "flists" / "tf-official-vms"
    flists.mkdir(parents=True)
    ports = {name: free_port() for name in ("api", "swarm", "zdb", "rfs", "seed_api", "seed_swarm", "tracker", "hub")}
    async with open_zdb_server(HubRootBackend(hub_root)) as (_, zdb_url):
        zdb_port = int(zdb_url.rsplit(":", 1)[1].split("/")[0])
        write_fl(make_tree(tmp_path / "v2"), flists / "ubuntu-24.04.fl", hub_root, route_url=zdb_url, chunk_size=CHUNK)
        backend = {"host": "127.0.0.1", "port": zdb_port, "namespace": "default"}
        write_flist_v1(make_tree(tmp_path / "v1"), flists / "ubuntu-22.04.flist", hub_root, backend=backend)
        files_port = await nursery.start(serve_files, tmp_path / "flists")
        node.subs = [
            ("ip netns exec ndmz ", ""),
            ("hub.threefold.me:9900", f"127.0.0.1:{zdb_port}"),
            ("https://hub.threefold.me/", f"http://127.0.0.1:{files_port}/"),
            ("/etc/p2pchunks/", f"{etc}/"),
            ("/srv/p2pchunks", str(srv)),
            ("/var/cache/modules/flistd/cache", str(var / "rfs")),
            ("/var/cache/p2pchunks", str(var / "agent")),
            ("0.0.0.0:8080", f"127.0.0.1:{ports['hub']}"),
            ("SEED:8080", f"127.0.0.1:{ports['hub']}"),
            ("PUBLIC_IP:6969", f"127.0.0.1:{ports['tracker']}"),
            ("127.0.0.1:7760", f"127.0.0.1:{ports['api']}"),
            ("127.0.0.1:9910", f"127.0.0.1:{ports['zdb']}"),
            ("-p 9910", f"-p {ports['zdb']}"),
            ("127.0.0.1:9920", f"127.0.0.1:{ports['rfs']}"),
            ("0.0.0.0:6881", f"127.0.0.1:{ports['swarm']}"),
        ]
        path = f"{os.environ.get('PATH', '')}"
        if shutil.which("redis-cli") is None:  # the page's redis-cli, spoken with redis-py where it is missing
            shim = tmp_path / "bin" / "redis-cli"
            shim.parent.mkdir()
            shim.write_text(f"#!{sys.executable}\n{REDIS_CLI_SHIM}")
            shim.chmod(0o755)
            path = f"{shim.parent}:{path}"
        node.env = {
            **os.environ,
            "PATH": path,
            "PYTHONPATH": str(ROOT),
            "P2PCHUNKS_API_LISTEN": f"127.0.0.1:{ports['api']}",
        }
        seed_toml = etc / "seed.toml"
        seed_toml.write_text(
            node.localize((ROOT / "deploy" / "seed.toml").read_text())
            .replace(str(var / "agent"), str(var / "seed"))
            .replace(str(var / "rfs"), str(var / "seed-rfs"))
        )
        node.seed_env = {
            **node.env,
            "P2PCHUNKS_API_LISTEN": f"127.0.0.1:{ports['seed_api']}",
            "P2PCHUNKS_SWARM_LISTEN": f"127.0.0.1:{ports['seed_swarm']}",
            "P2PCHUNKS_TRACKER_LISTEN": f"127.0.0.1:{ports['tracker']}",
        }
        try:
            with trio.fail_after(LIMIT * 3):
                await run_page(page, node, ports)
        finally:
            await node.stop()
        await check_promises(node, tmp_path, var, ports)


async def run_page(page: str, node: Node, ports: dict[str, int]) -> None:
    ran = 0
    for language, body in blocks(page):
        if language == "toml":
            first = body.splitlines()[0]
            if first.startswith("# /etc/"):
                target = Path(node.localize(first[2:].strip()))
                await trio.Path(target).write_text(node.localize(body))
                config = load_config(target, env={})
            else:  # a snippet: it must load as it is written
                snippet = node.tmp / "snippet.toml"
                await trio.Path(snippet).write_text(node.localize(body))
                config = load_config(snippet, env={})
            assert config.agent.hub
        elif language == "yaml":
            (exec_line,) = [line for line in body.splitlines() if line.startswith("exec:")]
            await node.start(node.command(exec_line.removeprefix("exec:").strip()))
            await wait_tcp(ports["api"], "agent API")
            ran += 1
        elif language == "sh":
            for line in command_lines(body):
                await node.run(line)
                if "p2pchunks hub serve" in line:
                    await wait_tcp(ports["hub"], "hub")
                if "p2pchunks seed" in line:
                    await wait_tcp(ports["tracker"], "seed tracker")
                ran += 1
        else:
            raise AssertionError(f"docs/zos.md: a ```{language} block; the docs test knows sh, toml and yaml")
    assert ran >= 15, f"only {ran} commands ran: has the page lost its command blocks?"


async def check_promises(node: Node, tmp: Path, var: Path, ports: dict[str, int]) -> None:
    out = node.outputs
    find = lambda needle: next(text for line, text in out.items() if needle in line)  # noqa: E731
    assert re.fullmatch(r"[0-9a-f]{64}\n", find("import-flist")), "import-flist prints the manifest id"
    ids = {b.id for f in read_flist(tmp / "ubuntu-24.04.fl").files for b in f.blocks}
    rfs = var / "rfs"
    assert all((rfs / chunk_relpath(i)).stat().st_size > 0 for i in ids), "rfs-fill wrote every block"
    assert '"stopped_for_space": false' in find("rfs-fill")
    assert find("python3 -c").strip() == f"{len(ids)} / {len(ids)}"
    assert find("redis-cli").strip() == "PONG"
    assert find("/announce").startswith("d14:failure reason")
    metrics = find("/metrics")
    assert "p2pchunks_bytes_from_hub_total" in metrics
    assert re.search(r'p2pchunks_hub_up\{hub="zdb://127\.0\.0\.1:\d+/default"\} 1\.0', metrics)
    # the rewritten flists lead to the agent (whose daemons are gone now: read them while a fresh one runs)
    routes = {name: read_flist(tmp / name) for name in ("ubuntu-24.04-p2p.fl", "ubuntu-24.04-http.fl")}
    assert routes["ubuntu-24.04-p2p.fl"].routes == ((0, 255, f"zdb://127.0.0.1:{ports['zdb']}/default"),)
    assert routes["ubuntu-24.04-http.fl"].routes == ((0, 255, f"http://127.0.0.1:{ports['rfs']}"),)
    assert read_flist(tmp / "ubuntu-22.04-p2p.flist").backend == {
        "host": "127.0.0.1",
        "port": ports["zdb"],
        "namespace": "default",
    }
    await read_through_a_running_agent(node, tmp, ids)


async def read_through_a_running_agent(node: Node, tmp: Path, ids: set[str]) -> None:
    """Start the page's agent again and import every rewritten flist without --hub: through its proxies only."""
    config = tmp / "etc" / "agent.toml"
    await node.start(f"{sys.executable} -m p2pchunks agent --config {config}")
    try:
        api = int(node.env["P2PCHUNKS_API_LISTEN"].rsplit(":", 1)[1])
        await wait_tcp(api, "agent API")
        for name in ("ubuntu-24.04-p2p.fl", "ubuntu-24.04-http.fl", "ubuntu-24.04-server.fl", "ubuntu-22.04-p2p.flist"):
            with trio.fail_after(LIMIT):
                manifest = await import_flist(tmp / name, out_dir=tmp / "through" / name)
            assert set(manifest.chunk_ids) >= (ids if name.startswith("ubuntu-24.04") else set())
    finally:
        await node.stop()


def test_the_page_names_the_fill_report_as_it_is() -> None:
    """Every report field the rfs-fill paragraph names (``word_with_underscores``, not a config key) is one."""
    from dataclasses import fields

    from p2pchunks.zos.rfscache import FillReport

    page = DOC.read_text()
    paragraph = page[page.index("`rfs-fill` asks the agent") :].split("\n\n", 1)[0]
    named = set(re.findall(r"`([a-z]+(?:_[a-z]+)+)`", paragraph))
    assert named >= {"skipped_for_space", "stopped_for_space"}
    assert named <= {f.name for f in fields(FillReport)}
