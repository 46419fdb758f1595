"""No module of the package imports another that imports it back, directly or around a circle.

Imports are read from the source (ast), including the ones inside functions: a function-level import only
postpones a circle to the first call, it does not remove it.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "tinykd"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports: `from tinykd.x import y` is tinykd.x.y when y is a module."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported(path, modules) - {module_name(path)} for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search, modules in sorted order)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for target in sorted(graph[node]):
            cycle = visit(target, path + [node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_the_checker_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "tinykd.keras_shim" in graph["tinykd.models"]  # imported only inside models.build
    assert "tinykd.config" in graph["tinykd.data"]


def test_no_module_imports_in_a_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_config_is_a_leaf():
    """The recipe's schema imports nothing of the package but errors and the board list."""
    assert import_graph()["tinykd.config"] <= {"tinykd.errors", "tinykd.boards"}


def test_the_names_config_checks_are_the_ones_the_stages_know():
    from tinykd import config, data, models

    assert set(data.READERS) == set(config.DATA_FORMATS)
    assert models.ARCHITECTURES is config.ARCHITECTURES and models.HEADS is config.HEADS
