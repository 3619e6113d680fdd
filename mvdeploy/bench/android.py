"""Android over adb: push the .tflite and LiteRT's `benchmark_model`, run it, parse its output.

benchmark_model reports count, first, min, max, avg and std (newer builds also p5, median and
p95) in microseconds, plus init time, first inference and a memory footprint; it has no
p90/p99, so those stay empty for android results rather than being invented.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mvdeploy.bench.matrix import BenchConfig, Timing

REMOTE_DIR = "/data/local/tmp/mvdeploy"
_RUN = re.compile(r"count=(?P<count>\d+) first=(?P<first>[\d.e+]+) curr=[\d.e+]+ "
                  r"min=(?P<min>[\d.e+]+) max=(?P<max>[\d.e+]+) avg=(?P<avg>[\d.e+]+) "
                  r"std=(?P<std>[\d.e+]+)(?: p5=(?P<p5>[\d.e+]+) median=(?P<median>[\d.e+]+) "
                  r"p95=(?P<p95>[\d.e+]+))?")
_TIMINGS = re.compile(r"Inference timings in us: Init: (?P<init>[\d.e+]+), First inference: "
                      r"(?P<first>[\d.e+]+), Warmup \(avg\): [\d.e+]+, Inference \(avg\): "
                      r"(?P<avg>[\d.e+]+)")
# the peak from periodic monitoring when the tool reports it, else its footprint delta
_PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: "
                   r"(?P<mb>[\d.e+]+)")
_DELTA = re.compile(r"Memory footprint delta from the start of the tool \(MB\): "
                    r"init=[\d.e+]+ overall=(?P<mb>[\d.e+]+)")


@dataclass(frozen=True)
class AndroidOptions:
    benchmark_binary: str | None = None  # LiteRT's benchmark_model built for the device
    adb: str = "adb"
    serial: str | None = None


class AndroidError(Exception):
    pass


def _adb(opts: AndroidOptions, *args: str, timeout: float = 120) -> str:
    cmd = [opts.adb, *(["-s", opts.serial] if opts.serial else []), *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise AndroidError(f"adb not found ({opts.adb}): install Android platform-tools or "
                           "pass --adb PATH") from None
    except subprocess.TimeoutExpired:
        raise AndroidError(f"adb {' '.join(args[:2])} timed out after {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()
        raise AndroidError(f"adb {' '.join(args[:2])} failed (exit {done.returncode}): "
                           f"{tail[-1] if tail else 'no output'}")
    return done.stdout


def devices(opts: AndroidOptions) -> list[str]:
    """Serials of attached devices in the 'device' state (not offline / unauthorized)."""
    out = _adb(AndroidOptions(adb=opts.adb), "devices")
    return [line.split()[0] for line in out.splitlines()[1:]
            if len(line.split()) >= 2 and line.split()[1] == "device"]


# what a results row says about the phone, from `adb shell getprop` (first key present wins)
DEVICE_PROPERTIES = {
    "manufacturer": ("ro.product.manufacturer",),
    "model": ("ro.product.model",),
    "soc": ("ro.soc.model", "ro.board.platform", "ro.hardware"),
    "android": ("ro.build.version.release",),
    "sdk": ("ro.build.version.sdk",),
    "abi": ("ro.product.cpu.abi",),
}
_PROP = re.compile(r"^\[(?P<key>[^\]]+)\]: \[(?P<value>.*)\]$")


def parse_getprop(text: str) -> dict[str, str]:
    """`adb shell getprop` lines ("[ro.product.model]: [Pixel 8]") -> the row's device facts."""
    props = {m["key"]: m["value"] for m in map(_PROP.match, text.splitlines()) if m}
    return {field: next((props[k] for k in keys if props.get(k)), None)
            for field, keys in DEVICE_PROPERTIES.items()}


def device_info(opts: AndroidOptions) -> dict:
    """The attached device a row was measured on: serial plus getprop's model, SoC, Android."""
    serial = opts.serial or devices(opts)[0]
    info = parse_getprop(_adb(AndroidOptions(adb=opts.adb, serial=serial), "shell", "getprop"))
    return {"serial": serial, **info}


def describe_device(device: dict) -> str:
    """'Google Pixel 8 (Tensor G3, Android 15, serial 3A1...)' for reports."""
    name = " ".join(v for v in (device.get("manufacturer"), device.get("model")) if v)
    facts = [device.get("soc"), device.get("android") and f"Android {device['android']}",
             device.get("serial") and f"serial {device['serial']}"]
    return f"{name or 'Android device'} ({', '.join(f for f in facts if f)})"


