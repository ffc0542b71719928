"""rlkit's own modules import each other without cycles, function-level and type-only imports included.

Package ``__init__`` files are left out as nodes: ``from rlkit.objectives import X`` counts as an
import of the module that defines ``X`` (followed through the package's re-exports).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "rlkit"


def module_files() -> dict[str, Path]:
    files = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def import_graph() -> dict[str, set[str]]:
    files = module_files()

    def absolute(module: str, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = module.split(".") if files[module].name == "__init__.py" else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        return ".".join(base + ([node.module] if node.module else []))

    reexports = {}  # (package, name) -> the module the package's __init__ takes it from
    for module, path in files.items():
        if path.name == "__init__.py":
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.ImportFrom):
                    for alias in node.names:
                        reexports[(module, alias.asname or alias.name)] = absolute(module, node)

    def resolve(module: str, name: str) -> str:
        if f"{module}.{name}" in files:
            return f"{module}.{name}"
        while (module, name) in reexports:
            module = reexports[(module, name)]
        return module

    graph = {}
    for module, path in files.items():
        if path.name == "__init__.py":
            continue
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                source = absolute(module, node)
                targets |= {resolve(source, alias.name) for alias in node.names}
        graph[module] = {t for t in targets if t in files and files[t].name != "__init__.py" and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "rlkit.config" in graph["rlkit.validation"]  # module level
    assert "rlkit.plugins" in graph["rlkit.objectives.base"]  # inside a function
    assert "rlkit.objectives.base" in graph["rlkit.objectives.grpo_family"] or \
        "rlkit.objectives.grpo" in graph["rlkit.objectives.grpo_family"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_rlkit_has_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_pipeline_trainer_and_learner_name_no_objective():
    """Objectives reach the run only through their hooks: no module outside rlkit/objectives/ knows one."""
    import re

    names = re.compile(r"rehearsal|tempered|dph|aepo|bapo|gbpo|trloo", re.IGNORECASE)
    places = [ROOT / "trainer.py", *(ROOT / "rollout").rglob("*.py"), *(ROOT / "learner").rglob("*.py"),
              *(ROOT / "driver").rglob("*.py")]
    found = [f"{path.relative_to(ROOT.parent)}:{number}: {line.strip()}" for path in places
             for number, line in enumerate(path.read_text().splitlines(), 1) if names.search(line)]
    assert not found, "\n".join(found)


def test_every_package_is_listed_for_installation():
    """A package missing from pyproject's list works in an editable install and is absent from a wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {".".join(path.parent.relative_to(ROOT.parent).parts) for path in ROOT.rglob("__init__.py")}
    assert packages - listed == set()
