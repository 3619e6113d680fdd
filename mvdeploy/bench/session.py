"""A bench run from options: suite file and flags merged and checked, then measured and
written. `mvdeploy bench` and `mvdeploy.benchmark()` both come through here."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvdeploy.backends import runtime_aliases, runtimes
from mvdeploy.bench.aihub import AIHubOptions
from mvdeploy.bench.android import AndroidOptions
from mvdeploy.bench.locks import another_bench_running, bench_locks
from mvdeploy.bench.matrix import (
    ACCELERATORS,
    OPT_IN_RUNTIMES,
    QUICK,
    Matrix,
    Timing,
    build_matrix,
    load_suite,
    target_runtimes,
    with_timing,
)
from mvdeploy.errors import ConfigError


def opt_in_runtimes() -> set[str]:
    """Format runtimes a bench times only when asked for (Runtime.default false)."""
    return {r.name for s in runtimes().values() for r in s.runtimes if not r.default}


EAGER_ALIASES = {"pytorch": "torch", "eager": "torch", "compile": "torch-compile"}


def canonical_runtime(name: str) -> str:
    """What people type (onnx, ort, tflite, eager, ...) -> the runtime's name."""
    return {**EAGER_ALIASES, **runtime_aliases()}.get(name, name)


@dataclass
class Plan:
    matrix: Matrix
    timing: Timing
    out: Path
    cache: Path
    weights: str | None = None
    android: AndroidOptions = field(default_factory=AndroidOptions)
    command: str = "mvdeploy bench"
    aihub: AIHubOptions = field(default_factory=AIHubOptions)
    warnings: list[str] = field(default_factory=list)  # said before measuring


def plan(*, suite: str | None = None, models: Sequence[str] = (), patches: Sequence[str] = (),
         resolutions: Sequence[str] = (), runtimes: Sequence[str] = (),
         precisions: Sequence[str] = (), threads: Sequence[int] = (),
         batches: Sequence[int] = (), target: str | None = None,
         accelerators: Sequence[str] = (), peer: bool | None = None,
         weights: str | None = None, out: str | Path | None = None,
         cache: str | Path | None = None, quick: bool = False, force: bool = False,
         android: AndroidOptions | None = None, command: str = "mvdeploy bench",
         devices: Sequence[str] = (), validate_on_device: bool = False,
         **timing: Any) -> Plan:
    """Flags override the suite file, which overrides the defaults; everything is checked
    before anything is exported. `timing` takes warmup, min_runs, min_seconds, repetitions,
    timeout_s."""
    spec, suite_timing = load_suite(suite) if suite else ({}, Timing())
    base = QUICK if quick else suite_timing
    merged_timing = with_timing(base, **timing)
    target = target or spec.get("target", "cpu")
    if target not in ACCELERATORS:
        raise ConfigError(f"unknown target {target!r}: choose one of {', '.join(ACCELERATORS)}")
    # opt-in runtimes (torch.compile: ~45 s cold per worker) only run when asked for
    runtime_list = ([canonical_runtime(r) for r in runtimes] or spec.get("runtimes")
                    or [r for r in target_runtimes(target) if r not in OPT_IN_RUNTIMES
                        and r not in opt_in_runtimes()])
    matrix = build_matrix(
        models=list(models) or spec.get("models", ["mobilevit_xxs"]),
        patches=list(patches) or spec.get("patches", ["A", "B"]),
        resolutions=list(resolutions) or spec.get("resolutions", ["256"]),
        runtimes=runtime_list,
        precisions=list(precisions) or spec.get("precisions", ["fp32"]),
        threads=list(threads) or spec.get("threads", [min(os.cpu_count() or 1, 4)]),
        batches=list(batches) or spec.get("batches", [1]),
        target=target, accelerators=list(accelerators) or spec.get("accelerators", []),
        peer=peer if peer is not None else spec.get("peer", False),
        devices=list(devices) or spec.get("devices", []))
    if validate_on_device and target != "aihub":
        raise ConfigError("--validate-on-device runs the photos on AI Hub's devices: it needs "
                          "--target aihub")
    if weights is not None:  # a bad checkpoint is one line now, not a matrix of failed rows
        from mvdeploy.models.weights import load_pretrained

        load_pretrained(weights)
    if out is not None and not str(out).strip():
        raise ConfigError("--out is empty: give a folder for the results")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    too_many = sorted({c.threads for c in matrix.configs if usable and c.threads > usable})
    warnings = [f"--threads {', '.join(map(str, too_many))} above the {usable} CPUs this process "
                "may use: those runs oversubscribe and time the scheduler, not the model"
                ] if too_many else []
    out_dir = Path(out or "bench_out").expanduser()
    if (out_dir / "results.json").exists() and not force:
        raise ConfigError(f"{out_dir / 'results.json'} already exists: pass --force to replace "
                          "it, or choose another --out")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file: choose a directory")
    busy = another_bench_running()
    if busy:
        warnings.append(busy)
    cache_dir = Path(cache or os.environ.get("MVDEPLOY_CACHE")
                     or Path.home() / ".cache" / "mvdeploy" / "bench").expanduser()
    hub_devices = tuple(dict.fromkeys(c.hub_device for c in matrix.configs if c.hub_device))
    return Plan(matrix, merged_timing, out_dir, cache_dir, weights,
                android or AndroidOptions(), command, warnings=warnings,
                aihub=AIHubOptions(hub_devices, validate_on_device))


@dataclass
class Outcome:
    report: dict
    written: list[Path]
    interrupted: bool


def run(plan: Plan, *, log: Callable[[str], None] = lambda text: None,
        progress: Callable[[int, int, str], None] = lambda done, total, text: None) -> Outcome:
    """Measure every configuration, then write results.json/.csv/.md and plots to plan.out."""
    from mvdeploy.bench import report as reports
    from mvdeploy.bench.runner import run_matrix

    hub = None
    if plan.aihub.devices:  # token, network and device names are checked before any export
        from mvdeploy.bench.aihub import connect

        hub = connect(plan.aihub)
    with bench_locks(plan.out):  # one bench per --out; later benches hear of this one
        measured = run_matrix(plan.matrix, plan.timing, cache=plan.cache, weights=plan.weights,
                              android_opts=plan.android, hub=hub,
                              validate_on_device=plan.aihub.validate_on_device, log=log,
                              progress=progress)
        data = reports.build_report(measured, timing=plan.timing, command=plan.command)
        return Outcome(data, reports.write_all(data, plan.out), measured.interrupted)
