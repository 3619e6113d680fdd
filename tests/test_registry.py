"""One home per format: everything about a format is in its module; the rest asks the registry.

Proven two ways: no other module names a format (string literals, suffixes, runtime names,
imports of a backend module), and a new format added by one registry line goes through config,
CLI, export, validation, manifest, inspect and doctor with no other change.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mvdeploy import backends
from mvdeploy.cli import run
from mvdeploy.errors import ConfigError
from tests.helpers import needs

PACKAGE = Path(backends.__file__).parents[1]


def _names() -> set[str]:
    """Every string that identifies a format: its name, suffix and runtime names. PyTorch's
    .pt2 is left out: "torch" is also the core library everything imports."""
    out = set()
    for spec in backends.specs():
        if spec.name == "torch":
            continue
        out |= {spec.name, spec.suffix} | {r.name for r in spec.runtimes}
        out |= {alias for r in spec.runtimes for alias in r.aliases}
    return out


def _literals(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that are not docstrings."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_no_module_outside_a_backend_names_a_format():
    names = _names()
    # a format's module and its helpers (backends/tflite_metadata.py belongs to tflite)
    own = {Path(backends.__file__)} | {
        path for name in backends.FORMATS
        for path in [PACKAGE / "backends" / f"{name}.py",
                     *(PACKAGE / "backends").glob(f"{name}_*.py")]}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in own:
            continue
        tree = ast.parse(path.read_text())
        rel = path.relative_to(PACKAGE.parent)
        # a name, a suffix, a runtime, or a key of a format's own table ("onnx.opset")
        found += [f"{rel}:{line}: {text!r}" for line, text in _literals(tree)
                  if text in names or (text.split(".")[0] in names and "." in text
                  and " " not in text)]
        for node in ast.walk(tree):
            module = (node.module if isinstance(node, ast.ImportFrom) else None) or ""
            imported = [a.name for a in node.names] if isinstance(node, ast.Import) else [module]
            # the contract's shared modules (capture, pt2e, timing, ...) are not formats
            found += [f"{rel}:{node.lineno}: imports {m}" for m in imported
                      if m.startswith("mvdeploy.backends.")
                      and m.split(".")[2].split("_")[0] in backends.FORMATS]
    assert found == []


def test_every_format_declares_a_complete_spec():
    for spec in backends.specs():
        module = backends.get_backend(spec.name)
        assert spec.suffix.startswith(".") and spec.recipes and "fp32" in spec.recipes
        for name in ("convert", "load", "describe", "check_installed"):
            assert callable(getattr(module, name)), f"{spec.name} lacks {name}"
        if spec.metadata:
            assert callable(module.embed_metadata)
        if spec.snippet_language:
            assert callable(module.snippet)
        if spec.peer:
            assert callable(module.plain_export)
        for recipe in spec.recipes.values():
            assert recipe.tolerance in ("fp32", "fp16", "quantized")
            assert (recipe.shows is None) == (recipe.evidence == "")


def test_runtime_side_imports_no_torch(tmp_path):
    """Loading the registry, every spec and the bench worker never imports torch."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from mvdeploy.backends import specs, runtimes\n"
            "import mvdeploy.bench.worker, mvdeploy.readback.snippets, mvdeploy.readback.inspect\n"
            "print(len(specs()), sorted(runtimes()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_new_format_is_one_registry_line(with_fake_format, tmp_path, capfd):
    from mvdeploy.bench.matrix import runtime_formats, target_runtimes
    from mvdeploy.pipeline.config import load_config
    from mvdeploy.readback.doctor import diagnose

    cfg = load_config(overrides={"export.formats": ["fake"], "fake.note": "hello"})
    assert cfg.fake.note == "hello" and cfg.precision("fake") == "fp32"
    assert "fake" not in load_config().export.formats  # default=False: opt-in
    with pytest.raises(ConfigError, match=r"fake\.note must not be 'bad'"):
        load_config(overrides={"export.formats": ["fake"], "fake.note": "bad"})
    assert runtime_formats()["fakert"] == "fake" and "fakert" in target_runtimes("cpu")
    assert "fake" in [b.name for b in diagnose()[1]]
    # the whole pipeline: export, validate against PyTorch, manifest, inspect
    out = tmp_path / "out"
    cfg = load_config(overrides={"export.formats": ["fake"], "model.resolution": "64",
                                 "export.out": str(out), "export.save_program": False,
                                 "fake.note": "hello"})
    from mvdeploy.pipeline.exporter import run_export

    (result,) = run_export(cfg).formats
    assert result.ok and result.artifact.suffix == ".fake"
    manifest = json.loads(result.manifest.read_text())
    assert manifest["artifact"]["note"] == "hello" and manifest["validated"]
    assert manifest["validation"]["metrics"]["photos"]["max_rel"] <= 1e-4
    assert run(["inspect", str(result.artifact), "--json"]) == 0
    assert json.loads(capfd.readouterr().out)["format"] == "fake"


def test_format_choices_and_flags_come_from_the_registry(with_fake_format, capfd):
    from mvdeploy.pipeline.config import load_config

    with pytest.raises(ConfigError, match="choose from onnx, tflite, coreml, executorch, fake"):
        load_config(overrides={"export.formats": ["nope"]})
    # the CLI's help is built at import: check it lists the real registry's formats and flags
    assert run(["export", "--help"]) == 0
    text = " ".join(capfd.readouterr().out.split())
    for spec in backends.specs():
        if spec.name != "fake" and spec.selectable:
            assert spec.name in text
        for flag in spec.flags if spec.name != "fake" else ():
            assert flag.decls[0] in text


@pytest.mark.slow  # fast-suite time (3 minutes on 2 cores): CI's full run keeps it
@needs("coreml")
def test_a_recipe_needing_another_extra_fails_before_any_work(tmp_path):
    """Core ML w8a8 quantises with litert-torch (PT2E): with only the coreml extra, the export
    stops up front with one line naming the package and extra, and writes nothing."""
    code = ("import sys; sys.modules['litert_torch'] = None\n"
            "from mvdeploy.cli import run\n"
            f"sys.exit(run(['export', '-f', 'coreml', '--precision', 'w8a8', '--coreml-target',"
            f" 'iOS17', '-r', '64', '-o', {str(tmp_path / 'out')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    said = [line for line in (done.stdout + done.stderr).splitlines() if "litert-torch" in line]
    assert said and 'pip install "mvdeploy[tflite]"' in said[0] and "Core ML w8a8" in said[0]
    assert not any((tmp_path / "out").glob("*.mlpackage"))
    assert "Traceback" not in done.stderr
