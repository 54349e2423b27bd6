"""No import cycles in `src/e2llm`, between modules or between packages.

The graph is read from the source (every `import` statement, those inside functions too: a lazy
import that closes a loop is still a loop), so a cycle fails here before it fails at run time.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Set
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the modules of this tree it imports (`from pkg import mod` counts as `pkg.mod`)."""
    paths = {_module_name(p, src): p for p in sorted((src / "e2llm").rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in paths)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    target = full if full in paths else base
                    if target in paths and target != name:
                        graph[name].add(target)
    return graph


def find_cycle(graph: Mapping[str, Set[str]]) -> list[str] | None:
    """One cycle as a path `[a, b, ..., a]`, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def package_graph(graph: Mapping[str, Set[str]]) -> dict[str, set[str]]:
    """`e2llm.<package>` -> the packages it imports (top-level modules count as packages)."""
    top = {m: ".".join(m.split(".")[:2]) for m in graph}
    out: dict[str, set[str]] = {p: set() for p in top.values()}
    for m, targets in graph.items():
        out[top[m]].update(top[t] for t in targets if top[t] != top[m])
    return out


def test_the_graph_is_read_from_the_source() -> None:
    graph = import_graph()
    assert "e2llm.plan.systems" in graph["e2llm.cli.plan_cmd"]
    assert "e2llm.plan.baselines" in graph["e2llm.plan.systems"]
    assert "e2llm.specs.workload_file" in graph["e2llm.cli.serve_cmd"]  # imported inside a function


def test_no_module_imports_itself_back() -> None:
    assert find_cycle(import_graph()) is None


def test_no_package_imports_itself_back() -> None:
    assert find_cycle(package_graph(import_graph())) is None


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"b"}}, ["b", "b"]),
        ({"x": set(), "a": {"x", "b"}, "b": {"x", "a"}}, ["a", "b", "a"]),
    ],
)
def test_find_cycle(graph: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle


def test_a_lazy_import_closing_a_loop_is_found(tmp_path: Path) -> None:
    pkg = tmp_path / "e2llm" / "p"
    pkg.mkdir(parents=True)
    (tmp_path / "e2llm" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "registry.py").write_text("def load():\n    from e2llm.p import planner  # noqa\n")
    (pkg / "planner.py").write_text("from e2llm.p.registry import load\n")
    cycle = find_cycle(import_graph(tmp_path))
    assert cycle is not None and set(cycle) == {"e2llm.p.registry", "e2llm.p.planner"}
