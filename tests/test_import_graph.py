"""The four packages' import graph: no cycles, arrows one way, short files.

Built from the source with `ast`, counting module-level AND function-level
imports (a lazy import inside a function is still a dependency), but not
`if TYPE_CHECKING:` blocks, which never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("spaces", "objectives", "search", "runs")
MAX_LINES = 400


def source_modules() -> dict[str, Path]:
    """'longrope.search.cli.bench.quality' -> its file, for every .py of the four folders."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(["longrope", *parts])] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Import nodes anywhere in the tree, skipping `if TYPE_CHECKING:` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    modules = source_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rsplit(".", 1)[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # `from pkg import sub` imports the submodule pkg.sub when there is one
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (iterative DFS, three colours)."""
    colour = dict.fromkeys(graph, 0)
    for start in sorted(graph):
        if colour[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return path[path.index(child):] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_function_level_and_relative_imports():
    g = import_graph()
    assert "longrope.search.cli.run" in g["longrope.search.cli"]  # relative, module level
    assert "longrope.search.driver" in g["longrope.search.cli.bench.quality"]  # inside a function


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def _top(module: str) -> str:
    return module.split(".")[1]


# who may import whom: search -> objectives -> spaces, search -> runs -> spaces
ALLOWED = {"spaces": {"spaces"}, "objectives": {"objectives", "spaces"}, "runs": {"runs", "spaces"},
           "search": {"search", "objectives", "runs", "spaces"}}


@pytest.mark.parametrize("pkg", PACKAGES)
def test_imports_go_one_way(pkg):
    bad = [(a, b) for a, deps in import_graph().items() if _top(a) == pkg for b in deps
           if _top(b) not in ALLOWED[pkg]]
    assert not bad, bad


def test_nothing_below_the_command_layer_imports_it():
    # `python -m longrope.search` starts it; search/results holds the scripts of recorded runs, which
    # drive the tool from above as a user would (the bench's functions on a GPU, one-off measurements)
    above = ("longrope.search.cli", "longrope.search.__main__", "longrope.search.results")
    bad = [(a, b) for a, deps in import_graph().items() if not a.startswith(above)
           for b in deps if b.startswith("longrope.search.cli")]
    assert not bad, bad


def test_runtime_never_imports_the_build_tools():
    tools = "longrope.objectives.builtin"
    bad = [(a, b) for a, deps in import_graph().items() if not a.startswith(tools)
           for b in deps if b.startswith(tools)]
    assert not bad, bad


def test_no_source_file_over_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in source_modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_importing_the_package_leaves_optuna_log_level_alone():
    import subprocess
    import sys

    code = ("import optuna; level = optuna.logging.get_verbosity(); "
            "import longrope.search.driver, longrope.search.cli, longrope.runs, longrope.objectives.pruning; "
            "assert optuna.logging.get_verbosity() == level, optuna.logging.get_verbosity()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_python_entry_point_is_light_and_complete():
    """`from longrope.search import run_search, ...` works, and importing the package alone
    loads neither torch nor Ray (the names load on first use)."""
    import subprocess
    import sys

    code = ("import sys, longrope.search as s; "
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'heavy import'; "
            "from longrope.search import RescaleFactors, RunConfig, UserError, apply_factors, load_config, "
            "run_search; "
            "from longrope.search.driver import run_search as r; from longrope.search.config import load; "
            "assert run_search is r and load_config is load and callable(apply_factors); "
            "assert sorted(s.__all__) == ['RescaleFactors', 'RunConfig', 'UserError', 'apply_factors', "
            "'load_config', 'run_search']; "
            "import pytest; pytest.raises(AttributeError, getattr, s, 'nope')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
