"""The configuration reference: one row per E2EE_PROV_* setting, made from the settings classes
(core/config.py) so the table cannot drift from the code: the name, type, default, bounds and the
comment written above the field in config.py.

`python -m e2ee_provisioning.config_reference` prints the table; `--write docs/deployment.md`
(scripts/config-reference) rewrites the block between its markers there.
tests/deploy/test_config_reference.py checks the block against the code."""
from __future__ import annotations

import argparse
import ast
import inspect
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import SecretStr

from e2ee_provisioning.core import config
from e2ee_provisioning.core.config import DatabaseSettings, Settings

__all__ = ["BLOCK_END", "BLOCK_START", "PREFIX", "comments", "rewrite", "table"]

PREFIX = "E2EE_PROV_"
BLOCK_START, BLOCK_END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def comments() -> dict[str, tuple[str, str]]:
    """field -> (type as written, the comment above it); a field right under another one without a
    comment of its own shares the comment above the group ("" here: the table says so)."""
    lines = inspect.getsource(config).splitlines()
    out: dict[str, tuple[str, str]] = {}
    for cls in ast.parse("\n".join(lines)).body:
        if not isinstance(cls, ast.ClassDef) or cls.name not in (DatabaseSettings.__name__, Settings.__name__):
            continue
        for node in cls.body:
            if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
                continue
            above, i = [], node.lineno - 2  # the line before the field, 0-based
            while i >= 0 and lines[i].strip().startswith("#"):
                above.insert(0, lines[i].strip().lstrip("#").strip())
                i -= 1
            out[node.target.id] = (ast.unparse(node.annotation), " ".join(above))
    return out


def _default(value: Any) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None or value == "":
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "`%s`" % value


def _bounds(metadata: list[Any]) -> str:
    parts = []
    for m in metadata:
        for kind, sign in ((Ge, ">="), (Gt, ">"), (Le, "<="), (Lt, "<")):
            if isinstance(m, kind):
                parts.append("%s %s" % (sign, getattr(m, next(iter(kind.__dataclass_fields__)))))
    return ", ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table() -> str:
    """The Markdown table, rows in the order of the fields in config.py."""
    written = comments()
    rows = ["| Variable | Type | Default | Bounds | Meaning |", "|---|---|---|---|---|"]
    previous = ""
    for name, field in Settings.model_fields.items():
        annotation, comment = written[name]
        meaning = comment or "(see `%s%s`)" % (PREFIX, previous.upper())
        if comment:
            previous = name
        rows.append("| `%s%s` | `%s` | %s | %s | %s |" % (
            PREFIX, name.upper(), _cell(annotation), _cell(_default(field.default)), _bounds(field.metadata),
            _cell(meaning)))
    return "\n".join(rows) + "\n"


def rewrite(path: Path) -> None:
    """Replaces the block between BLOCK_START and BLOCK_END in `path` with table()."""
    text = path.read_text()
    head, start, rest = text.partition(BLOCK_START)
    _, end, tail = rest.partition(BLOCK_END)
    if not start or not end:
        raise SystemExit("%s has no %s ... %s block" % (path, BLOCK_START, BLOCK_END))
    path.write_text(head + BLOCK_START + "\n" + table() + BLOCK_END + tail)


def main() -> None:
    parser = argparse.ArgumentParser(prog="e2ee_provisioning.config_reference", description=__doc__)
    parser.add_argument("--write", type=Path, metavar="MARKDOWN", help="rewrite the block in this file")
    args = parser.parse_args()
    if args.write:
        rewrite(args.write)
    else:
        print(table(), end="")


if __name__ == "__main__":
    main()
