"""Benchmark reports: versioned JSON, CSV, Markdown, PNG plots, and comparing two runs.

JSON is the source of truth (schema "mvdeploy.bench", version SCHEMA_VERSION); CSV, Markdown
and plots are derived from it, so `mvdeploy bench --report results.json` can redraw them.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

from mvdeploy.bench import android
from mvdeploy.bench.row import BenchRow
from mvdeploy.errors import ConfigError
from mvdeploy.files import write_atomic
from mvdeploy.pipeline.manifest import library_versions, write_json
from mvdeploy.version import __version__

SCHEMA = "mvdeploy.bench"
SCHEMA_VERSION = 1
CSV_COLUMNS = [
    "key", "model", "preset", "patch", "resolution", "runtime", "precision", "threads", "batch",
    "target", "accelerator", "impl", "status", "p50_ms", "p90_ms", "p99_ms", "min_ms",
    "mean_ms", "std_ms", "cv", "noisy", "runs", "rounds", "drift", "load_ms", "first_ms",
    "peak_rss_mb", "torch_imported", "size_mb", "gmacs", "gflops", "peak_fraction", "snr_db",
    "device", "compute_units", "device_snr_db", "device_passed", "job_url", "error",
]
REQUIRED_RESULT_KEYS = {"key", "model", "patch", "preset", "resolution", "runtime", "precision",
                        "threads", "batch", "target", "accelerator", "impl", "status", "error"}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    libs = library_versions()
    try:
        from importlib.metadata import version

        libs["matplotlib"] = version("matplotlib")
    except Exception:
        libs["matplotlib"] = None
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "usable_cpus": affinity,
            "os": platform.platform(), "python": platform.python_version(),
            "mvdeploy": __version__, "libraries": libs, "gpu": _gpu()}


def _gpu() -> dict | None:
    """The CUDA device's name and CUDA version, when torch is already loaded (the cuda target
    loads it to check the device) and sees one; None otherwise, without importing torch."""
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_available():
            return None
        return {"name": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
                "count": torch.cuda.device_count()}
    except Exception:  # a broken driver reports no GPU rather than stopping the report
        return None


def peer_ratios(results: list[dict]) -> list[dict]:
    """ours / transformers p50 for every configuration timed both ways (< 1: ours faster).

    Besides the ratio of the pooled p50s, each interleaved round's ratio: ours and the peer ran
    next to each other in a round, so the spread of those ratios says how far the machine's
    drift (other jobs, frequency changes) can move the pooled figure."""
    def identity(r: dict) -> tuple:
        return (r["model"], r["preset"], tuple(r["resolution"]), r["runtime"], r["precision"],
                r["threads"], r["batch"], r["target"], r["accelerator"])

    ok = [r for r in results if r["status"] == "ok"]
    peers = {identity(r): r for r in ok if r["impl"] == "transformers"}
    out = []
    for r in ok:
        peer = peers.get(identity(r)) if r["impl"] == "mvdeploy" else None
        if peer:
            rounds = _round_ratios(r, peer)
            out.append({"model": r["model"], "runtime": r["runtime"], "threads": r["threads"],
                        "ours_p50_ms": r["latency_ms"]["p50"],
                        "peer_p50_ms": peer["latency_ms"]["p50"],
                        "ratio": r["latency_ms"]["p50"] / peer["latency_ms"]["p50"],
                        "round_ratios": [round(x, 4) for x in rounds],
                        "round_ratio_median": statistics.median(rounds) if rounds else None})
    return out


def _round_ratios(row: dict, against: dict) -> list[float]:
    """Each interleaved round's p50 ratio: the two ran next to each other in every round."""
    return [a / b for a, b in zip(row.get("round_p50_ms") or [],
                                  against.get("round_p50_ms") or [], strict=False)]


