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


# what mvdeploy needs besides the formats' own packages (those come from the registry)
OTHER_COMPONENTS: tuple[Component, ...] = (
    Component("torch", "torch", "", "model, torch.export capture, eager reference"),
    Component("huggingface_hub", "huggingface_hub", "hub", "--weights org/name (Hub ids)"),
    Component("scikit-learn", "sklearn", "data", "the digits behind the trained fixture"),
)


def components() -> list[Component]:
    from mvdeploy.backends import packages

    out = {c.package: c for c in OTHER_COMPONENTS}
    for package, extra in packages():
        if package.distribution not in out:
            out[package.distribution] = Component(package.distribution, package.module, extra,
                                                  package.role)
    return list(out.values())


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
    from mvdeploy.backends import specs

    statuses = [check_component(c) for c in components()]
    ok = {c.package for c in statuses if c.importable}
    backends = []
    for spec in specs():
        export_needs = [p.distribution for p in spec.export_needs]
        run_any = [p.distribution for p in spec.run_needs]
        can_export = all(p in ok for p in export_needs)
        can_run = any(p in ok for p in run_any)
        notes = []
        missing = [p for p in export_needs if p not in ok] + ([] if can_run else run_any[:1])
        if missing and spec.extra:
            notes.append(f'pip install "mvdeploy[{spec.extra}]"')
        reason = spec.cannot_run_here()
        if reason:
            can_run = False
            checked = (f"numerically by {spec.reference_runtime}" if spec.reference_runtime
                       else "structurally")
            notes.append(f"{reason}; artifacts are checked {checked}")
        backends.append(BackendStatus(spec.name, can_export, can_run, "; ".join(notes)))
    return statuses, backends


def as_dict(components: list[ComponentStatus], backends: list[BackendStatus]) -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "components": [asdict(c) for c in components],
        "backends": [asdict(b) for b in backends],
    }
