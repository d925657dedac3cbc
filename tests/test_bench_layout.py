"""bench/ and experiments/ run as modules from the repository root: no `sys.path.insert` of the
repository, and no import circle between their modules. Parsed with ast, nothing imported."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "experiments")


def modules() -> dict[str, ast.Module]:
    return {f"{package}.{path.stem}": ast.parse(path.read_text(), str(path))
            for package in PACKAGES for path in sorted((REPO / package).glob("*.py"))
            if path.stem != "__init__"}


def imports(tree: ast.Module, known: set[str]) -> set[str]:
    """The bench/experiments modules `tree` imports, at any depth (lazy imports count too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def test_no_sys_path_insert_except_trl():
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("insert", "append")
                    and ast.unparse(node.func.value) == "sys.path"):
                assert name == "bench.common" and "TRL_PATH" in ast.unparse(node), (
                    f"{name}: {ast.unparse(node)} (run as `python -m {name}` instead)")


def test_no_import_cycle():
    trees = modules()
    graph = {name: imports(tree, set(trees)) for name, tree in trees.items()}
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            assert state.get(target) != "open", "import cycle: " + " → ".join(
                [*path[path.index(target):], target] if target in path else [*path, target])
            if target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_results_split():
    """Performance results in bench/results, the studies' in experiments/results."""
    assert not (REPO / "bench" / "results" / "gamma_study").exists()
    assert not (REPO / "bench" / "results" / "quickstart").exists()
    assert (REPO / "experiments" / "results" / "gamma_study").is_dir()
