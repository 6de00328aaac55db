"""The ``p2pchunks`` command: argument parsing and printing only; every action lives in its own module.

Commands that talk to a running agent (``fetch``, ``status``, ``cache``, ``rfs-fill``) use its local API at
``--api URL``; without it, at the ``api.listen`` address of the agent's configuration (``--config FILE``, else
the defaults, both with ``P2PCHUNKS_API_LISTEN``/``P2PCHUNKS_API_TOKEN`` from the environment, as the agent reads
them), and with ``api.token`` unless ``--token`` is given.

What the user sees of a failure is one line, ``p2pchunks: <what went wrong>``, and exit status 1: never a
traceback or an exception group (``-vv`` logs the traceback of an unexpected one). Ctrl-C exits with 130; a
reader that stops reading (``p2pchunks cache ls | head``) ends the command quietly, as a pipe's writer should.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ..errors import BadConfig, P2PChunksError
from ..extras import missing_extra

log = logging.getLogger("p2pchunks")


def build_parser() -> argparse.ArgumentParser:
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

    p = sub.add_parser("fetch", help="fetch an image through the agent, writing its files as the chunks arrive")
    _api_options(p)
    p.add_argument("manifest", help="manifest name, id, .p2p path or URL")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--out", type=Path, help="write the image's files here (without: into the agent's cache only)")
    how.add_argument("--wait", action="store_true", help="into the cache, as one call that returns at the end")
    p = sub.add_parser("status", help="the agent's status")
    _api_options(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("cache", help="inspect and manage the agent's cache")
    _api_options(p)
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
    _api_options(p, timeout_s=7200.0, timeout_help="seconds to wait for the agent to finish the fill (default: "
                 "twice fetch.job_timeout_s's default; 0: no limit)")  # fmt: skip
    p.add_argument("--quota", help="e.g. 20GiB: most bytes the rfs cache may hold (lowers rfs.quota_bytes)")

    p = sub.add_parser("bench", help="benchmarks")
    p.add_argument("what", choices=["cache", "fill", "load", "memory", "ingest", "proxy", "tracker"])
    p.add_argument("--chunks", type=int, default=256, help="cache: chunks of 1 MiB; proxy: blocks of 512 KiB")
    p.add_argument(
        "--clients",
        type=int,
        help="cache, proxy: readers (default 4); load: concurrent API clients (200); tracker: announcers (8)",
    )
    p.add_argument("--image-mib", type=int, default=None, help="fill: image size (1024); ingest: (512)")
    p.add_argument("--cache-mib", type=int, nargs="+", default=[256, 2048], help="memory: cache sizes to compare")
    p.add_argument("--manifests", type=int, default=8, help="memory: images the cache holds")
    p.add_argument("--workdir", type=Path, default=None, help="memory, ingest: where the caches go (temp dir)")
    p.add_argument("--latency-ms", type=float, default=50.0, help="fill: hub latency")
    p.add_argument("--seconds", type=float, default=10.0, help="load: duration; tracker: throughput duration")
    p.add_argument("--flood", type=int, default=100_000, help="tracker: announces per flood")
    return parser


def _api_options(
    parser: argparse.ArgumentParser,
    *,
    timeout_s: float = 60.0,
    timeout_help: str = "seconds to wait for a short call's answer",
) -> None:
    parser.add_argument("--api", help="the agent's local API URL (default: api.listen of the configuration)")
    parser.add_argument("--token", help="bearer token (default: api.token of the configuration)")
    parser.add_argument("--config", type=Path, help="the agent's configuration file, for --api and --token")
    parser.add_argument("--timeout", type=float, default=timeout_s, help=timeout_help)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        status = int(_dispatch(args) or 0)
        sys.stdout.flush()  # a closed pipe fails here, where it is handled, not at the interpreter's exit
        return status
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as error:
        status, message = failure(error)
        if status == BROKEN_PIPE:
            _quiet_stdout()
        elif message:
            log.debug("the failure in full", exc_info=error)
            print(f"p2pchunks: {message}", file=sys.stderr)
        return status


BROKEN_PIPE = 128 + 13
"""The status of a writer killed by SIGPIPE, which is how a pipe's writer ends when its reader left."""


def failure(error: BaseException) -> tuple[int, str]:
    """The exit status and the one line to print for ``error`` (a group: its most telling member)."""
    leaves = list(_leaves(error))
    for kind, status in ((KeyboardInterrupt, 130), (BrokenPipeError, BROKEN_PIPE)):
        if any(isinstance(leaf, kind) for leaf in leaves):
            return status, ""
    for leaf in leaves:
        if isinstance(leaf, P2PChunksError):
            return 1, str(leaf) or type(leaf).__name__
    for leaf in leaves:
        if isinstance(leaf, OSError):
            what = leaf.strerror or str(leaf) or type(leaf).__name__
            return 1, f"{leaf.filename}: {what}" if leaf.filename else what
    first = leaves[0]
    detail = f": {first}" if str(first) else ""
    return 1, f"unexpected {type(first).__name__}{detail} (run with -vv to log the traceback)"


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for member in error.exceptions for leaf in _leaves(member)]
    return [error]


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not fail again on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a real file (tests capture stdout)
        pass


