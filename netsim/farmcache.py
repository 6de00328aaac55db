"""``farm-cache``: the farm as one cache, with custody on and off (today's behaviour) in one command.

    python -m netsim run farm-cache --nodes 8 --image-mib 16 --json OUT

The farm: ``--nodes`` agents (default 8) on one LAN, each with a cache budget of ``CACHE_IMAGES`` images, and a
signed official list of ``--images`` images (default 6: more than one node can hold) that every node warms with no
start delay. Custody on: ``custody.copies`` 2, ``custody.share`` 0.5 (8 nodes × 2 images of custody each: room for
two copies of the list); custody off: every node warms every image whole and its own LRU decides what stays.

The workload, run once per mode, each on a fresh hub and fresh agents:

1. **warm-up**: the agents start; the run waits until every node has finished its warm pass (with custody: its
   custody computed among all the farm's nodes, and fetched);
2. **deploys**: image after image, in list order, every node deploys the image at once (one unpinned fetch job
   per node, as a workload would); the next image starts when every node's job is done.

Measured: the hub's egress (its own counter, reset before the agents start) during the warm-up and during the
deploys; each deploy job's own time (median and p99 over every node and image); the fewest farm copies of any
chunk of the list after each phase, read from the nodes' caches themselves (their index files, read-only), not
from the agents' views; every chunk of every cache re-verified at the end (``corrupt_chunks``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx
import trio
from rich.console import Console
from rich.table import Table

from p2pchunks.cache.index import read_held
from p2pchunks.formats.manifest import Manifest

from .report import quantile
from .runner import Run, RunOptions
from .scenarios import Knobs, storm_config, topology
from .topology import NodeSpec, Topology, farm

CACHE_IMAGES = 4
"""Each node's cache budget, in images."""
CUSTODY = {"copies": 2, "share": 0.5}
FIRST_ADDRESS = 130
IMAGE_SEED = 1300
"""The nodes' addresses (127.0.0.130 on) and the images' contents are this scenario's own: other runs on the same
machine use 127.0.0.2 on and images of seeds 1, 2, ..., and LSD would join the swarms of identical images."""


def farm_cache_topology(knobs: Knobs) -> Topology:
    nodes = farm(knobs.nodes, up_mbps=knobs.up_mbps, down_mbps=knobs.down_mbps, first_address=FIRST_ADDRESS)
    return dataclasses.replace(topology("farm-cache", knobs), nodes=nodes)


def node_sections(storm: Any, budget_bytes: int, custody: bool) -> Any:
    """Each node's extra config: the signed list (``scenarios.storm_config``), the cache budget, custody on/off."""

    def extra(node: NodeSpec) -> dict[str, dict[str, Any]]:
        sections: dict[str, dict[str, Any]] = dict(storm(node))
        sections["cache"] = {"budget_bytes": budget_bytes}
        sections["custody"] = {"enabled": custody, **CUSTODY}
        return sections

    return extra


