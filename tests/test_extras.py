"""p2pchunks without its extras: a plain agent and the demo run, and each zos feature asked for says which extra
to install.

A child Python whose import system refuses every module of the ``zos`` and ``netsim`` extras (a ``sys.meta_path``
finder that raises ``ModuleNotFoundError`` for them, as a machine without them would) runs every step and reports
what it saw as JSON; the test checks the report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from p2pchunks.extras import EXTRAS

CHILD = r"""
import contextlib, importlib.abc, io, json, sys
from pathlib import Path

BLOCKED = set(json.loads(sys.argv[2]))


class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Missing())
import trio

from p2pchunks.agent import open_agent
from p2pchunks.cli.main import main
from p2pchunks.config.schema import Config
from p2pchunks.errors import MissingExtra
from p2pchunks.hub.publish import publish
from p2pchunks.hub.server import open_hub_server

work = Path(sys.argv[1])
report = {}
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main(["demo", "--help"])
    except SystemExit as stop:
        report["demo_help"] = [stop.code, "--image-mib" in out.getvalue()]

(work / "src").mkdir()
(work / "src" / "file").write_bytes(bytes(range(256)) * 1000)
published = publish(work / "src", work / "hub", name="img", version="1", chunk_size=64 * 1024)


def config(name, **sections):
    base = {
        "agent": {"cache_dir": str(work / name), "hub": sections.pop("hub")},
        "api": {"listen": "127.0.0.1:0"},
        "swarm": {"listen": "127.0.0.1:0", "utp": False, "lsd": False, "dht": False},
        "warm": {"official": False},
        "fetch": {"discovery_grace_s": 0.0},
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return Config().replace(**base)


async def agent_steps():
    async with open_hub_server(work / "hub") as (_, url):
        async with open_agent(config("plain", hub=url)) as agent:
            job = await agent.fetch(str(published.manifest_path))
            with trio.fail_after(60):
                await job.done.wait()
            report["plain_agent"] = job.state
        report["zos_loaded"] = sorted(m for m in sys.modules if m.startswith("p2pchunks.zos"))
        for name, sections in {
            "zdb_hub": {"hub": "zdb://127.0.0.1:9900/default"},
            "zdb_listen": {"hub": url, "rfs": {"zdb_listen": "127.0.0.1:0"}},
            "rfs_cache_dir": {"hub": url, "rfs": {"cache_dir": str(work / "rfs")}},
        }.items():
            try:
                async with open_agent(config(name, **sections)):
                    report[name] = "started"
            except MissingExtra as error:
                report[name] = str(error)


trio.run(agent_steps)
for name, argv in {
    "import_flist": ["import-flist", "x.fl", "--hub", "zdb://127.0.0.1:9900/ns", "--out", str(work / "o")],
    "hub_zdb": ["hub", "serve", "--root", str(work / "hub"), "--listen", "127.0.0.1:0", "--zdb", "127.0.0.1:0"],
}.items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    report[name] = [code, err.getvalue()]
print(json.dumps(report))
"""


def test_the_core_runs_without_the_extras_and_names_them_when_needed(tmp_path: Path) -> None:
    blocked = [*EXTRAS["zos"], *EXTRAS["netsim"]]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), json.dumps(blocked)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["demo_help"] == [0, True]
    assert report["plain_agent"] == "done"
    assert report["zos_loaded"] == []
    pip = "pip install 'p2pchunks[zos]'"
    for key, need in (
        ("zdb_hub", "the zdb:// hub zdb://127.0.0.1:9900/default"),
        ("zdb_listen", "rfs.zdb_listen = '127.0.0.1:0'"),
        ("rfs_cache_dir", "rfs.cache_dir = "),
    ):
        assert report[key].startswith(need), report[key]
        assert report[key].endswith(pip), report[key]
    for key, need in (("import_flist", "import-flist"), ("hub_zdb", "serving the hub over zdb (--zdb)")):
        code, err = report[key]
        assert code == 1
        assert err.startswith(f"p2pchunks: {need} needs the optional 'zos' dependencies ("), err
        assert err.strip().endswith(pip)
        assert "Traceback" not in err
