"""The shape of the package, checked: stages stay stages and orchestrators stay thin.

Every feature of the last rounds went into the two orchestrators until nothing stopped it; these
checks stop it. They read the source (no import runs), so a failure names the file and line.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hf_idsel"
MAX_LINES = 800


def _modules() -> dict[str, Path]:
    """`hf_idsel.x` -> path, for every module of the package (the package itself is `hf_idsel`)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path):
    """`(line, imported module, imported names)` of every import in a module, function-level ones included,
    with relative imports resolved. `from . import x` imports the submodule `x` when there is one."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [alias.name for alias in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            for module in submodules:
                yield node.lineno, module, []
            rest = [n for n in names if f"{target}.{n}" not in MODULES]
            if rest or not submodules:
                yield node.lineno, target, rest


def _graph() -> dict[str, dict[str, int]]:
    """Module -> {module it imports inside the package: first line}."""
    graph = {}
    for name, path in MODULES.items():
        edges = {}
        for line, target, _ in _imports(name, path):
            while target and target not in MODULES:  # `hf_idsel.x.y` where y is a name in x
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("hf_idsel"):
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _module_aliases(name: str, path: Path) -> dict[str, str]:
    """Local names bound to another module of the package (`from . import pool as builtin`, `import hf_idsel.x as y`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES and alias.asname:
                    aliases[alias.asname] = alias.name
    return {local: module for local, module in aliases.items() if module != name}


def test_no_module_uses_a_private_name_of_another():
    """Neither imported (`from .pool import _rows`) nor read through the module (`pool._rows`)."""
    found = []
    for name, path in MODULES.items():
        for line, target, names in _imports(name, path):
            if not target.startswith("hf_idsel") or target == name:
                continue
            found += [f"{path.relative_to(ROOT)}:{line} imports {target}.{n}" for n in names if _private(n)]
        aliases = _module_aliases(name, path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                if _private(node.attr):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} reads {aliases[node.value.id]}.{node.attr}")
    assert not found, "Private names used across modules (make them public where they belong):\n" + "\n".join(found)


def test_the_package_has_no_import_cycle_not_even_through_function_level_imports():
    graph = _graph()
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt) :] + [nxt]
                cycles.append(" -> ".join(f"{a} ({MODULES[a].relative_to(ROOT)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "Import cycles (each step: importer (file:line)):\n" + "\n".join(cycles)


def test_the_trainer_never_imports_the_static_front_door():
    """The trainer calls the stages (pipeline, sample, rounds), not `diverse_select`'s module."""
    assert "hf_idsel.select" not in _graph()["hf_idsel.trainer"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_800_lines(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines: split it by the stage it owns."


BENCH = sorted((ROOT / "bench").glob("*.py"))
SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


def test_bench_and_scripts_import_only_public_names_that_exist():
    """Every `from hf_idsel.x import y` in bench/ and scripts/, function-level ones included (a whole-file import
    check never runs those), names a public name that the module has."""
    import importlib

    found = []
    for path in BENCH + SCRIPTS:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.level or not (node.module or "").startswith("hf_idsel"):
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                where = f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.{alias.name}"
                if _private(alias.name):
                    found.append(where + " (a private name)")
                elif not hasattr(module, alias.name) and f"{node.module}.{alias.name}" not in MODULES:
                    found.append(where + " (no such name)")
    assert not found, "\n".join(found)


def test_every_bench_script_still_imports():
    """bench/ imports the library's names; a rename that breaks one must fail here, not months later."""
    code = (
        "import importlib.util, sys\n"
        "for path in sys.argv[1:]:\n"
        "    spec = importlib.util.spec_from_file_location('bench_' + path.rsplit('/', 1)[-1][:-3], path)\n"
        "    module = importlib.util.module_from_spec(spec)\n"
        "    sys.modules[spec.name] = module\n"
        "    spec.loader.exec_module(module)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")])}
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, BENCH)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert BENCH and importlib.util.find_spec("hf_idsel") is not None