class FarmCacheRun(Run):
    """One mode of ``farm-cache``: warm-up, then the deploys (see the module's header)."""

    custody = True
    image_seed = IMAGE_SEED

    async def execute(self) -> dict[str, Any]:
        out: dict[str, Any] = {"errors": []}
        try:
            await trio.to_thread.run_sync(self.prepare)
            self.start_hub()
            async with httpx.AsyncClient(timeout=30.0, transport=self.backend.http_transport()) as http:
                await self.wait_ready(http, f"{self.hub_url}_stats")
                await http.post(f"{self.hub_url}_stats/reset")
                start = trio.current_time()
                with trio.fail_after(self.options.deadline_s):
                    await self._boot_nodes(http)
                    await self._warmed(http, out["errors"])
                out["warm_s"] = round(trio.current_time() - start, 3)
                out["warm_hub_bytes"] = (await self.sampler.totals(http))["total_bytes"]
                out["copies_after_warm"] = await trio.to_thread.run_sync(self.farm_copies)
                with trio.fail_after(self.options.deadline_s):
                    out["deploy_s"] = await self._deploys(http, out["errors"])
                out["deploy_hub_bytes"] = (await self.sampler.totals(http))["total_bytes"] - out["warm_hub_bytes"]
                out["copies_after_deploys"] = await trio.to_thread.run_sync(self.farm_copies)
                out["custody"] = await self._custody_of_each(http)
        finally:
            self.stop_all()
        out["corrupt_chunks"] = await trio.to_thread.run_sync(self.verify_caches)
        return out

    async def _warmed(self, http: httpx.AsyncClient, errors: list[str]) -> None:
        """Every node's warm pass is done (with custody: computed among all the nodes, and fetched)."""
        pending = list(self.nodes)
        while pending:
            for node in list(pending):
                status = (await http.get(f"{self.api(node)}/status")).json()
                warm, custody = status.get("warm") or {}, status.get("custody") or {}
                done = warm.get("passes", 0) >= 1
                if self.custody:
                    done = done and custody.get("members") == len(self.nodes) and not custody.get("warming")
                if done:
                    pending.remove(node)
                    errors.extend(f"{node.spec.name}: {error}" for error in (warm.get("errors") or [])[-3:])
            await trio.sleep(self.options.poll_s)

    async def _deploys(self, http: httpx.AsyncClient, errors: list[str]) -> list[float]:
        """Every node deploys each image at once, image after image; each job's own time."""
        seconds: list[float] = []
        for name in self.image_names:
            jobs = {}
            for node in self.nodes:
                response = await http.post(f"{self.api(node)}/fetch", json={"manifest": name})
                if response.status_code != 202:
                    errors.append(f"{node.spec.name}: deploy {name}: {response.status_code} {response.text}")
                    continue
                jobs[node.spec.name] = (node, response.json()["job"])
            while jobs:
                await trio.sleep(self.options.poll_s)
                for key, (node, job_id) in list(jobs.items()):
                    job = (await http.get(f"{self.api(node)}/jobs/{job_id}")).json()
                    if job["state"] == "running":
                        continue
                    del jobs[key]
                    seconds.append(float(job.get("seconds") or 0.0))
                    if job["state"] != "done":
                        errors.append(f"{node.spec.name}: deploy {name}: {job.get('error')}")
        return seconds

    async def _custody_of_each(self, http: httpx.AsyncClient) -> dict[str, Any]:
        out = {}
        for node in self.nodes:
            status = (await http.get(f"{self.api(node)}/status")).json()
            out[node.spec.name] = {
                "custody": status.get("custody"),
                "last_copies_evicted": status["gauges"].get("custody_last_copies_evicted", 0),
            }
        return out

    def list_chunks(self) -> list[str]:
        """The distinct chunks of every image of the list (from the hub's manifests)."""
        chunks: dict[str, None] = {}
        for name in self.image_names:
            manifest = Manifest.decode((self.work / "hub" / "manifests" / f"{name}.p2p").read_bytes())
            chunks.update(dict.fromkeys(manifest.chunk_ids))
        return list(chunks)

    def farm_copies(self) -> dict[str, Any]:
        """How many nodes' caches hold each chunk of the list, read from their index files: the fewest, and the
        histogram (0, 1, 2, 3+)."""
        held = [read_held(self.work / "nodes" / node.spec.name / "index.sqlite3") for node in self.nodes]
        counts = [sum(chunk in cache for cache in held) for chunk in self.list_chunks()]
        histogram = {key: 0 for key in ("0", "1", "2", "3+")}
        for n in counts:
            histogram[("0", "1", "2", "3+")[min(n, 3)]] += 1
        return {"min": min(counts, default=0), "histogram": histogram}


async def run_farm_cache(knobs: Knobs, workdir: Path | None = None) -> dict[str, Any]:
    """Both modes, custody first; the combined result (see ``summary``)."""
    topo = farm_cache_topology(knobs)
    load = [round(x, 2) for x in os.getloadavg()]
    modes: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="netsim-farm-cache-") as tmp:
        base = workdir or Path(tmp)
        for label, custody in (("custody", True), ("no_custody", False)):
            work = base / label
            work.mkdir(parents=True, exist_ok=True)
            budget = CACHE_IMAGES * topo.image.image_bytes
            extra = node_sections(storm_config(work, knobs), budget, custody)
            options = RunOptions(workdir=work, scenario=f"farm-cache ({label})", deadline_s=knobs.deadline_s,
                                 images=knobs.images)  # fmt: skip
            run = FarmCacheRun(topo, options, node_extra=extra)
            run.custody = custody
            modes[label] = await run.execute()
    return {**summary(modes, topo.image.image_bytes * knobs.images, knobs), "load_average": load}


