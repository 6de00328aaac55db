"""One error hierarchy for p2pchunks.

Every failure a caller may want to tell apart has its own class here. The local API maps these classes to
HTTP status codes in exactly one place (``STATUS_BY_ERROR`` below); the CLI prints ``str(error)``. Raise the
most specific class; never raise bare ``Exception`` or ``ValueError`` across a module boundary.
"""

from __future__ import annotations


class P2PChunksError(Exception):
    """Base of every error p2pchunks raises on purpose."""


class BadChunkId(P2PChunksError, ValueError):
    """A string that is not a valid chunk id (wrong alphabet or length)."""


class ChunkNotFound(P2PChunksError):
    """No source (cache, peers, hub) has the chunk."""

    def __init__(self, chunk_id: str, detail: str = "") -> None:
        self.chunk_id = chunk_id
        super().__init__(f"chunk {chunk_id} not found" + (f": {detail}" if detail else ""))


class ChunkCorrupt(P2PChunksError):
    """Bytes that do not hash to the chunk id they were offered for."""

    def __init__(self, chunk_id: str, source: str = "") -> None:
        self.chunk_id = chunk_id
        self.source = source
        super().__init__(f"chunk {chunk_id} failed verification" + (f" (from {source})" if source else ""))


class HubError(P2PChunksError):
    """The hub could not deliver."""


class HubUnavailable(HubError):
    """The hub refused, reset or answered 5xx; retrying later may work."""


class HubTimeout(HubUnavailable):
    """The hub did not answer within the per-request timeout."""


class ChunkUnavailable(P2PChunksError):
    """No peer has the chunk and the hub cannot serve it right now (maps to 503)."""

    def __init__(self, chunk_id: str, detail: str = "") -> None:
        self.chunk_id = chunk_id
        super().__init__(f"chunk {chunk_id} unavailable" + (f": {detail}" if detail else ""))


class CacheFull(P2PChunksError):
    """The cache budget is exhausted and nothing more can be evicted."""


class JobFailed(P2PChunksError):
    """A fetch job ended without every chunk: ``missing`` names those no source could deliver."""

    def __init__(self, message: str, missing: tuple[str, ...] = ()) -> None:
        self.missing = missing
        super().__init__(message)


class BadRequest(P2PChunksError, ValueError):
    """A request to the local API that cannot be served as sent (bad JSON, a bad flag, a body too large)."""


class BadManifest(P2PChunksError, ValueError):
    """A manifest (or bencoded document) that is malformed, too large, or inconsistent."""


class BadSignature(P2PChunksError):
    """A signature that does not verify against any trusted key."""


class StaleVersion(P2PChunksError):
    """A signed list or manifest older than the one already in force."""


class ManifestNotFound(P2PChunksError):
    """No manifest of that name or id."""


class BadConfig(P2PChunksError, ValueError):
    """A configuration file or value that cannot be used."""


class MissingExtra(BadConfig):
    """A feature was asked for whose optional dependencies are not installed (``pip install 'p2pchunks[zos]'``)."""


class BadFlist(P2PChunksError, ValueError):
    """An flist (.fl or .flist) that cannot be read."""


STATUS_BY_ERROR: tuple[tuple[type[P2PChunksError], int], ...] = (
    (BadChunkId, 400),
    (BadRequest, 400),
    (BadManifest, 400),
    (BadFlist, 400),
    (BadConfig, 400),
    (BadSignature, 403),
    (StaleVersion, 409),
    (ChunkNotFound, 404),
    (ManifestNotFound, 404),
    (CacheFull, 507),
    (JobFailed, 502),
    (ChunkCorrupt, 502),
    (HubTimeout, 504),
    (ChunkUnavailable, 503),
    (HubUnavailable, 503),
)


def http_status(error: P2PChunksError) -> int:
    """The HTTP status the local API answers for ``error`` (first matching class wins).

    A chunk no source could deliver (503) answers as the hub's failure when that says more: 504 if the hub timed
    out, 502 if it sent wrong bytes."""
    cause = error.__cause__
    if isinstance(error, ChunkUnavailable) and isinstance(cause, HubTimeout | ChunkCorrupt):
        return http_status(cause)
    for cls, status in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return status
    return 500


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first failure of ``group`` when all are plain errors (callers see ChunkNotFound or OSError, not a
    group); the group itself when it holds a cancellation or an interrupt."""
    errors, rest = group.split(Exception)
    if errors is None or rest is not None:
        return group
    first: BaseException = errors
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first