def _dispatch(args: argparse.Namespace) -> int | None:
    command = args.command
    if command == "demo":
        from .demo import run_demo

        return trio.run(run_demo, args.agents, args.image_mib, args.latency_ms, args.rate_mbps, args.workdir)
    if command in ("agent", "seed"):
        return _run_agent(args.config, seed=command == "seed")
    if command == "keygen":
        from ..formats.signing import generate_keypair

        if not args.prefix.parent.is_dir():
            raise BadConfig(f"keygen: {args.prefix.parent} is not a directory (create it first)")
        key, pub = generate_keypair(args.prefix)
        print(f"secret key: {key}\npublic key: {pub}")
        return 0
    if command == "publish":
        return _publish(args)
    if command == "hub":
        trio.run(_serve_hub, args)
        return 0
    if command == "import-flist":
        try:
            from ..zos.importflist import import_flist
        except ImportError as error:
            raise missing_extra(error, "import-flist") from None
        manifest = trio.run(
            partial(import_flist, args.flist, hub=args.hub, out_dir=args.out, name=args.name, version=args.version)
        )
        print(manifest.manifest_id)
        return 0
    if command == "rewrite-flist":
        try:
            from ..zos.flistrewrite import rewrite_flist, rewrite_flist_store
        except ImportError as error:
            raise missing_extra(error, "rewrite-flist") from None

        if args.zdb:
            shown = args.zdb if args.zdb.startswith("zdb://") else f"zdb://{args.zdb}"
            version, target = rewrite_flist(args.src, args.dst, args.zdb), shown
        else:
            version, target = rewrite_flist_store(args.src, args.dst, args.store), args.store
        print(f"{args.dst}: v{version} flist now reads from {target}")
        return 0
    if command in ("fetch", "status", "cache", "rfs-fill"):
        from . import client

        base, token = api_address(args.api, args.token, args.config)
        return trio.run(client.run_command, args, base, token)
    if command == "bench":
        if args.what == "fill":
            try:
                from ..bench.fill import bench_fill
            except ImportError as error:
                raise missing_extra(error, "bench fill") from None

            return trio.run(bench_fill, args.image_mib or 1024, args.latency_ms)
        if args.what == "memory":
            from ..bench.memory import bench_memory

            return trio.run(bench_memory, args.cache_mib, args.manifests, args.workdir)
        if args.what == "ingest":
            from ..bench.ingest import bench_ingest

            return trio.run(bench_ingest, args.image_mib or 512, args.workdir)
        if args.what == "proxy":
            try:
                from ..bench.proxy import bench_proxy
            except ImportError as error:
                raise missing_extra(error, "bench proxy") from None

            return trio.run(bench_proxy, args.chunks, args.clients or 4)
        if args.what == "load":
            from ..bench.load import bench_load

            figures = trio.run(partial(bench_load, clients=args.clients or 200, seconds=args.seconds))
            print(json.dumps(figures, indent=2))
            return 0
        if args.what == "tracker":
            from ..bench.tracker import bench_tracker

            run = partial(bench_tracker, flood=args.flood, seconds=args.seconds, clients=args.clients or 8)
            print(json.dumps(trio.run(run), indent=2))
            return 0
        from ..bench.cache import bench_cache

        return trio.run(bench_cache, args.chunks, args.clients or 4)
    raise AssertionError(command)


def api_address(api: str | None, token: str | None, config_path: Path | None) -> tuple[str, str]:
    """The agent's API URL and token: as given, else from its configuration (file, defaults, environment)."""
    if api is not None and token is not None:
        return api, token
    from ..config.schema import join_hostport, load_config, split_hostport

    config = load_config(config_path)
    if api is None:
        host, port = split_hostport(config.api.listen)
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        api = f"http://{join_hostport(host, port)}"
    return api, config.api.token if token is None else token


async def _serve_hub(args: argparse.Namespace) -> None:
    """``hub serve``: once listening, one JSON line with the bound ports (``--listen HOST:0`` works)."""
    from ..agent.process import ready_line
    from ..hub.server import serve_hub_forever

    serve = partial(serve_hub_forever, args.root, args.listen, args.zdb, args.latency_ms, args.rate_mbps)
    async with trio.open_nursery() as nursery:
        http_port, zdb_port = await nursery.start(serve)
        host = args.listen.rpartition(":")[0]
        ports = {"http_port": http_port, "zdb_port": zdb_port}
        print(ready_line("hub", f"{host}:{http_port}", ports, os.getpid()), flush=True)


def _run_agent(config_path: Path | None, *, seed: bool) -> int:
    from ..agent import open_agent
    from ..agent.process import ready_line
    from ..config.schema import load_config

    config = load_config(config_path)
    if seed:
        config = config.replace(agent={"mode": "seed"}, tracker={"enabled": True})

    async def serve() -> None:
        async with open_agent(config) as agent:
            host = config.api.listen.rpartition(":")[0]
            ports = {f"{name}_port": port for name, port in dataclasses.asdict(agent.ports).items()}
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
