"""Structure rules of the source tree: no import cycle among the project's modules, and no
source file over 600 lines."""

from __future__ import annotations

from typing import Dict, List, Set

from source_tree import ROOT, imported_modules, project_modules, python_files

MAX_LINES = 600
SOURCE_FOLDERS = ("core", "da3_plugins", "nerfstudio_method", "blender_addon", "scripts", "benchmarks", "tests")


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


# ----------------------------------------------------------------------------- layers
# docs/architecture.md: each layer imports only the layers below it.

PURE_PYTHON = ("errors", "options", "model_source")
"""Standard library only: the Blender extension vendors them."""
NUMPY_ONLY = ("conventions", "points", "quaternions", "seeds", "reconstruction", "scene_io", "metric_scale")
"""numpy and the modules above only: the Blender extension vendors them too."""
HOST_TOOLS = ("bpy", "mathutils", "open3d", "nerfstudio", "gsplat", "tyro")


def _top_level_imports(path) -> Set[str]:
    """First component of every absolute import in a file (inside functions too)."""
    import ast

    names: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_no_host_tool_and_nothing_above_it():
    graph = import_graph()
    modules = project_modules()
    for name, path in modules.items():
        if not name.startswith("da3_plugins.core"):
            continue
        above = {m for m in graph[name] if not m.startswith("da3_plugins.core")}
        assert not above, f"{name} imports {sorted(above)}: core may not import the front ends or adapters"
        host = _top_level_imports(path) & set(HOST_TOOLS)
        assert not host, f"{name} imports host tools {sorted(host)}"


def test_vendored_modules_stay_pure_python_or_numpy_only():
    import sys

    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    graph = import_graph()
    modules = project_modules()
    for short in PURE_PYTHON + NUMPY_ONLY:
        name = f"da3_plugins.core.{short}"
        allowed_project = {f"da3_plugins.core.{m}" for m in PURE_PYTHON}
        allowed_external = set(stdlib)
        if short in NUMPY_ONLY:
            allowed_project |= {f"da3_plugins.core.{m}" for m in NUMPY_ONLY}
            allowed_external.add("numpy")
        project = graph[name] - allowed_project - {"da3_plugins.core"}
        assert not project, f"{name} imports {sorted(project)}, above its layer"
        external = _top_level_imports(modules[name]) - allowed_external - {"da3_plugins"} - set(PURE_PYTHON + NUMPY_ONLY)
        assert not external, f"{name} imports {sorted(external)}; it must stay {'numpy-only' if short in NUMPY_ONLY else 'pure Python'}"
