"""The optional extras: which third-party modules each brings, and the one error when one is missing.

``pip install p2pchunks`` runs a plain agent (an HTTP hub, the swarm, the local API) and the demo. The zos formats
(``p2pchunks[zos]``: flists, the zdb protocol, rfs cache fills), netsim's model and plots (``[netsim]``) and the
benchmarks (``[bench]``) need more. Code that needs an extra imports it where it is used, and turns the
``ImportError`` of a missing dependency into :class:`MissingExtra`, which names what needed it and the ``pip``
line that installs it. Must not import any extra itself.
"""

from __future__ import annotations

import importlib

from .errors import MissingExtra

EXTRAS: dict[str, tuple[str, ...]] = {
    "zos": ("snappy", "capnp", "hiredis", "xxtea", "cryptography"),
    "netsim": ("numpy", "matplotlib"),
}
"""The top-level modules each extra brings (what ``pyproject.toml`` installs for it)."""


def missing_extra(error: ImportError, need: str, extra: str = "zos") -> Exception:
    """The error to raise for ``error``: :class:`MissingExtra` naming ``need`` and the extra to install, or
    ``error`` itself when what failed to import is part of p2pchunks (a bug, not a missing extra)."""
    name = error.name or ""
    if name.partition(".")[0] == "p2pchunks":
        return error
    return MissingExtra(
        f"{need} needs the optional {extra!r} dependencies ({name or error} is not installed): "
        f"pip install 'p2pchunks[{extra}]'"
    )


def require(module: str, need: str, extra: str = "zos") -> None:
    """Import ``module`` (a p2pchunks module of ``extra``) now, to fail at start rather than at first use."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise missing_extra(error, need, extra) from None
