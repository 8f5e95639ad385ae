"""The package's shape holds: imports run down the layers only, the engine names no backend,
SQL stays in storage/postgres, no class inherits from another of the package (except to
implement a Protocol or an ABC), and modules and functions stay small (issue 18)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "autoloop_daemon"

# Lower layers never import higher ones; a package may import its own layer.
LAYERS: dict[str, int] = {
    "": 0,  # the top-level modules: vocab, models, clock, exceptions, target_state, ...
    "policy": 1,
    "storage": 2,
    "runs": 3,
    "config": 4,
    "engine": 5,
    "cluster": 6,
    "observers": 6,
    "control": 6,
    "report": 6,
    "web": 6,
    "cli": 7,
}
# What a package may not import although the layers would allow it.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "engine": ("storage.files", "storage.postgres", "storage.memory", "cluster", "observers"),
    "storage": ("runs",),
}
# pydantic schemas that share keys: field inheritance is how pydantic composes a schema (no
# behaviour lives in these classes).
SCHEMA_COMPOSITION = {"_Bound", "_TargetTable"}
# Left to compose: the cluster's reservation row extends the ledger's reservation with its
# row id and fencing token (a data record, no behaviour; listed so that none is added).
KNOWN_EXTENSIONS = {"ClusterReservation"}
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
SQL = re.compile(r"\b(SELECT\s+\S|UPDATE\s+\w+\s+SET|INSERT\s+INTO|DELETE\s+FROM)\b")


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def _package(module: str) -> str:
    head = module.split(".")[0]
    if head == "__main__":  # `python -m autoloop_daemon` is the command line
        return "cli"
    return head if head in LAYERS else ""


def _imports(tree: ast.AST, module: str) -> set[str]:
    """Every module of the package that `tree` imports (at any depth), dotted after the
    package's name."""
    found: set[str] = set()
    base = module.split(".")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[: len(base) - node.level]
                target = ".".join([*parent, node.module or ""]).strip(".")
            elif node.module and node.module.startswith("autoloop_daemon"):
                target = node.module.removeprefix("autoloop_daemon").lstrip(".")
            else:
                continue
            found.update(f"{target}.{a.name}".strip(".") for a in node.names)
            found.add(target)
        elif isinstance(node, ast.Import):
            found.update(
                a.name.removeprefix("autoloop_daemon").lstrip(".")
                for a in node.names
                if a.name.startswith("autoloop_daemon")
            )
    return {f for f in found if f}


def test_imports_run_down_the_layers_only() -> None:
    """No module imports a package of a higher layer, nor one its package's rule forbids."""
    problems = []
    for path in _modules():
        module = _name(path)
        own = _package(module)
        for imported in _imports(ast.parse(path.read_text()), module):
            other = _package(imported)
            if LAYERS[other] > LAYERS[own]:
                problems.append(f"{module} imports {imported} (layer {other} above {own})")
            for banned in FORBIDDEN.get(own, ()):
                if imported == banned or imported.startswith(banned + "."):
                    problems.append(f"{module} imports {imported} ({own}/ may not)")
    assert not problems, "\n".join(sorted(set(problems)))


def test_sql_text_lives_in_storage_postgres_only() -> None:
    """Everything above storage/postgres speaks the project's nouns."""
    outside = [
        f"{_name(p)}: {m.group(0)!r}"
        for p in _modules()
        if "storage/postgres" not in p.as_posix()
        for m in [SQL.search(p.read_text())]
        if m is not None
    ]
    assert not outside


def test_no_class_inherits_from_another_class_of_the_package() -> None:
    """Composition, not towers: a package class may subclass a Protocol or an ABC only (and
    the exceptions their base error)."""
    classes: dict[str, ast.ClassDef] = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = node
    towers = []
    for path in _modules():
        if path.name == "exceptions.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            for base in node.bases:
                base_name = base.id if isinstance(base, ast.Name) else None
                parent = classes.get(base_name or "")
                if parent is None or node.name in SCHEMA_COMPOSITION | KNOWN_EXTENSIONS:
                    continue
                parent_bases = {ast.unparse(b) for b in parent.bases}
                if not parent_bases & {"Protocol", "ABC", "typing.Protocol", "abc.ABC"}:
                    towers.append(f"{_name(path)}: {node.name}({base_name})")
    assert not towers


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_modules_and_functions_stay_small(path: Path) -> None:
    """A module past ~450 lines holds two ideas; a function past 60 lines, two steps."""
    text = path.read_text()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{_name(path)}: {text.count(chr(10))} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{_name(path)}: {', '.join(long)}"
