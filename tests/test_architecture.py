"""The architecture's rules, checked on the source: who may import whom, no cycles, modules of a readable size, and
the "must not know" lines of the module docstrings kept true where an import can show it.

Everything here reads the code with ``ast`` (no import-linter, nothing imported): each ``import`` is classified as
*module level* (runs when the module is imported, class bodies included), *type only* (under ``if TYPE_CHECKING``)
or *lazy* (inside a function: runs when that function does).
"""

from __future__ import annotations

import ast
import itertools
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("p2pchunks", "netsim")
MAX_LINES = 450
LONG_MODULES: dict[str, str] = {}
"""Modules allowed over MAX_LINES, each with its reason (none today)."""


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    """The absolute module name imported (``p2pchunks.errors``, ``trio``, ``os.path``)."""
    kind: str
    """``module``, ``typing`` or ``lazy``."""
    line: int

    @property
    def top(self) -> str:
        return self.target.split(".")[0]

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.target} ({self.kind})"


@cache
def sources() -> dict[str, Path]:
    """Module name → file, for every module of the repository's packages."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _package_of(module: str) -> str:
    return module if sources()[module].name == "__init__.py" else module.rpartition(".")[0]


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str) -> None:
        self.module = module
        self.found: list[Import] = []
        self._kind = ["module"]

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._nested(node, "lazy")

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._nested(node, "lazy")

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            self._kind.append("typing" if self._kind[-1] == "module" else self._kind[-1])
            for stmt in node.body:
                self.visit(stmt)
            self._kind.pop()
            for stmt in node.orelse:
                self.visit(stmt)
        else:
            self.generic_visit(node)

    def _nested(self, node: ast.AST, kind: str) -> None:
        self._kind.append(kind)
        self.generic_visit(node)
        self._kind.pop()

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = _package_of(self.module).split(".")
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        if prefix == "__future__":
            return
        for alias in node.names:
            candidate = f"{prefix}.{alias.name}"
            self._add(candidate if candidate in sources() else prefix, node.lineno)

    def _add(self, target: str, line: int) -> None:
        self.found.append(Import(self.module, target, self._kind[-1], line))


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    collector = _Collector(module)
    collector.visit(ast.parse(sources()[module].read_text()))
    return tuple(collector.found)


def p2p_modules(prefix: str = "p2pchunks") -> list[str]:
    return [m for m in sources() if m == prefix or m.startswith(prefix + ".")]


def within(target: str, prefixes: Iterable[str]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


@cache
def loads(module: str) -> frozenset[str]:
    """Every module importing ``module`` runs (module-level imports, transitively, parent packages included)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        for imp in imports_of(current):
            if imp.kind != "module":
                continue
            targets = [imp.target]
            if imp.target in sources():  # importing a.b.c runs a/__init__ and a/b/__init__ first
                parts = imp.target.split(".")
                targets += [".".join(parts[:i]) for i in range(1, len(parts))]
            for target in targets:
                if target not in seen:
                    seen.add(target)
                    if target in sources():
                        todo.append(target)
    return frozenset(seen)


# --- (a) the policy is pure --------------------------------------------------------------------------------------

PURE_STDLIB = frozenset(
    {
        "abc",
        "bisect",
        "collections",
        "dataclasses",
        "enum",
        "fractions",
        "functools",
        "hashlib",
        "heapq",
        "itertools",
        "math",
        "numbers",
        "operator",
        "re",
        "statistics",
        "string",
        "typing",
    }
)
"""Stdlib modules that compute and touch nothing. ``datetime`` too, as a type: the policy turns timestamps it is
given into text; reading the clock (``now()``, ``today()``) is refused below."""
POLICY_MAY_IMPORT = ("p2pchunks.errors", "p2pchunks.ids", "p2pchunks.policy")


def test_the_policy_imports_only_pure_modules() -> None:
    bad = [
        str(imp)
        for module in p2p_modules("p2pchunks.policy")
        for imp in imports_of(module)
        if not (imp.top in PURE_STDLIB or imp.top == "datetime" or within(imp.target, POLICY_MAY_IMPORT))
    ]
    assert bad == []
    for module in POLICY_MAY_IMPORT[:2]:  # what the policy imports is pure too
        assert [
            str(i)
            for i in imports_of(module)
            if not (i.top in PURE_STDLIB or within(i.target, POLICY_MAY_IMPORT)) and i.target != "pathlib"
        ] == []