def unavailable_reason(opts: AndroidOptions) -> str | None:
    if not opts.benchmark_binary:
        return ("no benchmark_model binary: pass --benchmark-binary PATH (LiteRT's "
                "benchmark_model built for the device's ABI)")
    if not Path(opts.benchmark_binary).is_file():
        return f"benchmark binary {opts.benchmark_binary} does not exist"
    if shutil.which(opts.adb) is None and not Path(opts.adb).is_file():
        return f"adb not found ({opts.adb}): install Android platform-tools or pass --adb PATH"
    try:
        attached = devices(opts)
    except AndroidError as exc:
        return str(exc)
    if not attached:
        return "no Android device attached (adb devices lists none in the 'device' state)"
    if opts.serial and opts.serial not in attached:
        return f"device {opts.serial} is not attached (attached: {', '.join(attached)})"
    return None


def _push_binary(opts: AndroidOptions) -> str:
    """benchmark_model onto the device, executable; its path there."""
    binary = f"{REMOTE_DIR}/benchmark_model"
    _adb(opts, "shell", f"mkdir -p {REMOTE_DIR}")
    _adb(opts, "push", str(opts.benchmark_binary), binary, timeout=300)
    _adb(opts, "shell", f"chmod +x {binary}")
    return binary


def check_device(opts: AndroidOptions) -> dict:
    """What `mvdeploy doctor --android` reports: the device, and whether the benchmark binary
    runs on it (pushed, then `benchmark_model --help`, whose flag list names --graph). A wrong
    ABI or a binary that is not benchmark_model is said here, before any bench."""
    reason = unavailable_reason(opts)
    if reason:
        return {"ok": False, "error": reason}
    try:
        device = device_info(opts)
        on_device = AndroidOptions(opts.benchmark_binary, opts.adb, device["serial"])
        binary = _push_binary(on_device)
        said = _adb(on_device, "shell", f"{binary} --help 2>&1; echo exit=$?")
    except AndroidError as exc:
        return {"ok": False, "error": str(exc)}
    lines = [line for line in said.splitlines() if line.strip() and not line.startswith("exit=")]
    if not any("--graph" in line for line in lines):
        return {"ok": False, "device": device,
                "error": f"{opts.benchmark_binary} does not run as benchmark_model on "
                         f"{describe_device(device)}: {' | '.join(lines[-2:])[:240] or 'no output'}"
                         f" (the device's ABI is {device.get('abi') or 'unknown'})"}
    return {"ok": True, "device": device, "benchmark_binary": str(opts.benchmark_binary)}


def parse_benchmark_output(text: str) -> dict:
    """benchmark_model's stdout -> latency figures in ms; raises AndroidError when it has none."""
    runs = list(_RUN.finditer(text))
    timings = _TIMINGS.search(text)
    if not runs or not timings:
        tail = [line for line in text.strip().splitlines() if line.strip()][-3:]
        raise AndroidError("benchmark_model printed no timings: " + " | ".join(tail)[:300])
    run = runs[-1]  # the first count= line is the warm-up phase
    us = lambda key: float(run[key]) / 1e3 if run[key] is not None else None  # noqa: E731
    mean, std = us("avg"), us("std")
    peak = _PEAK.search(text) or _DELTA.search(text)
    return {
        "status": "ok",
        "latency_ms": {"runs": int(run["count"]), "min": us("min"), "p50": us("median"),
                       "p90": None, "p99": None, "mean": mean, "std": std,
                       "cv": std / mean if mean else 0.0, "noisy": bool(mean and std / mean > 0.1),
                       "max": us("max"), "p5": us("p5"), "p95": us("p95")},
        "load_ms": float(timings["init"]) / 1e3,
        "first_ms": float(timings["first"]) / 1e3,
        "peak_rss_mb": float(peak["mb"]) if peak else None,
    }


def benchmark_args(cfg: BenchConfig, remote_model: str, timing: Timing) -> list[str]:
    args = [f"--graph={remote_model}", f"--num_threads={cfg.threads}",
            f"--warmup_runs={timing.warmup}", f"--num_runs={timing.min_runs}",
            f"--min_secs={timing.min_seconds:g}", "--report_peak_memory_footprint=true"]
    if cfg.accelerator == "gpu":
        args.append("--use_gpu=true")
    args.append(f"--use_xnnpack={'true' if cfg.accelerator == 'xnnpack' else 'false'}")
    return args


def run_config(cfg: BenchConfig, artifact: Path, timing: Timing, opts: AndroidOptions) -> dict:
    """Push and time one .tflite on the device; a failure is a result, not an exception."""
    try:
        binary = _push_binary(opts)
        remote = f"{REMOTE_DIR}/{artifact.name}"
        _adb(opts, "push", str(artifact), remote, timeout=300)
        command = shlex.join([binary, *benchmark_args(cfg, remote, timing)])
        out = _adb(opts, "shell", command, timeout=timing.timeout_s)
        result = parse_benchmark_output(out)
        result["device"] = device_info(opts)
        return result
    except AndroidError as exc:
        return {"status": "failed", "error": str(exc)}