def runtime_ratios(results: list[dict]) -> list[dict]:
    """The same file timed by another runtime of its format (OpenVINO on the ONNX file) against
    the format's first runtime (onnxruntime): other p50 / first p50, < 1: the other is faster;
    with each interleaved round's ratio, as for the peer."""
    from mvdeploy.backends import runtimes

    def identity(r: dict) -> tuple:
        return (r["artifact"], r["threads"], r["batch"], r["target"], r["impl"])

    formats = runtimes()
    first = {name: s.runtimes[0].name for name, s in formats.items()}
    ok = [r for r in results if r["status"] == "ok" and r.get("artifact")
          and r["runtime"] in formats]
    base = {identity(r): r for r in ok if first[r["runtime"]] == r["runtime"]}
    out = []
    for r in ok:
        ref = base.get(identity(r)) if first[r["runtime"]] != r["runtime"] else None
        if ref:
            rounds = _round_ratios(r, ref)
            out.append({"model": r["model"], "preset": r["preset"], "precision": r["precision"],
                        "threads": r["threads"], "runtime": r["runtime"], "impl": r["impl"],
                        "against": ref["runtime"], "p50_ms": r["latency_ms"]["p50"],
                        "against_p50_ms": ref["latency_ms"]["p50"],
                        "ratio": r["latency_ms"]["p50"] / ref["latency_ms"]["p50"],
                        "round_ratios": [round(x, 4) for x in rounds]})
    return out


def patch_speedups(results: list[dict]) -> list[dict]:
    """Preset B against A for every configuration timed with both: A p50 / B p50 - 1."""
    def identity(r: dict) -> tuple:
        return (r["model"], tuple(r["resolution"]), r["runtime"], r["precision"], r["threads"],
                r["batch"], r["target"], r["accelerator"], r["impl"], r.get("hub_device"))

    ok = [r for r in results if r["status"] == "ok" and r["latency_ms"].get("p50")]
    a = {identity(r): r for r in ok if r["preset"] == "A"}
    out = []
    for b in (r for r in ok if r["preset"] == "B"):
        if identity(b) in a:
            pa, pb = a[identity(b)]["latency_ms"]["p50"], b["latency_ms"]["p50"]
            noisy = bool(a[identity(b)]["latency_ms"].get("noisy")
                         or b["latency_ms"].get("noisy"))
            out.append({"model": b["model"], "runtime": b["runtime"], "precision": b["precision"],
                        "threads": b["threads"], "hub_device": b.get("hub_device"),
                        "a_p50_ms": pa, "b_p50_ms": pb,
                        "b_faster_pct": 100 * (pa / pb - 1), "a_gmacs": a[identity(b)]["gmacs"],
                        "b_gmacs": b["gmacs"], "noisy": noisy})
    return out


def build_report(run, *, timing, command: str) -> dict[str, Any]:
    from dataclasses import asdict

    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command, "environment": environment(), "timing": asdict(timing),
        "peaks": {str(k): v for k, v in run.peaks.items()}, "interrupted": run.interrupted,
        "seconds": round(run.seconds, 1), "results": run.results, "skipped": run.skipped,
        **derived_figures(run.results),
    }


def derived_figures(results: list[dict]) -> dict[str, list[dict]]:
    """What a report computes from its rows; `bench --report` recomputes it, so files written
    by an older mvdeploy gain what a newer one derives."""
    return {"patch_speedups": patch_speedups(results), "peer": peer_ratios(results),
            "runtime_ratios": runtime_ratios(results)}


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and check a results JSON (any version this mvdeploy understands)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not a benchmark JSON: {exc}") from None
    problems = check_schema(data)
    if problems:
        raise ConfigError(f"{path} is not an mvdeploy benchmark result: {problems[0]}")
    return data


