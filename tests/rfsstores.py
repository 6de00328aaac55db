"""Local stand-ins for rfs's two HTTP block stores, answering as rfs's sources define them (docs/zos.md):

* :class:`StaticStore`: what an rfs ``http(s)://`` store reads from: any static file server. rfs asks
  ``BASE/<id[0:2]>/<id>`` and, on 404, ``BASE/<id>``; a file server answers 200 with the bytes or 404.
* :class:`BlockApi`: the block routes of ``rfs server`` (``src/server/mod.rs``, ``block_handlers.rs``,
  ``response.rs``): ``GET /api/v1/block/:hash`` → 200 ``application/octet-stream`` / 404 plain text
  ``Block with hash '<hash>' not found`` / 500 ``Internal server error``; ``HEAD`` of the same path → 200 / 404
  with no body; any other method there → 405; ``GET /api/v1`` → the health JSON.

Both are real HTTP servers (``http.server.serve_http`` on 127.0.0.1) and record every request they see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pchunks.http.server import Request, Response, json_response

NOT_FOUND_TEXT = "Block with hash '{}' not found"


@dataclass
class StaticStore:
    """Files under ``prefix`` (e.g. ``/store``): ``files`` maps a relative path to its bytes."""

    prefix: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)
    """Relative paths that answer 500 (a broken store)."""
    seen: list[tuple[str, str]] = field(default_factory=list)

    def put_nested(self, chunk_id: str, data: bytes) -> None:
        self.files[f"{chunk_id[:2]}/{chunk_id}"] = data

    def put_flat(self, chunk_id: str, data: bytes) -> None:
        self.files[chunk_id] = data

    async def handle(self, request: Request) -> Response:
        self.seen.append((request.method, request.path + (f"?{request.raw_query}" if request.raw_query else "")))
        if request.method not in ("GET", "HEAD"):
            return Response(405, [], b"")
        base = self.prefix.rstrip("/") + "/"
        if not request.path.startswith(base):
            return Response(404, [("content-type", "text/plain")], b"not found")
        relative = request.path[len(base) :]
        if relative in self.failing:
            return Response(500, [("content-type", "text/plain")], b"broken")
        data = self.files.get(relative)
        if data is None:
            return Response(404, [("content-type", "text/plain")], b"not found")
        return Response(200, [("content-type", "application/octet-stream")], data)


@dataclass
class BlockApi:
    """The block routes of an ``rfs server`` mounted at ``prefix`` (the ``/PATH`` of ``server://SCHEME/HOST/PATH``)."""

    prefix: str = ""
    blocks: dict[str, bytes] = field(default_factory=dict)
    broken: bool = False
    """The server's database fails: GET answers 500 (HEAD, as in rfs, then says 404)."""
    seen: list[tuple[str, str]] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        self.seen.append((request.method, request.path))
        path = request.path[len(self.prefix) :] if request.path.startswith(self.prefix + "/") else None
        if path == "/api/v1" and request.method in ("GET", "HEAD"):
            return json_response(200, {"msg": "flist server is working"})
        parts = (path or "").split("/")
        if len(parts) != 5 or parts[:4] != ["", "api", "v1", "block"] or not parts[4]:
            return Response(404, [], b"")
        block = parts[4]
        if request.method == "GET":
            if self.broken:
                return Response(500, [("content-type", "text/plain; charset=utf-8")], b"Internal server error")
            data = self.blocks.get(block)
            if data is None:
                text = NOT_FOUND_TEXT.format(block).encode()
                return Response(404, [("content-type", "text/plain; charset=utf-8")], text)
            return Response(200, [("content-type", "application/octet-stream")], data)
        if request.method == "HEAD":
            return Response(200 if block in self.blocks and not self.broken else 404, [], b"")
        return Response(405, [("allow", "GET,HEAD")], b"")