def test_the_policy_reads_no_clock() -> None:
    clocks = {"now", "today", "utcnow", "time", "monotonic", "perf_counter", "current_time"}
    calls = [
        f"{module}:{node.lineno}"
        for module in p2p_modules("p2pchunks.policy")
        for node in ast.walk(ast.parse(sources()[module].read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in clocks
    ]
    assert calls == []


# --- (b) formats load no I/O engine ------------------------------------------------------------------------------


@pytest.mark.parametrize("module", p2p_modules("p2pchunks.formats"))
def test_formats_load_no_trio_libtorrent_httpx_or_sqlite(module: str) -> None:
    assert sorted(loads(module) & {"trio", "libtorrent", "httpx", "sqlite3"}) == []


# --- (c) zos only where it is asked for --------------------------------------------------------------------------

ZOS_USERS = ("p2pchunks.zos", "p2pchunks.cli", "p2pchunks.bench")
LAZY_ZOS = {
    ("p2pchunks.hub.client", "p2pchunks.zos.zdb"): "a zdb:// hub: the transport is made for that URL only",
    ("p2pchunks.hub.server", "p2pchunks.zos.zdbserver"): "the reference hub serves zdb only with --zdb",
    ("p2pchunks.agent.root", "p2pchunks.zos.zdbproxy"): "the zdb proxy runs only with rfs.zdb_listen",
    ("p2pchunks.agent.root", "p2pchunks.zos.rfsproxy"): "the rfs store proxy runs only with rfs.http_listen",
    ("p2pchunks.agent.fill", "p2pchunks.zos.rfscache"): "an rfs cache fill, only when one is asked for",
}
"""The zos imports outside zos, cli and bench: each inside the function that needs it, each with its reason. Each
is guarded: a missing ``[zos]`` extra is a ``MissingExtra`` naming the pip line (tests/test_extras.py)."""


def test_zos_is_imported_lazily_and_only_where_listed() -> None:
    outside = [
        imp
        for module in p2p_modules()
        if not within(module, ZOS_USERS)
        for imp in imports_of(module)
        if within(imp.target, ["p2pchunks.zos"])
    ]
    assert [str(imp) for imp in outside if imp.kind != "lazy"] == []
    assert {(imp.importer, imp.target) for imp in outside} == set(LAZY_ZOS)


def test_a_plain_agent_does_not_load_zos() -> None:
    for module in ("p2pchunks.agent", "p2pchunks.cli.main", "p2pchunks.cli.demo", "p2pchunks.hub.server"):
        assert sorted(m for m in loads(module) if within(m, ["p2pchunks.zos"])) == [], module


# --- (d) nobody imports the command or the benchmarks ------------------------------------------------------------


def test_only_cli_and_bench_import_cli_and_bench() -> None:
    top = ("p2pchunks.cli", "p2pchunks.bench")
    bad = [
        str(imp)
        for module in sources()
        if not within(module, top) and module != "p2pchunks.__main__"  # ``python -m p2pchunks`` is the command
        for imp in imports_of(module)
        if within(imp.target, top)
    ]
    assert bad == []


# --- (e) no cycles -----------------------------------------------------------------------------------------------


def unit_of(module: str) -> str:
    """A subpackage (``agent``) or a top-level module (``errors``) of p2pchunks."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """A cycle of ``graph`` as a path that ends where it starts, or [] if it has none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def runtime_edges() -> list[Import]:
    return [
        imp
        for module in p2p_modules()
        for imp in imports_of(module)
        if imp.kind == "module" and within(imp.target, ["p2pchunks"]) and imp.target != "p2pchunks"
    ]


def test_no_cycle_between_subpackages() -> None:
    graph: dict[str, set[str]] = {}
    for imp in runtime_edges():
        a, b = unit_of(imp.importer), unit_of(imp.target)
        if a != b:
            graph.setdefault(a, set()).add(b)
    cycle = find_cycle(graph)
    examples = [
        next(str(imp) for imp in runtime_edges() if (unit_of(imp.importer), unit_of(imp.target)) == (a, b))
        for a, b in itertools.pairwise(cycle)
    ]
    assert cycle == [], f"cycle {' → '.join(cycle)}, e.g. " + "; ".join(examples)


def test_no_cycle_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    for imp in runtime_edges():
        graph.setdefault(imp.importer, set()).add(imp.target)
    cycle = find_cycle(graph)
    assert cycle == [], f"cycle {' → '.join(cycle)}"


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


# --- (f) "must not know", where an import can show it ------------------------------------------------------------

KNOWS: dict[str, tuple[str, ...]] = {
    # a phrase of a "must not know" clause → the modules whose import would mean knowing it (the module's own
    # imports, type-only ones included: knowing is naming; what a module loads through others is contract (b)'s)
    r"\blibtorrent\b": ("libtorrent",),
    r"\bHTTP\b(?! hub)": ("httpx", "h11", "p2pchunks.http"),
    r"\bthe HTTP hub\b": ("p2pchunks.hub.server", "p2pchunks.hub.client"),
    r"\bSQLite\b": ("sqlite3",),
    r"\btrio\b": ("trio",),
    r"\bsockets\b": ("socket",),
    r"\bnetwork(ing)?\b": ("socket", "httpx", "h11", "p2pchunks.http", "p2pchunks.hub.client"),
    r"\bthe clock\b": ("time",),
    r"\b(the )?cache(s|'s internals)?\b(?! beyond)": ("p2pchunks.cache",),
    r"\bchunk stores\b": ("p2pchunks.cache",),
    r"\bthe rfs cache\b": ("p2pchunks.zos.rfscache",),
    r"\bthe agent('s internals)?\b|\bagents\b": ("p2pchunks.agent",),
    r"\bthe swarm\b|\bpeers\b|\btorrents\b": ("p2pchunks.swarm", "libtorrent"),
    r"\bmanifests\b|\bwhat a manifest is\b": ("p2pchunks.formats.manifest",),
    r"\bsignatures\b": ("p2pchunks.formats.signing",),
    r"\bhubs\b": ("p2pchunks.hub.client", "p2pchunks.hub.server", "p2pchunks.zos.zdb"),
    r"\bcodecs\b": ("p2pchunks.zos.codec",),
    r"\bRESP\b": ("p2pchunks.zos.resp",),
    r"\bthe proxy\b": ("p2pchunks.zos.zdbproxy",),
    r"\bflists\b": ("p2pchunks.zos.flist",),
    r"\bapplication object\b": ("p2pchunks.agent", "p2pchunks.hub", "p2pchunks.swarm"),
    r"\bchunks\b(?! are fetched| come from)": ("p2pchunks.ids", "p2pchunks.cache"),
    r"\bany format\b": ("p2pchunks.formats", "p2pchunks.zos"),
    r"\bwhere chunks come from\b|\bhow chunks are fetched\b": ("p2pchunks.hub.client", "p2pchunks.policy.fetch"),
    r"\bpolicy \(which chunk from where\)|\bpolicy, ": ("p2pchunks.policy.fetch",),
}
"""Phrases no import can show are not checked: "the policy's rules" (a job passes ``FetchParams`` on without
applying them), "verification", "what the events mean", "files"."""
EXCEPTIONS = {
    ("p2pchunks.agent.process", "p2pchunks.agent"): "its own package: the process runs the agent, its internals unseen",
    ("p2pchunks.bench.load", "p2pchunks.agent"): "agent.process only: the child process, its ready line",
}


def clause(module: str) -> str:
    doc = ast.get_docstring(ast.parse(sources()[module].read_text())) or ""
    found = re.search(r"[Mm]ust not (?:know|decide)\b:?(.*?)(?:[.:;](?:\s|$)|$)", " ".join(doc.split()))
    return found.group(1) if found else ""


@cache
def claims() -> list[tuple[str, str, tuple[str, ...]]]:
    return [
        (module, phrase, targets)
        for module in p2p_modules()
        for phrase, targets in KNOWS.items()
        if re.search(phrase, clause(module))
    ]


def test_must_not_know_lines_hold() -> None:
    bad = [
        f"{imp} but must not know {phrase!r}"
        for module, phrase, targets in claims()
        for imp in imports_of(module)
        for target in targets
        if within(imp.target, [target]) and (module, target) not in EXCEPTIONS
    ]
    assert bad == []
    of_agent = {i.target for i in imports_of("p2pchunks.bench.load") if within(i.target, ["p2pchunks.agent"])}
    assert of_agent <= {"p2pchunks.agent.process"}  # what its exception allows


def test_the_claims_checked_cover_the_modules_that_make_them() -> None:
    checked = {module for module, _, _ in claims()}
    making = {m for m in p2p_modules() if clause(m)}
    assert len(checked) >= len(making) * 3 // 4, sorted(making - checked)


# --- size --------------------------------------------------------------------------------------------------------


def test_no_module_is_over_450_lines() -> None:
    long = {name: n for name, path in sources().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert {name: n for name, n in long.items() if name not in LONG_MODULES} == {}
    assert set(LONG_MODULES) <= set(long), "an exception no longer needed"


def test_what_the_contracts_read_is_what_python_runs() -> None:
    """The classification, on this file's own imports and on a module with every kind."""
    assert sys.version_info >= (3, 11)
    kinds = {(i.target, i.kind) for i in imports_of("p2pchunks.agent.status")}
    assert ("p2pchunks.agent.root", "typing") in kinds
    assert ("p2pchunks.agent.jobs", "module") in kinds
    assert {(i.target, i.kind) for i in imports_of("p2pchunks.hub.client")} >= {
        ("p2pchunks.zos.zdb", "lazy"),
        ("p2pchunks.errors", "module"),
    }
