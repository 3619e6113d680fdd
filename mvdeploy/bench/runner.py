"""The schedule: prepare artifacts, measure the machine's peak, then time every configuration
in its own subprocess, interleaved across rounds, and summarise.

Round r visits the configurations in an order rotated by r, so slow drift of the machine
(thermal, background load) spreads over all configurations instead of favouring the ones timed
first. A configuration that crashes, hangs or cannot run is reported with its reason and the
run goes on; Ctrl-C stops the schedule and keeps everything measured so far.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mvdeploy.backends.timing import run_child, subprocess_env
from mvdeploy.bench import aihub, android, targets
from mvdeploy.bench.artifacts import Prepared, model_gmacs, prepare_all
from mvdeploy.bench.matrix import BenchConfig, Matrix, Timing
from mvdeploy.bench.row import BenchRow
from mvdeploy.bench.stats import drift, summarise
from mvdeploy.data import load_images, sample_image_paths

Log = Callable[[str], None]


@dataclass
class BenchRun:
    results: list[dict]
    skipped: list[dict]
    peaks: dict[int, dict] = field(default_factory=dict)  # threads -> GEMM peak
    interrupted: bool = False
    seconds: float = 0.0


def measure_peak(threads: int, timeout: float = 120) -> dict:
    """`python -m mvdeploy.bench.roofline THREADS`, pinned like a worker; its JSON line."""
    done = subprocess.run([sys.executable, "-m", "mvdeploy.bench.roofline", str(threads)],
                          env=subprocess_env(threads), capture_output=True, text=True,
                          timeout=timeout)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"threads": threads, "gflops": None, "error": f"exit {done.returncode}"}
    return json.loads(lines[-1])


def _time_once(cfg: BenchConfig, prepared: Prepared, weights: Path | None, inputs: Path,
               timing: Timing, work: Path, opts: android.AndroidOptions | None) -> dict:
    if cfg.target == "android":
        return android.run_config(cfg, prepared.artifact, timing, opts or android.AndroidOptions())
    spec = {"runtime": cfg.runtime, "artifact": str(prepared.artifact), "model": cfg.model,
            "patch": cfg.patch, "weights": str(weights) if weights else None, "impl": cfg.impl,
            "precision": cfg.precision, "inputs": str(inputs), "threads": cfg.threads,
            "batch": cfg.batch, "warmup": timing.warmup, "min_runs": timing.min_runs,
            "min_seconds": timing.min_seconds, "accelerator": cfg.accelerator,
            "target": cfg.target, "result": str(work / "result.json")}
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    (work / "result.json").unlink(missing_ok=True)
    code, err = run_child(["-m", "mvdeploy.bench.worker", str(spec_path)], cfg.threads,
                           timing.timeout_s)
    result_path = work / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    return {"status": "failed",
            "error": f"worker crashed (exit {code})" + (f": {err}" if err else "")}


def _summarise(cfg: BenchConfig, rounds: list[dict], prepared: Prepared, gmacs: float,
               peak: dict | None) -> BenchRow:
    row = {"artifact": str(prepared.artifact), "size_mb": prepared.size_mb,
           "fidelity": prepared.fidelity, "gmacs": gmacs, "rounds": len(rounds),
           "device_fidelity": rounds[-1].get("device_fidelity") if rounds else None}
    bad = [r for r in rounds if r.get("status") != "ok"]
    if bad or not rounds:
        first = bad[0] if bad else {"status": "failed", "error": "not measured"}
        return BenchRow(cfg, first["status"], first.get("error"), **row,
                        device=first.get("device"))
    if "samples_ms" in rounds[0]:
        samples = [s for r in rounds for s in r["samples_ms"]]
        latency = summarise(samples).to_dict()
        round_p50 = [float(np.median(r["samples_ms"])) for r in rounds]
    else:  # android: benchmark_model's own summary per round (the last round's figures)
        latency = rounds[-1]["latency_ms"]
        round_p50 = [r["latency_ms"]["p50"] or r["latency_ms"]["mean"] for r in rounds]
    p50 = latency["p50"] or latency["mean"]
    gflops = 2 * gmacs * cfg.batch / (p50 / 1e3) if p50 else None
    peak_gflops = (peak or {}).get("gflops")
    return BenchRow(
        cfg, "ok", None, **row,
        latency_ms=latency, round_p50_ms=round_p50, drift=drift(round_p50),
        load_ms=_median(r["load_ms"] for r in rounds),
        first_ms=_median(r["first_ms"] for r in rounds),
        peak_rss_mb=max((r.get("peak_rss_mb") or 0) for r in rounds) or None,
        torch_imported=any(r.get("torch_imported") for r in rounds),
        throughput_ips=1e3 * cfg.batch / p50 if p50 else None,
        gflops=gflops, peak_gflops=peak_gflops,
        peak_fraction=gflops / peak_gflops if gflops and peak_gflops else None,
        device=rounds[-1].get("device"))


def _median(values) -> float | None:
    """Median of the figures a runtime reported (AI Hub reports no first inference)."""
    known = [v for v in values if v is not None]
    return float(np.median(known)) if known else None


def _device_feeds(work: Path, weights: dict[str, Path]) -> aihub.Feeds:
    """For --validate-on-device: the bundled photos in the artifact's own input layout (its
    local runtime's `prepare`), PyTorch's outputs for them and the export's tolerance; the task
    and output kind from the record the export wrote beside the file."""
    import torch

    from mvdeploy.backends import get_backend
    from mvdeploy.models import create_model
    from mvdeploy.pipeline.exporter import APP_METADATA
    from mvdeploy.pipeline.manifest import read_manifest
    from mvdeploy.pipeline.validate import Tolerance
    from mvdeploy.tasks import get_task

    def feeds(cfg: BenchConfig, artifact: Path):
        x = np.load(_inputs(work, cfg.resolution))
        session = get_backend(cfg.format).load(artifact)
        per_photo = [session.prepare(x[i:i + cfg.batch]) for i in range(0, len(x), cfg.batch)]
        per_photo = [p for p in per_photo if len(next(iter(p.values()))) == cfg.batch]
        (name,) = per_photo[0]
        model = create_model(cfg.model, patch_sizes=cfg.patch, weights=weights[cfg.key]).eval()
        with torch.inference_mode():
            reference = model(torch.from_numpy(x[:len(per_photo) * cfg.batch])).numpy()
        app = json.loads((artifact.parent / APP_METADATA).read_text())
        task = get_task(app["task"])
        if app["output_kind"] == "probabilities":
            reference = task.softmax(reference)
        tolerance = read_manifest(artifact.parent / "manifest.json").validation["tolerance"]
        return aihub.OnDevice({name: [p[name] for p in per_photo]}, reference,
                              Tolerance(**tolerance), task.compare)

    return feeds


def _inputs(work: Path, resolution: tuple[int, int]) -> Path:
    """The bundled real photos, preprocessed at this resolution, as one .npy for the workers."""
    h, w = resolution
    path = work / f"inputs_{h}x{w}.npy"
    if not path.exists():
        images, _, _ = load_images(sample_image_paths(), h, w)
        np.save(path, images)
    return path


def run_matrix(matrix: Matrix, timing: Timing, *, cache: Path, weights: str | None = None,
               android_opts: android.AndroidOptions | None = None,
               hub: aihub.Hub | None = None, validate_on_device: bool = False,
               log: Log = lambda _: None,
               progress: Callable[[int, int, str], None] = lambda *_: None) -> BenchRun:
    """Everything in the matrix; returns per-configuration rows (ok, failed or unavailable)."""
    began = time.perf_counter()
    run = BenchRun(results=[], skipped=list(matrix.skipped))
    reasons = {c.key: targets.unavailable(c, android_opts) for c in matrix.configs}
    runnable = [c for c in matrix.configs if reasons[c.key] is None]
    prepared = prepare_all(runnable, cache, weights, log) if runnable else {}
    gmacs: dict[tuple, float] = {}
    for c in matrix.configs:
        if (c.model, c.patch, c.resolution) not in gmacs:
            gmacs[(c.model, c.patch, c.resolution)] = model_gmacs(c)
    timed = [c for c in runnable if prepared[c.key].error is None]
    rounds: dict[str, list[dict]] = {c.key: [] for c in timed}
    total, done = len(timed) * timing.repetitions, 0
    with tempfile.TemporaryDirectory(prefix="mvdeploy-bench-") as tmp:
        work = Path(tmp)
        try:
            for threads in sorted({c.threads for c in timed if c.target == "cpu"}):
                log(f"measuring this machine's float32 GEMM peak at {threads} thread(s)")
                run.peaks[threads] = measure_peak(threads)
            if hub is not None:  # AI Hub runs its own repetitions: one job per configuration
                farmed = [c for c in timed if c.target == "aihub"]
                weights = {c.key: prepared[c.key].weights for c in farmed}
                done_jobs = aihub.run_all(
                    farmed, {c.key: prepared[c.key].artifact for c in farmed}, hub,
                    validate=validate_on_device, feeds=_device_feeds(work, weights),
                    progress=progress)
                for key, result in done_jobs.items():
                    rounds[key].append(result)
                timed = [c for c in timed if c.target != "aihub"]
            for r in range(timing.repetitions if timed else 0):
                offset = (r * len(timed)) // timing.repetitions
                for cfg in timed[offset:] + timed[:offset]:
                    progress(done, total, f"round {r + 1}/{timing.repetitions}: {cfg.label}")
                    result = _time_once(cfg, prepared[cfg.key], prepared[cfg.key].weights,
                                        _inputs(work, cfg.resolution), timing, work,
                                        android_opts)
                    rounds[cfg.key].append(result)
                    done += 1
        except KeyboardInterrupt:
            run.interrupted = True
    for cfg in matrix.configs:
        if reasons[cfg.key]:
            row = BenchRow(cfg, "unavailable", reasons[cfg.key])
        elif prepared[cfg.key].error:
            row = BenchRow(cfg, "failed", prepared[cfg.key].error)
        elif rounds.get(cfg.key) or not run.interrupted:
            row = _summarise(cfg, rounds[cfg.key], prepared[cfg.key],
                             gmacs[(cfg.model, cfg.patch, cfg.resolution)],
                             run.peaks.get(cfg.threads))
        else:
            row = BenchRow(cfg, "interrupted", "not measured before Ctrl-C")
        run.results.append(row.to_dict())
    run.seconds = time.perf_counter() - began
    return run
