"""What is installed: which converters and runtimes import, their versions, and what to install.

Each package is really imported (not just looked up), because an installed package can still
fail to import: tflite-runtime 2.14, for one, breaks under NumPy 2.
"""

from __future__ import annotations

import importlib
import platform
from dataclasses import asdict, dataclass
from importlib import metadata

from mvdeploy.native_output import redirect_native_output


@dataclass(frozen=True)
class Component:
    package: str  # distribution name (pip install NAME, metadata lookup)
    module: str  # what to import
    extra: str  # mvdeploy extra that installs it ("" = core dependency)
    role: str


COMPONENTS: tuple[Component, ...] = (
    Component("torch", "torch", "", "model, torch.export capture, eager reference"),
    Component("onnx", "onnx", "onnx", "ONNX model format"),
    Component("onnxscript", "onnxscript", "onnx", "torch.onnx dynamo exporter"),
    Component("onnxruntime", "onnxruntime", "onnx", "ONNX Runtime"),
    Component("litert-torch", "litert_torch", "tflite", "PyTorch -> TFLite converter"),
    Component("ai-edge-litert", "ai_edge_litert.interpreter", "tflite", "LiteRT (TFLite) runtime"),
    Component("tflite-runtime", "tflite_runtime.interpreter", "tflite",
              "legacy TFLite runtime (fallback only)"),
    Component("coremltools", "coremltools", "coreml", "Core ML converter"),
    Component("scikit-learn", "sklearn", "coreml", "k-means palettisation for Core ML; the "
              "digits behind the trained fixture (extra: data)"),
    Component("huggingface_hub", "huggingface_hub", "hub", "--weights org/name (Hub ids)"),
)

# backend -> (packages needed to export, alternatives of which one is needed to run)
BACKENDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "torch": (("torch",), ("torch",)),
    "onnx": (("torch", "onnx", "onnxscript"), ("onnxruntime",)),
    "tflite": (("litert-torch",), ("ai-edge-litert", "tflite-runtime")),
    "coreml": (("coremltools",), ("coremltools",)),
}


@dataclass(frozen=True)
class ComponentStatus:
    package: str
    extra: str
    role: str
    importable: bool
    version: str | None
    error: str | None


@dataclass(frozen=True)
class BackendStatus:
    name: str
    can_export: bool
    can_run: bool
    note: str


def check_component(component: Component) -> ComponentStatus:
    try:
        version: str | None = metadata.version(component.package)
    except metadata.PackageNotFoundError:
        version = None
    error = None
    if version is None:
        error = "not installed"
    else:
        try:
            with redirect_native_output():  # converters print load warnings at import
                importlib.import_module(component.module)
        except Exception as exc:  # any import failure is what doctor must report
            text = str(exc).strip().splitlines()
            error = f"{type(exc).__name__}: {text[0] if text else ''}"[:160]
    return ComponentStatus(component.package, component.extra, component.role,
                           error is None, version, error)


def diagnose() -> tuple[list[ComponentStatus], list[BackendStatus]]:
    components = [check_component(c) for c in COMPONENTS]
    ok = {c.package for c in components if c.importable}
    extra_of = {c.package: c.extra for c in COMPONENTS}
    backends = []
    for name, (export_needs, run_any) in BACKENDS.items():
        can_export = all(p in ok for p in export_needs)
        can_run = any(p in ok for p in run_any)
        notes = []
        missing = [p for p in export_needs if p not in ok]
        if not can_run:
            missing += [run_any[0]]
        extras = sorted({extra_of[p] for p in missing if extra_of[p]})
        if extras:
            notes.append(f'pip install "mvdeploy[{",".join(extras)}]"')
        if name == "coreml" and platform.system() != "Darwin":
            can_run = False
            notes.append("predictions need macOS; on Linux artifacts are checked structurally")
        backends.append(BackendStatus(name, can_export, can_run, "; ".join(notes)))
    return components, backends


def as_dict(components: list[ComponentStatus], backends: list[BackendStatus]) -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "components": [asdict(c) for c in components],
        "backends": [asdict(b) for b in backends],
    }