def check_schema(data: Any) -> list[str]:
    """What is wrong with a results document (empty list: valid)."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return [f"schema is not {SCHEMA!r}"]
    if data.get("schema_version") != SCHEMA_VERSION:
        return [f"schema_version {data.get('schema_version')!r}, this mvdeploy reads "
                f"{SCHEMA_VERSION}"]
    problems = [f"missing {k}" for k in ("environment", "results", "timing", "peaks")
                if k not in data]
    for i, row in enumerate(data.get("results", [])):
        missing = REQUIRED_RESULT_KEYS - set(row) if isinstance(row, dict) else {"everything"}
        if missing:
            problems.append(f"results[{i}] lacks {', '.join(sorted(missing))}")
            continue
        try:
            BenchRow.from_dict(row)
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"results[{i}] is not a result row: {exc}")
            continue
        latency = row.get("latency_ms") or {}
        if not isinstance(latency, dict):
            problems.append(f"results[{i}] has latency_ms {latency!r}, not a table of numbers")
            continue
        # every figure the reports print or plot must be a number (noisy is a flag)
        odd = {k: v for k, v in latency.items() if v is not None and k != "noisy"
               and (isinstance(v, bool) or not isinstance(v, (int, float)))}
        if odd:
            problems.append(f"results[{i}] has a latency that is not a number: {odd}")
            continue
        if row["status"] == "ok":
            figures = [latency.get(k) for k in ("p50", "mean") if latency.get(k) is not None]
            if not figures:
                problems.append(f"results[{i}] is ok but has no latency")
        elif not row["error"]:
            problems.append(f"results[{i}] is {row['status']} without a reason")
    return problems


def _flat(row: dict) -> dict:
    latency = row.get("latency_ms") or {}
    fidelity = row.get("fidelity") or {}
    h, w = row["resolution"]
    out = {k: row.get(k) for k in CSV_COLUMNS}
    out.update(resolution=f"{h}x{w}", p50_ms=latency.get("p50"), p90_ms=latency.get("p90"),
               p99_ms=latency.get("p99"), min_ms=latency.get("min"), mean_ms=latency.get("mean"),
               std_ms=latency.get("std"), cv=latency.get("cv"), noisy=latency.get("noisy"),
               runs=latency.get("runs"), snr_db=fidelity.get("snr_db"),
               device=describe_device(row["device"]) if row.get("device") else None,
               compute_units=compute_units(row), job_url=(row.get("device") or {}).get("job_url"),
               device_snr_db=(row.get("device_fidelity") or {}).get("snr_db"),
               device_passed=(row.get("device_fidelity") or {}).get("passed"))
    return out


def describe_device(device: dict) -> str:
    """Where a row ran, when not on this machine: an adb phone or an AI Hub device."""
    if device.get("farm") != "aihub":
        return android.describe_device(device)
    system = " ".join(v for v in (device.get("os_family"), device.get("os")) if v)
    facts = ", ".join(f for f in (device.get("chipset"), system) if f)
    return f"{device.get('name')} ({facts + '; ' if facts else ''}AI Hub)"


def compute_units(row: dict) -> str | None:
    """'NPU 180, CPU 3': which compute unit ran how many layers (AI Hub's profile)."""
    units = (row.get("device") or {}).get("compute_units")
    return ", ".join(f"{unit} {count}" for unit, count in units.items()) if units else None


def write_csv(report: dict, path: Path) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in report["results"]:
        writer.writerow(_flat(row))
    write_atomic(path, text.getvalue())


def _num(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _device_snr(row: dict) -> str:
    fidelity = row.get("device_fidelity")
    if not fidelity:
        return "-"
    mark = "" if fidelity["passed"] else " ✗"
    return f"{_num(fidelity.get('snr_db'), 1)}{mark}"


def markdown(report: dict) -> str:
    env = report["environment"]
    timing = report["timing"]
    devices = sorted({describe_device(r["device"]) for r in report["results"] if r.get("device")})
    lines = [
        f"# Benchmark: {len(report['results'])} configurations",
        "",
        f"`{report['command']}`",
        "",
        *([f"Measured on {', '.join(devices)}; driven from this host:", ""] if devices else []),
        f"{env['cpu']}, {env['cores']} cores, {env['os']}, Python {env['python']}, "
        f"mvdeploy {env['mvdeploy']}; {report['created']}; {report['seconds']:.0f} s"
        + (" (**interrupted**: partial results)" if report["interrupted"] else "") + ".",
        *([f"GPU: {env['gpu']['name']} (CUDA {env['gpu']['cuda']})."] if env.get("gpu")
          else []),
        f"Timing: {timing['warmup']} warm-up runs, then at least {timing['min_runs']} runs and "
        f"{timing['min_seconds']:g} s per round, {timing['repetitions']} interleaved round(s), "
        "each configuration in its own process; inputs are the bundled photos.",
    ]
    for threads, peak in sorted(report["peaks"].items()):
        if peak.get("gflops"):
            lines.append(f"Machine peak (float32 GEMM {peak['size']}², {threads} thread(s)): "
                         f"{peak['gflops']:.1f} GFLOP/s.")
    ok = sorted((r for r in report["results"] if r["status"] == "ok"),
                key=lambda r: (r["model"], r["runtime"], r["impl"], r["precision"],
                               r["threads"], r.get("hub_device") or "", r["preset"]))
    units = any(compute_units(r) for r in ok)
    on_device = any(r.get("device_fidelity") for r in ok)
    extra = [name for name, shown in (("device", devices), ("compute units", units),
                                      ("device SNR dB", on_device)) if shown]
    lines += ["", "| model | patch | runtime | accelerator | precision | threads | p50 ms | "
              "p90 ms | p99 ms | CV | load ms | first ms | peak RSS MB | size MB | GFLOP/s | "
              "% of peak | SNR dB |" + "".join(f" {name} |" for name in extra),
              "|---" * (17 + len(extra)) + "|"]
    for r in ok:
        lat, fid = r["latency_ms"], r.get("fidelity") or {}
        runtime = r["runtime"] + (" (transformers)" if r["impl"] == "transformers" else "")
        noisy = " ⚠" if lat.get("noisy") else ""
        fraction = r.get("peak_fraction")
        above = " †" if fraction and fraction > 1 else ""
        lines.append(
            f"| {r['model']} | {r['preset']} | {runtime} | {r['accelerator']} | "
            f"{r['precision']} | {r['threads']} | "
            f"{_num(lat.get('p50'))} | {_num(lat.get('p90'))} | {_num(lat.get('p99'))} | "
            f"{_num(lat.get('cv'), 3)}{noisy} | {_num(r.get('load_ms'), 0)} | "
            f"{_num(r.get('first_ms'), 1)} | {_num(r.get('peak_rss_mb'), 0)} | "
            f"{_num(r.get('size_mb'))} | {_num(r.get('gflops'), 1)} | "
            f"{_num(100 * fraction if fraction else None, 1)}{above} | "
            f"{_num(fid.get('snr_db'), 1)} |"
            + (f" {describe_device(r['device']) if r.get('device') else '-'} |"
               if devices else "")
            + (f" {compute_units(r) or '-'} |" if units else "")
            + (f" {_device_snr(r)} |" if on_device else ""))
    lines.append("")
    lines.append("⚠: coefficient of variation above 10 %, treat as noisy.")
    if any((r.get("peak_fraction") or 0) > 1 for r in ok):
        lines.append("†: above 100 % of the measured GEMM peak, which therefore measured low "
                     "(a busy machine during the peak run): read this column as rough.")
    if report.get("patch_speedups"):
        lines += ["", "## Patch preset B (8,4,2) against A (2,2,2)", "",
                  "| model | runtime | precision | threads | A p50 ms | B p50 ms | B faster by | "
                  "GMACs A → B |", "|---|---|---|---|---|---|---|---|"]
        for s in report["patch_speedups"]:
            on = f" on {s['hub_device']}" if s.get("hub_device") else ""
            lines.append(f"| {s['model']} | {s['runtime']}{on} | {s['precision']} | "
                         f"{s['threads']} | "
                         f"{s['a_p50_ms']:.2f} | {s['b_p50_ms']:.2f} | "
                         f"{s['b_faster_pct']:+.1f} %{' ⚠' if s.get('noisy') else ''} | "
                         f"{s['a_gmacs']:.3f} → {s['b_gmacs']:.3f} |")
        if any(s.get("noisy") for s in report["patch_speedups"]):
            lines.append("")
            lines.append("⚠: A or B was noisy: the difference may be the machine, not the "
                         "patch sizes; measure again before trusting it.")
    if report.get("peer"):
        lines += ["", "## Against the transformers peer (same weights, plain export, patch A)",
                  "", "| model | runtime | threads | ours p50 ms | peer p50 ms | ours / peer | "
                  "per-round ratios: median (min-max) |", "|---|---|---|---|---|---|---|"]
        for p in report["peer"]:
            rounds = p.get("round_ratios") or []
            spread = (f"{p['round_ratio_median']:.2f} ({min(rounds):.2f}-{max(rounds):.2f})"
                      if rounds else "-")
            lines.append(f"| {p['model']} | {p['runtime']} | {p['threads']} | "
                         f"{p['ours_p50_ms']:.2f} | {p['peer_p50_ms']:.2f} | {p['ratio']:.2f} | "
                         f"{spread} |")
    if report.get("runtime_ratios"):
        lines += ["", "## The same file on another runtime", "",
                  "| model | preset | precision | threads | runtime | p50 ms | against | "
                  "its p50 ms | ratio | per-round ratios |", "|---" * 10 + "|"]
        for q in report["runtime_ratios"]:
            rounds = q.get("round_ratios") or []
            spread = f"{min(rounds):.2f}-{max(rounds):.2f}" if rounds else "-"
            whose = " (transformers' file)" if q.get("impl") == "transformers" else ""
            lines.append(f"| {q['model']} | {q['preset']} | {q['precision']} | {q['threads']} | "
                         f"{q['runtime']}{whose} | {q['p50_ms']:.2f} | {q['against']} | "
                         f"{q['against_p50_ms']:.2f} | {q['ratio']:.2f} | {spread} |")
        lines += ["", "ratio: p50 of the runtime / p50 of the format's first runtime on the "
                  "same file (< 1: faster)."]
    other = [r for r in report["results"] if r["status"] != "ok"]
    if other or report["skipped"]:
        lines += ["", "## Not measured", ""]
        lines += [f"- {r['key']}: **{r['status']}**: {r['error']}" for r in other]
        lines += [f"- {s['key']}: skipped: {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


def plot(report: dict, folder: Path) -> list[Path]:
    """latency.png (p50 bars, p90 whiskers, per preset, grouped by backend, one panel per
    model) and tradeoff.png (size vs latency, coloured by fidelity). Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    ok = [r for r in report["results"] if r["status"] == "ok" and r["latency_ms"].get("p50")]
    if not ok:
        return []
    written = []
    models = sorted({r["model"] for r in ok})
    fig, axes = plt.subplots(len(models), 1, figsize=(11, 3.2 * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models, strict=True):
        rows = [r for r in ok if r["model"] == model]
        backends = sorted({_backend(r) for r in rows})
        presets = sorted({r["preset"] for r in rows})
        width = 0.8 / max(len(presets), 1)
        for i, preset in enumerate(presets):
            xs, p50, whisker = [], [], []
            for j, backend in enumerate(backends):
                match = [r for r in rows if _backend(r) == backend and r["preset"] == preset]
                if match:
                    lat = match[0]["latency_ms"]
                    xs.append(j + (i - (len(presets) - 1) / 2) * width)
                    p50.append(lat["p50"])
                    whisker.append(max((lat.get("p90") or lat["p50"]) - lat["p50"], 0))
            ax.bar(xs, p50, width, yerr=[[0] * len(whisker), whisker], capsize=3,
                   label=f"patch {preset}")
        ax.set_xticks(range(len(backends)))
        ax.set_xticklabels(backends, fontsize=8)
        ax.set_ylabel("latency ms (p50, p90 whisker)")
        ax.set_title(model)
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, folder / "latency.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 6))
    measured = [r for r in ok if (r.get("fidelity") or {}).get("snr_db") is not None]
    others = [r for r in ok if r not in measured]
    if measured:
        snr = [min(r["fidelity"]["snr_db"], 150) for r in measured]
        scatter = ax.scatter([r.get("size_mb") or 0 for r in measured],
                             [r["latency_ms"]["p50"] for r in measured], c=snr,
                             cmap="viridis", s=40)
        fig.colorbar(scatter, label="SNR dB vs PyTorch on held-out photos (capped at 150)")
    if others:
        ax.scatter([r.get("size_mb") or 0 for r in others],
                   [r["latency_ms"]["p50"] for r in others], c="lightgrey", edgecolors="grey",
                   s=40, label="no fidelity figure (PyTorch itself, transformers peer)")
        ax.legend(fontsize=8, loc="upper right")
    for r in ok:
        ax.annotate(_backend(r).replace("\n", " ") + f" {r['model'].replace('mobilevit_', '')}"
                    f" {r['preset']}", (r.get("size_mb") or 0, r["latency_ms"]["p50"]),
                    fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("artifact size MB (PyTorch: the weights file)")
    ax.set_ylabel("p50 latency ms (log scale)")
    ax.set_title("size vs latency vs fidelity", fontsize=10)
    fig.tight_layout()
    written.append(_save(fig, folder / "tradeoff.png"))
    plt.close(fig)
    return written


def _backend(r: dict) -> str:
    peer = "/hf" if r["impl"] == "transformers" else ""
    where = f"\n{r['hub_device']}" if r.get("hub_device") else ""
    return f"{r['runtime']}{peer}\n{r['precision']} t{r['threads']}{where}"


def _save(fig, path: Path) -> Path:
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    write_atomic(path, image.getvalue())
    return path


def write_all(report: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "results.json", report)
    write_csv(report, folder / "results.csv")
    md = folder / "results.md"
    write_atomic(md, markdown(report))
    return [folder / "results.json", folder / "results.csv", md, *plot(report, folder)]


FAILING_VERDICTS = ("regression", "failed")  # what makes `bench --compare` exit 1


def compare(old: dict, new: dict, threshold: float = 0.10) -> list[dict]:
    """new / old p50 for every configuration the old run measured; verdict by `threshold`
    (0.10 = 10 %). A configuration that failed in the new run is "failed", one it did not
    measure "missing"; a change where either side was flagged noisy is said to be noisy and
    does not count as a regression."""
    new_rows = {r["key"]: r for r in new["results"]}
    out = []
    for before in (r for r in old["results"] if r["status"] == "ok"):
        key, r = before["key"], new_rows.get(before["key"])
        a = before["latency_ms"]["p50"] or before["latency_ms"]["mean"]
        row = {"key": key, "old_p50_ms": a, "new_p50_ms": None, "ratio": None, "noisy": False}
        if r is None:
            out.append({**row, "verdict": "missing"})
            continue
        if r["status"] != "ok":
            out.append({**row, "verdict": "failed", "error": r.get("error")})
            continue
        b = r["latency_ms"]["p50"] or r["latency_ms"]["mean"]
        noisy = bool(before["latency_ms"].get("noisy") or r["latency_ms"].get("noisy"))
        ratio = b / a
        verdict = ("regression" if ratio > 1 + threshold else
                   "improvement" if ratio < 1 - threshold else "same")
        if noisy and verdict != "same":
            verdict = f"noisy {verdict}"
        out.append({**row, "new_p50_ms": b, "ratio": ratio, "noisy": noisy, "verdict": verdict})
    return out
