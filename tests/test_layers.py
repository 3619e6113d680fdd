"""The layers of docs/architecture.md hold: imports run only downward and never in a circle.

The graph is built from the source (every import statement, also inside functions and under
TYPE_CHECKING), so a lazy import that runs back up fails here just like a top-level one.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mvdeploy"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """mvdeploy module -> the mvdeploy modules it imports (submodule imports resolved)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def documented_layers() -> list[tuple[str, list[str]]]:
    """(layer, module patterns) rows of the table under the layers marker, lowest first."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("<!-- layers: read by tests/test_layers.py -->", 1)[1]
    rows = []
    for line in table.strip().splitlines()[2:]:
        if not line.startswith("|"):
            break
        layer, modules = (cell.strip() for cell in line.strip("|").split("|")[:2])
        rows.append((layer, re.findall(r"`([^`]+)`", modules)))
    return rows


def layer_of(module: str, rows: list[tuple[str, list[str]]]) -> int:
    rest = module.removeprefix("mvdeploy").lstrip(".") or "__init__"
    for index, (_, patterns) in enumerate(rows):
        for pattern in patterns:
            if pattern.endswith("/") and (rest + ".").startswith(pattern[:-1] + "."):
                return index
            if rest == pattern or rest.startswith(pattern + "."):
                return index
    raise AssertionError(f"{module} is in no layer of docs/architecture.md: add it to the table")


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    assert circles(import_graph()) == []


def test_circles_are_found():
    """The check itself can fail: a two-module loop is reported."""
    assert circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_imports_run_only_down_the_documented_layers():
    rows = documented_layers()
    assert [layer for layer, _ in rows][:3] == ["base", "models", "tasks"]
    graph = import_graph()
    upward = [f"{m} ({rows[layer_of(m, rows)][0]}) imports {t} ({rows[layer_of(t, rows)][0]})"
              for m in sorted(graph) for t in sorted(graph[m])
              if layer_of(t, rows) > layer_of(m, rows)]
    assert upward == []


def test_every_module_has_a_layer():
    rows = documented_layers()
    for module in import_graph():
        layer_of(module, rows)


def test_the_command_line_imports_no_torch_converter_or_runtime():
    heavy = ["torch", "onnx", "onnxruntime", "coremltools", "litert_torch", "ai_edge_litert",
             "executorch", "transformers", "timm"]
    code = ("import sys, mvdeploy.cli\n"
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""


def test_help_imports_no_torch():
    code = ("import sys\nfrom mvdeploy.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "try:\n    app(['export', '--help'])\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write(str('torch' in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT)
    assert "Usage: " in done.stdout and done.stderr.strip().endswith("False"), done.stderr


def test_models_command_imports_no_torch_and_reads_the_shipped_counts():
    """`mvdeploy models` at its defaults reads counts.json (checked against the network in
    tests/test_models.py); another resolution still counts on the network itself."""
    code = ("import sys\nfrom mvdeploy.cli import run\n"
            "assert run(['models', '--json']) == 0\n"
            "sys.stderr.write(str('torch' in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT)
    rows = json.loads(done.stdout)
    assert done.stderr.strip().endswith("False"), done.stderr
    assert {(r["model"], r["patch"].split()[0]) for r in rows} == {
        (m, p) for m in ("mobilevit_xxs", "mobilevit_xs", "mobilevit_s",
                         *(f"mobilevitv2_{w}" for w in ("050", "075", "100", "125", "150",
                                                        "175", "200"))) for p in "AB"}
    assert rows[0]["params"] == 1_272_024 and rows[0]["gmacs"] == 0.4074

