"""The ``p2pchunks`` command: argument parsing and printing only; every action lives in its own module.

Commands that talk to a running agent (``fetch``, ``status``, ``cache``, ``rfs-fill``) use its local API
(``--api``; default ``http://`` + ``P2PCHUNKS_API_LISTEN``, the variable that also moves the agent's API, else
``127.0.0.1:7760``, the config's default). Errors of the p2pchunks hierarchy are printed as one line and exit
with status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ..errors import P2PChunksError


def default_api() -> str:
    """The agent's API as the agent itself would listen without a config file: ``P2PCHUNKS_API_LISTEN`` or the
    default ``api.listen``."""
    return "http://" + (os.environ.get("P2PCHUNKS_API_LISTEN", "").strip() or "127.0.0.1:7760")


def build_parser() -> argparse.ArgumentParser:
    api = default_api()
    parser = argparse.ArgumentParser(prog="p2pchunks", description="Peer-to-peer chunk sharing for Zero-OS nodes")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="local hub + agents on loopback: fetch one image, print the table")
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--image-mib", type=int, default=192)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--rate-mbps", type=float, default=400.0)
    p.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")

    p = sub.add_parser("agent", help="run the agent (node mode)")
    p.add_argument("--config", type=Path, default=None)
    p = sub.add_parser("seed", help="run the agent in seed mode (volunteer farmer node)")
    p.add_argument("--config", type=Path, default=None)

    p = sub.add_parser("keygen", help="make an Ed25519 key pair: PREFIX.key and PREFIX.pub")
    p.add_argument("prefix", type=Path)

    p = sub.add_parser("publish", help="chunk a file or tree into a hub root and write its manifest")
    p.add_argument("path", type=Path)
    p.add_argument("--hub-root", type=Path, required=True)
    p.add_argument("--name")
    p.add_argument("--version", default="0")
    p.add_argument("--chunk-size", default="512KiB")
    p.add_argument("--hot-list", type=Path, help="file with one image path per line: boot-critical files")
    p.add_argument("--sign-key", type=Path)

    p = sub.add_parser("hub", help="the reference hub")
    hub_sub = p.add_subparsers(dest="hub_command", required=True, metavar="ACTION")
    s = hub_sub.add_parser("serve", help="serve a hub root over HTTP (and zdb with --zdb)")
    s.add_argument("--root", type=Path, required=True)
    s.add_argument("--listen", default="127.0.0.1:8080")
    s.add_argument("--zdb", default="", help="also serve chunks over the zdb protocol on HOST:PORT")
    s.add_argument("--latency-ms", type=float, default=0.0)
    s.add_argument("--rate-mbps", type=float, default=None)

    for name, help_text in (
        ("fetch", "fetch an image through the agent and assemble its files"),
        ("status", "the agent's status"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--api", default=api, help=f"the agent's local API (default {api})")
        p.add_argument("--token", default="")
        if name == "fetch":
            p.add_argument("manifest", help="manifest name, id, .p2p path or URL")
            p.add_argument("--out", type=Path, required=True)
        else:
            p.add_argument("--json", action="store_true")

    p = sub.add_parser("cache", help="inspect and manage the agent's cache")
    p.add_argument("--api", default=api)
    p.add_argument("--token", default="")
    cache_sub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    s = cache_sub.add_parser("ls")
    s.add_argument("--limit", type=int, default=50)
    for action in ("pin", "unpin"):
        s = cache_sub.add_parser(action)
        s.add_argument("target", help="a chunk id or a manifest name/id")
        if action == "pin":
            s.add_argument("--class", dest="pin_class", choices=["user", "official"], default="user")
    s = cache_sub.add_parser("gc")
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--force", action="store_true", help="evict down to the low watermark even below the high one")

    p = sub.add_parser("import-flist", help="turn a zos flist (.fl or .flist) into a manifest (fetches every blob)")
    p.add_argument("flist", help="a .fl/.flist file or an http(s) URL")
    p.add_argument(
        "--hub",
        action="append",
        help="where the blobs are (repeat for mirrors): zdb://HOST:PORT/NS, server://http/HOST:PORT, "
        "rfs+http://HOST/PATH or a p2pchunks hub http://HOST:PORT/; default: the stores the flist names",
    )
    p.add_argument("--out", type=Path, required=True, help="a hub root: blobs in chunks/, the manifest in manifests/")
    p.add_argument("--name")
    p.add_argument("--version", default="1")

    p = sub.add_parser("rewrite-flist", help="point a flist at the agent's proxy (copy; the source is kept)")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--zdb", help="HOST:PORT[/NAMESPACE] of the zdb proxy (rfs.zdb_listen)")
    where.add_argument(
        "--store", help="an rfs store URL for the route, e.g. http://HOST:PORT or server://http/HOST:PORT (.fl only)"
    )

    p = sub.add_parser("rfs-fill", help="fill the node's rfs cache (rfs.cache_dir) with an image, ahead of the VM")
    p.add_argument("manifest", help="manifest name, id, .p2p path or URL")
    p.add_argument("--api", default=api)
    p.add_argument("--token", default="")
    p.add_argument("--quota", help="e.g. 20GiB: most bytes the rfs cache may hold (lowers rfs.quota_bytes)")
    p.add_argument(
        "--timeout",
        type=float,
        default=7200.0,
        help="seconds to wait for the agent to finish (default: twice fetch.job_timeout_s's default; 0: no limit)",
    )

    p = sub.add_parser("bench", help="benchmarks")
    p.add_argument("what", choices=["cache", "fill", "load", "memory", "ingest", "proxy"])
    p.add_argument("--chunks", type=int, default=256, help="cache: chunks of 1 MiB; proxy: blocks of 512 KiB")
    p.add_argument(
        "--clients", type=int, help="cache, proxy: readers (default 4); load: concurrent API clients (200)"
    )
    p.add_argument("--image-mib", type=int, default=None, help="fill: image size (1024); ingest: (512)")
    p.add_argument("--cache-mib", type=int, nargs="+", default=[256, 2048], help="memory: cache sizes to compare")
    p.add_argument("--manifests", type=int, default=8, help="memory: images the cache holds")
    p.add_argument("--workdir", type=Path, default=None, help="memory, ingest: where the caches go (temp dir)")
    p.add_argument("--latency-ms", type=float, default=50.0, help="fill: hub latency")
    p.add_argument("--seconds", type=float, default=10.0, help="load: duration")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(_dispatch(args) or 0)
    except P2PChunksError as error:
        print(f"p2pchunks: {str(error) or type(error).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int | None:
    command = args.command
    if command == "demo":
        from .demo import run_demo

        return trio.run(run_demo, args.agents, args.image_mib, args.latency_ms, args.rate_mbps, args.workdir)
    if command in ("agent", "seed"):
        return _run_agent(args.config, seed=command == "seed")
    if command == "keygen":
        from ..formats.signing import generate_keypair

        key, pub = generate_keypair(args.prefix)
        print(f"secret key: {key}\npublic key: {pub}")
        return 0
    if command == "publish":
        return _publish(args)
    if command == "hub":
        from ..hub.server import serve_hub_forever

        trio.run(serve_hub_forever, args.root, args.listen, args.zdb, args.latency_ms, args.rate_mbps)
        return 0
    if command == "import-flist":
        from ..zos.importflist import import_flist

        manifest = trio.run(
            partial(import_flist, args.flist, hub=args.hub, out_dir=args.out, name=args.name, version=args.version)
        )
        print(manifest.manifest_id)
        return 0
    if command == "rewrite-flist":
        from ..zos.flistrewrite import rewrite_flist, rewrite_flist_store

        if args.zdb:
            shown = args.zdb if args.zdb.startswith("zdb://") else f"zdb://{args.zdb}"
            version, target = rewrite_flist(args.src, args.dst, args.zdb), shown
        else:
            version, target = rewrite_flist_store(args.src, args.dst, args.store), args.store
        print(f"{args.dst}: v{version} flist now reads from {target}")
        return 0
    if command in ("fetch", "status", "cache", "rfs-fill"):
        from . import client

        return trio.run(client.run_command, args)
    if command == "bench":
        if args.what == "fill":
            from ..bench.fill import bench_fill

            return trio.run(bench_fill, args.image_mib or 1024, args.latency_ms)
        if args.what == "memory":
            from ..bench.memory import bench_memory

            return trio.run(bench_memory, args.cache_mib, args.manifests, args.workdir)
        if args.what == "ingest":
            from ..bench.ingest import bench_ingest

            return trio.run(bench_ingest, args.image_mib or 512, args.workdir)
        if args.what == "proxy":
            from ..bench.proxy import bench_proxy

            return trio.run(bench_proxy, args.chunks, args.clients or 4)
        if args.what == "load":
            from ..bench.load import bench_load

            figures = trio.run(partial(bench_load, clients=args.clients or 200, seconds=args.seconds))
            print(json.dumps(figures, indent=2))
            return 0
        from ..bench.cache import bench_cache

        return trio.run(bench_cache, args.chunks, args.clients or 4)
    raise AssertionError(command)


def _run_agent(config_path: Path | None, *, seed: bool) -> int:
    import os

    from ..agent import open_agent
    from ..agent.process import ready_line
    from ..config.schema import load_config

    config = load_config(config_path)
    if seed:
        config = config.replace(agent={"mode": "seed"}, tracker={"enabled": True})

    async def serve() -> None:
        async with open_agent(config) as agent:
            host = config.api.listen.rpartition(":")[0]
            ports = {
                "api_port": agent.ports.api,
                "swarm_port": agent.ports.swarm,
                "tracker_port": agent.ports.tracker,
                "zdb_port": agent.ports.zdb,
            }
            print(ready_line(config.agent.mode, f"{host}:{agent.ports.api}", ports, os.getpid()), flush=True)
            await trio.sleep_forever()

    trio.run(serve)
    return 0


def _publish(args: argparse.Namespace) -> int:
    from ..formats.signing import load_signing_key
    from ..hub.publish import parse_size, publish, read_hot_list

    result = publish(
        args.path,
        args.hub_root,
        name=args.name,
        version=args.version,
        chunk_size=parse_size(args.chunk_size),
        hot_paths=read_hot_list(args.hot_list) if args.hot_list else (),
        signing_key=load_signing_key(args.sign_key) if args.sign_key else None,
    )
    summary: dict[str, Any] = {
        "manifest": str(result.manifest_path),
        "chunks": result.chunks_total,
        "new_chunks": result.chunks_written,
        "bytes": result.bytes_read,
        "seconds": round(result.seconds, 3),
    }
    print(json.dumps(summary), file=sys.stderr)
    print(result.manifest.manifest_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
