"""The house's shape, enforced (docs/architecture.md draws it).

Who may import whom, by top-level package, checked on every module's imports (including
imports inside functions, and the dynamic ``import_module``):

    protocol          <- imports no role: the shared core
    party             -> protocol
    linkage_unit      -> protocol, and never the linkage secret, not even through protocol
    auditor           -> protocol
    bloomlink.attacks -> protocol (an attacker sees what an encoder produces, not a role)
    bloomlink.synth   -> protocol
    bloomlink         -> everything above (the CLI composes the roles)

No package imports ``tests`` or ``benchmarks``. Production code never relies on ``assert``
(``python -O`` strips it); checks raise from ``protocol/errors.py``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "party", "linkage_unit", "auditor", "bloomlink")
PROJECT = (*PACKAGES, "tests", "benchmarks", "proto")

# Importer (longest prefix wins) -> the project packages it may import, besides itself.
ALLOWED: dict[str, frozenset[str]] = {
    "protocol": frozenset(),
    "party": frozenset({"protocol"}),
    "linkage_unit": frozenset({"protocol"}),
    "auditor": frozenset({"protocol"}),
    "bloomlink.attacks": frozenset({"protocol"}),
    "bloomlink.synth": frozenset({"protocol"}),
    "bloomlink": frozenset({"protocol", "party", "linkage_unit", "auditor"}),
}

# Modules that hold or derive the linkage secret; the linkage unit must never reach them.
SECRET_MODULES = frozenset({"protocol.secret", "protocol.keys", "protocol.encoding"})

# The CLI loads its command modules by name; nothing else may import dynamically.
DYNAMIC_IMPORTS_ALLOWED = frozenset({"bloomlink.cli"})


@dataclass(frozen=True, slots=True)
class Import:
    module: str  # the imported module (for ``from a import b``: ``a`` and ``a.b``)
    line: int


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, *, module: str, is_package: bool = False) -> list[Import]:
    """Every import in ``source`` (a module named ``module``), relative ones resolved."""
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append(Import(base, node.lineno))
            found += [Import(f"{base}.{alias.name}", node.lineno) for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            found.append(Import("<dynamic import>", node.lineno))
    return found


def owner(module: str) -> str | None:
    """The ``ALLOWED`` key ``module`` falls under (longest prefix), or None if outside."""
    keys = [key for key in ALLOWED if module == key or module.startswith(key + ".")]
    return max(keys, key=len) if keys else None


def top(module: str) -> str:
    return module.split(".")[0]


def may_import(rule: str, target: str) -> bool:
    """Whether code under ``rule`` may import code under ``target`` (both ``ALLOWED`` keys,
    or a project folder outside them such as ``tests``)."""
    if target == rule:
        return True
    if rule == "bloomlink":  # the CLI composes every package, never tests or benchmarks
        return target in ALLOWED
    return target in ALLOWED[rule]


def violations(module: str, imports: Iterable[Import]) -> list[str]:
    """Broken import rules of ``module``, one line each (empty when it keeps them)."""
    rule = owner(module)
    if rule is None:
        return []
    problems = []
    for item in imports:
        if item.module == "<dynamic import>":
            if module not in DYNAMIC_IMPORTS_ALLOWED:
                problems.append(f"line {item.line}: dynamic import")
            continue
        if top(item.module) not in PROJECT:
            continue  # the standard library or a dependency
        target = owner(item.module) or top(item.module)
        if not may_import(rule, target):
            problems.append(f"line {item.line}: {rule} may not import {item.module}")
    return problems


def package_files(package: str) -> list[Path]:
    return sorted(path for path in (ROOT / package).rglob("*.py") if "pb" not in path.parts)


ALL_FILES = [path for package in PACKAGES for path in package_files(package)]


def _imports(path: Path) -> list[Import]:
    return imports_of(
        path.read_text(encoding="utf-8"),
        module=module_name(path),
        is_package=path.name == "__init__.py",
    )


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_module_imports_only_what_its_package_may(path: Path) -> None:
    problems = violations(module_name(path), _imports(path))
    assert not problems, f"{path.relative_to(ROOT)}: " + "; ".join(problems)


def _project_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in ALL_FILES}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {item.module for item in _imports(path) if item.module in modules}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph.get(todo.pop(), set()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_nothing_in_the_linkage_unit_reaches_the_secret_even_through_protocol() -> None:
    graph = _project_graph()
    reaching = {
        module: sorted(reachable(graph, module) & SECRET_MODULES)
        for module in graph
        if owner(module) == "linkage_unit"
    }
    assert reaching, "no linkage-unit module was found"
    assert not {module: found for module, found in reaching.items() if found}


def test_the_rules_catch_a_broken_direction() -> None:
    """The checker itself can fail: each of these imports breaks a rule."""
    cases = {
        "party.upload": "from linkage_unit.storage import Storage",
        "linkage_unit.newstage": "import party.client",
        "protocol.thing": "from bloomlink.cli import main",
        "auditor.verify": "from linkage_unit import audit_log",
        "bloomlink.attacks.new": "from linkage_unit.similarity import dice",
        "bloomlink.synth.new": "from bloomlink.attacks import views",
        "bloomlink.attacks.cli": "from bloomlink.cli import main",
        "bloomlink.commands.new": "from tests.service_helpers import KCV",
        "linkage_unit.relative": "from ..party import client",
        "party.loader": "import importlib\nimportlib.import_module('linkage_unit')",
    }
    for module, source in cases.items():
        assert violations(module, imports_of(source, module=module)), (module, source)
    assert not violations("party.ok", imports_of("from protocol import errors", module="party"))
    assert not violations(
        "bloomlink.commands.ok", imports_of("from party import client", module="bloomlink")
    )
    graph = {"linkage_unit.a": {"protocol.b"}, "protocol.b": {"protocol.secret"}}
    assert "protocol.secret" in reachable(graph, "linkage_unit.a")


def test_the_checks_see_files() -> None:
    # Guards against the parametrised checks passing vacuously on an empty glob.
    assert all(package_files(package) for package in PACKAGES)
    assert package_files("bloomlink/attacks") and package_files("bloomlink/synth")


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_production_code_relies_on_assert(path: Path) -> None:
    """``python -O`` strips asserts: a check that guards data (a column name in SQL, a state
    a step relies on) must raise from the error tree instead."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lines = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert)]
    assert not lines, f"{path} asserts at line(s) {lines}"


def test_the_assert_check_finds_an_assert() -> None:
    tree = ast.parse("def f(x):\n    assert x is not None\n    return x\n")
    assert [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert)] == [2]
