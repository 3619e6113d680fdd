"""Time artifacts in the bench worker, one child process per artifact and round.

Shared by `mvdeploy bench` (bench.runner schedules the matrix) and `mvdeploy export` (an int8
artifact's speed beside its float32 twin's). It lives with the backends, below both, so that
the export pipeline times artifacts without importing the bench (which imports the pipeline);
the worker is started by module name, not imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

WORKER = "mvdeploy.bench.worker"  # run as `python -m`, never imported here


def subprocess_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_child(args: list[str], threads: int, timeout: float) -> tuple[int, str]:
    """Run a Python child; Ctrl-C kills it and propagates. Returns (exit code, stderr tail)."""
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL,
                                 stderr=err, env=subprocess_env(threads),
                                 start_new_session=True)  # Ctrl-C reaches the runner only
        try:
            code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            return -1, f"timed out after {timeout:.0f} s"
        except BaseException:
            child.kill()
            child.wait()
            raise
        err.seek(0)
        lines = [line for line in err.read().splitlines() if line.strip()]
        return code, " | ".join(lines[-3:])[-400:]


def time_side_by_side(runtime: str, artifacts: dict[str, Path], images: np.ndarray, *,
                      threads: int, batch: int = 1, rounds: int = 3,
                      min_seconds: float = 0.5) -> dict[str, list[float]]:
    """A short interleaved comparison in the bench worker (one process per artifact and
    round): each artifact's median latency in ms, per round. What `export` uses to put an
    int8 artifact's speed beside its float32 twin's; the benchmark proper is run_matrix."""
    medians: dict[str, list[float]] = {label: [] for label in artifacts}
    with tempfile.TemporaryDirectory(prefix="mvdeploy-speed-") as tmp:
        work = Path(tmp)
        np.save(work / "inputs.npy", images)
        labels = list(artifacts)
        for r in range(rounds):
            for label in labels[r % len(labels):] + labels[:r % len(labels)]:
                spec = {"runtime": runtime, "artifact": str(artifacts[label]),
                        "inputs": str(work / "inputs.npy"), "threads": threads,
                        "batch": batch, "warmup": 5, "min_runs": 20,
                        "min_seconds": min_seconds, "accelerator": "cpu", "target": "cpu",
                        "result": str(work / "result.json")}
                (work / "spec.json").write_text(json.dumps(spec))
                (work / "result.json").unlink(missing_ok=True)
                _, err = run_child(["-m", WORKER, str(work / "spec.json")],
                                    threads, timeout=300)
                result = (json.loads((work / "result.json").read_text())
                          if (work / "result.json").exists() else {"status": "failed",
                                                                   "error": err})
                if result.get("status") != "ok":
                    raise RuntimeError(f"timing {label} failed: {result.get('error')}")
                medians[label].append(float(np.median(result["samples_ms"])))
    return medians