def summary(modes: dict[str, dict[str, Any]], list_bytes: int, knobs: Any) -> dict[str, Any]:
    on, off = modes["custody"], modes["no_custody"]

    def times(mode: dict[str, Any]) -> tuple[float | None, float | None]:
        seconds = mode.get("deploy_s") or []
        if not seconds:
            return None, None
        return round(statistics.median(seconds), 3), round(quantile(seconds, 0.99), 3)

    (p50, p99), (p50_off, p99_off) = times(on), times(off)
    evicted = sum(node["last_copies_evicted"] for node in (on.get("custody") or {}).values())
    return {
        "scenario": "farm-cache",
        "backend": "loopback",
        "nodes": knobs.nodes,
        "images": knobs.images,
        "list_bytes": list_bytes,
        "cache_budget_bytes": CACHE_IMAGES * list_bytes // knobs.images,
        "warm_hub_bytes": on.get("warm_hub_bytes"),
        "warm_hub_ratio": _ratio(on.get("warm_hub_bytes"), list_bytes),
        "warm_hub_bytes_no_custody": off.get("warm_hub_bytes"),
        "warm_hub_ratio_no_custody": _ratio(off.get("warm_hub_bytes"), list_bytes),
        "warm_s": on.get("warm_s"),
        "warm_s_no_custody": off.get("warm_s"),
        "deploy_hub_bytes": on.get("deploy_hub_bytes"),
        "deploy_hub_bytes_no_custody": off.get("deploy_hub_bytes"),
        "deploy_hub_vs_no_custody": _ratio(on.get("deploy_hub_bytes"), off.get("deploy_hub_bytes")),
        "deploy_p50_s": p50,
        "deploy_p99_s": p99,
        "deploy_p50_s_no_custody": p50_off,
        "deploy_p99_s_no_custody": p99_off,
        "min_farm_copies": {
            "after_warm": (on.get("copies_after_warm") or {}).get("min"),
            "after_deploys": (on.get("copies_after_deploys") or {}).get("min"),
        },
        "min_farm_copies_no_custody": {
            "after_warm": (off.get("copies_after_warm") or {}).get("min"),
            "after_deploys": (off.get("copies_after_deploys") or {}).get("min"),
        },
        "farm_copies": {
            label: {key: mode.get(key) for key in ("copies_after_warm", "copies_after_deploys")}
            for label, mode in modes.items()
        },
        "custody_last_copies_evicted": evicted,
        "per_node_custody": on.get("custody"),
        "corrupt_chunks": sum(int(mode.get("corrupt_chunks", 0)) for mode in modes.values()),
        "errors": [f"{label}: {error}" for label, mode in modes.items() for error in mode.get("errors", [])],
        "knobs": dataclasses.asdict(knobs),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 4)


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f} MiB"


def print_summary(result: dict[str, Any], console: Console | None = None) -> None:
    table = Table(title=f"netsim: farm-cache ({result['nodes']} nodes, {result['images']} images, "
                  f"list {_mib(result['list_bytes'])}, cache {_mib(result['cache_budget_bytes'])} each)")  # fmt: skip
    for column in ("", "custody", "no custody"):
        table.add_column(column, justify="right" if column else "left")
    copies, copies_off = result["min_farm_copies"], result["min_farm_copies_no_custody"]
    rows = [
        ("warm-up hub bytes", _mib(result["warm_hub_bytes"]), _mib(result["warm_hub_bytes_no_custody"])),
        ("  × the list", str(result["warm_hub_ratio"]), str(result["warm_hub_ratio_no_custody"])),
        ("warm-up time", f"{result['warm_s']} s", f"{result['warm_s_no_custody']} s"),
        ("deploys hub bytes", _mib(result["deploy_hub_bytes"]), _mib(result["deploy_hub_bytes_no_custody"])),
        ("deploy p50 / p99", f"{result['deploy_p50_s']} / {result['deploy_p99_s']} s",
         f"{result['deploy_p50_s_no_custody']} / {result['deploy_p99_s_no_custody']} s"),
        ("fewest farm copies (warm / deploys)", f"{copies['after_warm']} / {copies['after_deploys']}",
         f"{copies_off['after_warm']} / {copies_off['after_deploys']}"),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    out = console or Console()
    out.print(table)
    out.print(f"deploys' hub bytes with custody / without: {result['deploy_hub_vs_no_custody']}; corrupt chunks: "
              f"{result['corrupt_chunks']}; last copies evicted: {result['custody_last_copies_evicted']}; load "
              f"average at the start: {result.get('load_average')}")  # fmt: skip
    for error in result["errors"]:
        out.print(f"[red]error:[/red] {error}", markup=True, highlight=False)


def main_farm_cache(knobs: Any, workdir: Path | None, json_path: Path | None) -> int:
    """``python -m netsim run farm-cache``: both modes, the table, the JSON file; 0 if nothing failed."""
    result = trio.run(run_farm_cache, knobs, workdir)
    print_summary(result)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if not result["errors"] and result["corrupt_chunks"] == 0 else 1
