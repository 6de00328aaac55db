"""docs/configuration.md, generated from the config dataclasses so the reference cannot drift from the code.

``python -m p2pchunks.config.doc > docs/configuration.md``; a test checks the file is current.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect

from . import schema as config

HEADER = """# Configuration reference

`p2pchunks agent --config FILE` reads a TOML file; every key is optional and has the default below. Any key can be
overridden from the environment as `P2PCHUNKS_<SECTION>_<KEY>` (lists: comma-separated), e.g.
`P2PCHUNKS_AGENT_HUB=zdb://hub:9900/default`. Unknown sections or keys, wrong types and impossible values are
refused at start with an error naming the key. Commented examples: `deploy/agent.toml`, `deploy/seed.toml`.
This page is generated: `python -m p2pchunks.config.doc > docs/configuration.md`.
"""


def _field_docs() -> dict[tuple[str, str], str]:
    docs: dict[tuple[str, str], str] = {}
    for node in ast.parse(inspect.getsource(config)).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt, following in zip(node.body, node.body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
            ):
                docs[(node.name, stmt.target.id)] = " ".join(str(following.value.value).split())
    return docs


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value).replace("'", '"')


def reference() -> str:
    docs = _field_docs()
    lines = [HEADER]
    defaults = config.Config()
    for section_field in dataclasses.fields(defaults):
        section = getattr(defaults, section_field.name)
        lines += [f"## [{section_field.name}]", "", "| key | default | meaning |", "| --- | --- | --- |"]
        for f in dataclasses.fields(section):
            meaning = docs.get((type(section).__name__, f.name), "").replace("|", "\\|")
            lines.append(f"| `{f.name}` | `{_toml(getattr(section, f.name))}` | {meaning} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference(), end="")
