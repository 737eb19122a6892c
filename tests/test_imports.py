"""The core's imports run one way (studies -> trainers -> models -> data), at module top, with no cycle."""

import ast
import subprocess
import sys
from pathlib import Path

from echodiff.config import repo_root

PACKAGE = repo_root() / "echodiff"


def _module_name(path: Path) -> str:
    parts = path.relative_to(repo_root()).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> tuple[set[str], list[str]]:
    """echodiff modules imported by ``path`` (``from echodiff.x import y`` counts y when it is a module), and the
    lines of imports of echodiff modules inside functions."""
    tree = ast.parse(path.read_text())
    found, hidden = set(), []
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        names = [n for n in names if n in modules]
        if names and id(node) not in top:
            hidden.append(f"{path.name}:{node.lineno}")
        found |= set(names)
    return found, hidden


def test_no_import_cycle_and_no_hidden_imports():
    graph, hidden = {}, []
    for path in PACKAGE.rglob("*.py"):
        graph[_module_name(path)], h = _imports(path)
        hidden += h
    assert not hidden, f"echodiff imports inside functions (move them to the top): {hidden}"
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt.startswith(node + "."):  # a package's __init__ re-exporting its modules
                continue
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join([*stack, node, nxt])
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert len(graph) > 20  # the walk saw the package


def test_the_ef_stage_does_not_load_imagen():
    code = "import sys, echodiff.ef_training; print('imagen_pytorch' in sys.modules, 'transformers' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "False"]



def test_only_tracking_imports_mlflow_and_without_it_the_core_still_imports(tmp_path):
    """MLflow is reached through echodiff.tracking alone; where it is missing (the lent GPU machine) every module
    imports, and the first MLflow call says what to install."""
    importers = [p.name for p in PACKAGE.rglob("*.py")
                 if any(isinstance(n, ast.Import | ast.ImportFrom) and "mlflow" in ast.unparse(n).split()[1]
                        for n in ast.walk(ast.parse(p.read_text())))]
    assert importers == ["tracking.py"], importers
    blocker = tmp_path / "mlflow"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('no MLflow here')\n")
    code = ("import echodiff.evaluation, echodiff.pipeline, echodiff.rebalance, echodiff.explore\n"
            "from echodiff import tracking\ntracking.setup('x')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1
    assert "ModuleNotFoundError: MLflow is needed here (no MLflow here)" in proc.stderr, proc.stderr[-2000:]
    assert "make install" in proc.stderr
