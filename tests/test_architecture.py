"""Structure rules of the source tree: no import cycle among the project's modules, and no
source file over 600 lines."""

from __future__ import annotations

from typing import Dict, List, Set

from source_tree import ROOT, imported_modules, project_modules, python_files

MAX_LINES = 600
SOURCE_FOLDERS = ("core", "da3_plugins", "nerfstudio_method", "blender_addon", "scripts", "benchmarks")


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the project modules it imports (anywhere in its code)."""
    modules = project_modules()
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle (``[a, b, ..., a]``) through each strongly connected component of more than
    one module (Tarjan's algorithm, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[Set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.add(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    components.append(comp)
    return [_cycle_in(graph, comp) for comp in components]


def _cycle_in(graph: Dict[str, Set[str]], comp: Set[str]) -> List[str]:
    """A shortest cycle through the component's first module (breadth-first search)."""
    start = min(comp)
    parent: Dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & comp):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle in the component {sorted(comp)}")


def test_the_cycle_finder_reports_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_sees_relative_and_function_level_imports():
    graph = import_graph()
    # relative imports resolved, the package's own modules by their full names
    assert "da3_plugins.core.training.config" in graph["da3_plugins.core.training.loop"]
    assert "da3_plugins.core.losses" in graph["da3_plugins.core.training.step"]
    # an import inside a function: the folder data source reads the datasets module lazily
    assert "da3_plugins.core.datasets" in graph["da3_plugins.core.training.data"]


def test_no_import_cycle_among_the_project_modules():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_source_file_is_over_600_lines():
    long = {}
    for folder in SOURCE_FOLDERS:
        for path in python_files(ROOT / folder):
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES:
                long[str(path.relative_to(ROOT))] = lines
    assert not long, f"files over {MAX_LINES} lines (split them by concern): {long}"
