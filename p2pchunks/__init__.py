"""p2pchunks: BitTorrent-style peer-to-peer chunk sharing for Zero-OS nodes."""

from .errors import (
    BadChunkId,
    BadManifest,
    BadSignature,
    CacheFull,
    ChunkCorrupt,
    ChunkNotFound,
    ChunkUnavailable,
    HubTimeout,
    HubUnavailable,
    P2PChunksError,
)

__version__ = "0.1.0"

__all__ = [
    "BadChunkId",
    "BadManifest",
    "BadSignature",
    "CacheFull",
    "ChunkCorrupt",
    "ChunkNotFound",
    "ChunkUnavailable",
    "HubTimeout",
    "HubUnavailable",
    "P2PChunksError",
    "__version__",
]
