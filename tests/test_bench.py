"""The benchmark harness: statistics, matrix, schema, reports, compare, android (a fake adb
replaying benchmark_model's output), unavailable targets, crashes and Ctrl-C.

No test asserts on a timing value: latencies are checked for presence and consistency only.
Real runs use XXS at 64x64 with --quick and share one artifact cache per session.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mvdeploy.backends.timing import run_child
from mvdeploy.bench import android
from mvdeploy.bench.matrix import QUICK, BenchConfig, Timing, build_matrix, load_suite
from mvdeploy.bench.report import (
    SCHEMA_VERSION,
    build_report,
    check_schema,
    compare,
    load_report,
    markdown,
    write_all,
)
from mvdeploy.bench.runner import BenchRun, run_matrix
from mvdeploy.bench.stats import drift, summarise
from mvdeploy.cli import run
from mvdeploy.errors import ConfigError
from tests.helpers import needs

DATA = Path(__file__).parent / "data"
TRANSCRIPT = DATA / "benchmark_model_android.txt"
# `adb shell getprop` in its output format, with a Pixel 8's published values (no phone here)
GETPROP = DATA / "getprop_android.txt"
SMALL = ["-m", "mobilevit_xxs", "-r", "64", "--quick"]


# ---------------------------------------------------------------- statistics


def test_summarise_known_sample():
    stats = summarise(list(range(1, 101)))
    assert (stats.runs, stats.min, stats.p50, stats.mean) == (100, 1, 50.5, 50.5)
    assert stats.p90 == pytest.approx(90.1) and stats.p99 == pytest.approx(99.01)
    assert stats.std == pytest.approx(29.0115, abs=1e-4)  # sample std (ddof=1)
    assert stats.cv == pytest.approx(stats.std / 50.5) and stats.noisy  # CV 0.57
    steady = summarise([10.0, 10.1, 9.9, 10.0])
    assert not steady.noisy and steady.cv < 0.01
    single = summarise([5.0])
    assert single.std == 0 and single.p99 == 5.0


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [-1.0, 2.0]])
def test_summarise_rejects_bad_samples(bad):
    with pytest.raises(ValueError):
        summarise(bad)


def test_drift_between_rounds():
    assert drift([10.0]) == 0.0
    assert drift([10.0, 11.0, 10.5]) == pytest.approx(1 / 10.5)


# ---------------------------------------------------------------- matrix and suite


def _matrix(**kw):
    args = {"models": ["mobilevit_xxs"], "patches": ["A", "8,4,2"], "resolutions": ["256"],
            "runtimes": ["torch", "onnxruntime", "litert"],
            "precisions": ["fp32", "int8-static"], "threads": [1, 2]}
    args.update(kw)
    return build_matrix(**args)


def test_matrix_expands_and_explains_what_it_drops():
    matrix = _matrix()
    # torch has no int8: 2 patches x (torch fp32 + 2 runtimes x 2 precisions) x 2 threads
    assert len(matrix.configs) == 2 * (1 + 4) * 2
    assert {c.preset for c in matrix.configs} == {"A", "B"}  # 8,4,2 is preset B
    assert len({c.key for c in matrix.configs}) == len(matrix.configs)
    (reason,) = {s["reason"] for s in matrix.skipped}
    assert "fp32 only" in reason and len(matrix.skipped) == 4


def test_matrix_peer_only_where_transformers_can_follow():
    matrix = _matrix(peer=True, precisions=["fp32"], threads=[1])
    peers = [c for c in matrix.configs if c.impl == "transformers"]
    assert {(c.preset, c.runtime) for c in peers} == {("A", "torch"), ("A", "onnxruntime"),
                                                      ("A", "litert")}


@pytest.mark.parametrize(("kw", "match"), [
    ({"runtimes": ["tensorflow"]}, "unknown runtime"),
    ({"precisions": ["int4"]}, "unknown precision"),
    ({"target": "tpu"}, "unknown target"),
    ({"threads": [0]}, "at least 1"),
    ({"patches": ["3,3"]}, "--patch"),
    ({"runtimes": ["coreml"]}, "no configuration in this matrix can run"),
    ({"target": "android", "accelerators": ["ALL"]}, "not available on android"),
])
def test_matrix_errors_name_the_problem(kw, match):
    with pytest.raises(ConfigError, match=match):
        _matrix(**kw)


def test_suite_file(tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text('[suite]\nmodels = ["mobilevit_xs"]\npatches = ["A", [8, 4, 2]]\n'
                     'resolutions = [256]\n[timing]\nrepetitions = 2\nmin_runs = 7\n')
    spec, timing = load_suite(suite)
    assert spec["patches"] == ["A", "8,4,2"] and spec["resolutions"] == ["256"]
    assert (timing.repetitions, timing.min_runs, timing.warmup) == (2, 7, 10)
    suite.write_text("[suite]\nmodel = ['mobilevit_xs']\n")
    with pytest.raises(ConfigError, match="unknown table or key model"):
        load_suite(suite)
    suite.write_text("[timing]\nrepetitions = 0\n")
    with pytest.raises(ConfigError, match="repetitions"):
        load_suite(suite)


def test_shipped_study_suite_is_valid():
    spec, timing = load_suite(Path(__file__).parents[1] / "benchmarks" / "patch_size_study.toml")
    matrix = build_matrix(**{k: v for k, v in spec.items() if k != "name"})
    assert {c.model for c in matrix.configs} == {"mobilevit_xxs", "mobilevit_xs",
                                                 "mobilevit_s"}
    assert timing.repetitions >= 2  # interleaving needs rounds


# ---------------------------------------------------------------- reports and schema


def _row(preset: str, runtime: str, p50: float, impl: str = "mvdeploy", status: str = "ok"):
    cfg = BenchConfig("mobilevit_xxs", "2,2,2" if preset == "A" else "8,4,2", (256, 256),
                      runtime, "fp32", 2, impl=impl)
    row = {**cfg.to_dict(), "status": status, "error": None if status == "ok" else "boom"}
    if status == "ok":
        row.update(latency_ms=summarise([p50 * 0.98, p50, p50 * 1.03]).to_dict(), gmacs=0.3,
                   size_mb=5.0, fidelity={"snr_db": 120.0}, peak_fraction=0.2, load_ms=50,
                   first_ms=9, peak_rss_mb=80, gflops=30.0, rounds=3,
                   round_p50_ms=[p50 * 0.98, p50, p50 * 1.03])
    return row


def _report(rows, skipped=()):
    return build_report(BenchRun(results=rows, skipped=list(skipped), seconds=1.0),
                        timing=Timing(), command="mvdeploy bench (test)")


def test_report_schema_speedups_and_peer():
    rows = [_row("A", "onnxruntime", 10.0), _row("B", "onnxruntime", 8.0),
            _row("A", "onnxruntime", 12.5, impl="transformers"),
            _row("B", "litert", 5.0, status="failed")]
    report = _report(rows)
    assert report["schema_version"] == SCHEMA_VERSION and check_schema(report) == []
    (speedup,) = report["patch_speedups"]
    assert speedup["b_faster_pct"] == pytest.approx(25.0)
    (peer,) = report["peer"]
    assert peer["ratio"] == pytest.approx(0.8)
    assert peer["round_ratios"] == pytest.approx([0.8] * 3)  # per interleaved round
    assert report["environment"]["cores"] == os.cpu_count()
    text = markdown(report)
    assert "| 10.00 | 12.50 | 0.80 | 0.80 (0.80-0.80) |" in text
    assert "| mobilevit_xxs | onnxruntime | fp32 | 2 | 10.00 | 8.00 | +25.0 % |" in text
    assert "**failed**: boom" in text


def test_schema_catches_broken_documents():
    report = _report([_row("A", "onnxruntime", 10.0)])
    assert check_schema({"schema": "other"}) == ["schema is not 'mvdeploy.bench'"]
    broken = json.loads(json.dumps(report))
    del broken["results"][0]["runtime"]
    assert "lacks runtime" in check_schema(broken)[0]
    broken = json.loads(json.dumps(report))
    broken["results"][0].update(status="failed", error=None)
    assert "without a reason" in check_schema(broken)[0]


@needs("bench")
def test_write_all_gives_json_csv_markdown_and_plots(tmp_path):
    report = _report([_row("A", "onnxruntime", 10.0), _row("B", "onnxruntime", 8.0),
                      _row("A", "litert", 6.0), _row("B", "litert", 5.5)])
    written = {p.name for p in write_all(report, tmp_path)}
    assert written == {"results.json", "results.csv", "results.md", "latency.png",
                       "tradeoff.png"}
    assert load_report(tmp_path / "results.json")["results"][0]["key"].startswith("mobilevit")
    with open(tmp_path / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and float(rows[1]["p50_ms"]) == pytest.approx(8.0)
    assert (tmp_path / "latency.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_flags_regressions(tmp_path, capfd):
    old = _report([_row("A", "onnxruntime", 10.0), _row("B", "onnxruntime", 10.0),
                   _row("A", "litert", 10.0)])
    new = _report([_row("A", "onnxruntime", 12.0), _row("B", "onnxruntime", 8.0),
                   _row("A", "litert", 10.5), _row("B", "litert", 4.0)])
    verdicts = {r["key"].split("|")[1] + r["key"].split("|")[3]: r["verdict"]
                for r in compare(old, new, 0.10)}
    assert verdicts == {"2,2,2onnxruntime": "regression", "8,4,2onnxruntime": "improvement",
                        "2,2,2litert": "same"}
    write_all(old, tmp_path / "old")
    write_all(new, tmp_path / "new")
    argv = ["bench", "--compare", str(tmp_path / "old/results.json"),
            str(tmp_path / "new/results.json")]
    assert run(argv) == 1  # a regression
    assert "regression" in capfd.readouterr().out
    assert run([*argv, "--threshold", "0.5", "--json"]) == 0
    assert all(r["verdict"] == "same" for r in json.loads(capfd.readouterr().out))


def test_compare_reports_failed_missing_and_noisy_configurations():
    old = _report([_row("A", "onnxruntime", 10.0), _row("B", "onnxruntime", 10.0),
                   _row("A", "litert", 10.0)])
    noisy = _row("A", "litert", 20.0)
    noisy["latency_ms"]["noisy"] = True
    new = _report([_row("A", "onnxruntime", 10.0, status="failed"), noisy])
    verdicts = {r["key"].split("|")[1] + r["key"].split("|")[3]: r["verdict"]
                for r in compare(old, new, 0.10)}
    assert verdicts == {"2,2,2onnxruntime": "failed", "8,4,2onnxruntime": "missing",
                        "2,2,2litert": "noisy regression"}


def test_compare_rejects_foreign_files_in_one_line(tmp_path, capfd):
    (tmp_path / "x.json").write_text("{not json")
    assert run(["bench", "--compare", str(tmp_path / "x.json"), str(tmp_path / "x.json")]) == 2
    err = capfd.readouterr().err.strip()
    assert "not a benchmark JSON" in err and "\n" not in err
    report = _report([_row("A", "onnxruntime", 10.0)])
    report["results"][0]["latency_ms"]["p50"] = "10 ms"  # a string where a number belongs
    (tmp_path / "y.json").write_text(json.dumps(report))
    assert run(["bench", "--compare", str(tmp_path / "y.json"), str(tmp_path / "y.json")]) == 2
    err = capfd.readouterr().err.strip()
    assert "latency that is not a number" in err and "\n" not in err



@pytest.mark.parametrize("latency", ["12 ms", {"p50": 10.0, "p90": "slow"}])
@pytest.mark.parametrize("command", ["--compare", "--report"])
def test_a_latency_that_is_not_numbers_is_one_line_for_compare_and_report(tmp_path, capfd,
                                                                          latency, command):
    report = _report([_row("A", "onnxruntime", 10.0)])
    report["results"][0]["latency_ms"] = latency
    path = tmp_path / "results.json"
    path.write_text(json.dumps(report))
    argv = ["bench", "--compare", str(path), str(path)] if command == "--compare" else \
        ["bench", "--report", str(path)]
    assert run(argv) == 2
    err = capfd.readouterr().err.strip()
    assert "is not an mvdeploy benchmark result" in err and "\n" not in err
    assert "internal error" not in err and "Traceback" not in err


def test_compare_keeps_every_configuration_distinguishable_at_80_columns(tmp_path, capfd,
                                                                         monkeypatch):
    from rich.console import Console

    from mvdeploy import cli

    one, two = _row("A", "onnxruntime", 10.0), _row("A", "onnxruntime", 10.0)
    two.update(BenchConfig("mobilevit_xxs", "2,2,2", (256, 256), "onnxruntime", "fp32",
                           4).to_dict())  # only the thread count differs, late in the key
    assert one["key"] != two["key"] and one["key"][:40] == two["key"][:40]
    old = _report([one, two])
    new = _report([_row("A", "onnxruntime", 10.0), {**two, "latency_ms": {
        **two["latency_ms"], "p50": 20.0, "mean": 20.0}}])
    for name, report in (("old", old), ("new", new)):
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
    monkeypatch.setattr(cli, "console", Console(width=80, force_terminal=False))
    assert run(["bench", "--compare", str(tmp_path / "old.json"),
                str(tmp_path / "new.json")]) == 1
    printed = capfd.readouterr().out
    assert max(len(line) for line in printed.splitlines()) <= 80
    assert "…" not in printed  # wrapped, not cut: the part that differs is printed
    assert "t2|b1" in printed and "t4|b1" in printed

# ---------------------------------------------------------------- subprocesses


def test_child_crash_and_timeout_are_results():
    code, _ = run_child(["-c", "import os, sys; sys.stderr.write('dying'); os._exit(3)"], 1, 30)
    assert code == 3
    code, err = run_child(["-c", "import time; time.sleep(30)"], 1, 1)
    assert code == -1 and "timed out" in err


# ---------------------------------------------------------------- android (fake adb)

FAKE_ADB = '''#!{python}
"""A fake adb: lists FAKE_ADB_DEVICES, accepts push/shell, and answers benchmark_model with a
recorded-format transcript (or fails like a broken binary when FAKE_ADB_FAIL is set)."""
import os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a") as log:
    log.write(" ".join(args) + "\\n")
if args[:1] == ["-s"]:
    args = args[2:]
if args[0] == "devices":
    print("List of devices attached")
    for serial in filter(None, os.environ.get("FAKE_ADB_DEVICES", "").split(",")):
        print(serial + "\\tdevice")
    print()
elif args[0] == "push":
    print(args[1] + ": 1 file pushed, 0 skipped.")
elif args[0] == "shell" and args[1] == "getprop":
    sys.stdout.write(open(os.environ["FAKE_ADB_GETPROP"]).read())
elif args[0] == "shell" and "benchmark_model --help" in args[1]:
    if os.environ.get("FAKE_ADB_WRONG_ABI"):  # what Android's shell says of an x86-64 build
        print("/system/bin/sh: /data/local/tmp/mvdeploy/benchmark_model: not executable: "
              "64-bit ELF file")
        print("exit=126")
    else:  # the head of benchmark_model's flag list
        print("Flags:")
        print("\t--num_runs=50\tint32\toptional\texpected number of runs")
        print("\t--graph=\tstring\toptional\tgraph file name")
        print("exit=1")
elif args[0] == "shell" and "benchmark_model --graph" in args[1]:
    if os.environ.get("FAKE_ADB_FAIL"):
        print("ERROR: Failed to allocate tensors!", file=sys.stderr)
        print("ERROR: Benchmarking failed.", file=sys.stderr)
        sys.exit(1)
    sys.stdout.write(open(os.environ["FAKE_ADB_TRANSCRIPT"]).read())
'''


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    adb = tmp_path / "adb"
    adb.write_text(FAKE_ADB.format(python=sys.executable))
    adb.chmod(0o755)
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake")
    log = tmp_path / "adb.log"
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setenv("FAKE_ADB_TRANSCRIPT", str(TRANSCRIPT))
    monkeypatch.setenv("FAKE_ADB_GETPROP", str(GETPROP))
    monkeypatch.setenv("FAKE_ADB_DEVICES", "emulator-5554")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return {"adb": adb, "binary": binary, "log": log}


def test_parse_benchmark_model_transcript():
    parsed = android.parse_benchmark_output(TRANSCRIPT.read_text())
    latency = parsed["latency_ms"]
    assert latency["runs"] == 5  # the timed phase, not the warm-up's count=87
    assert (latency["min"], latency["p50"], latency["mean"]) == pytest.approx((5.012, 5.098,
                                                                              5.1426))
    assert latency["p90"] is None and latency["p95"] == 5.301  # the tool has no p90/p99
    assert (parsed["load_ms"], parsed["first_ms"], parsed["peak_rss_mb"]) == pytest.approx((
        31.204, 14.211, 38.2852))
    old_format = ("count=50 first=249042 curr=250889 min=247067 max=254474 avg=249684 "
                  "std=1442\nInference timings in us: Init: 16242, First inference: 360262, "
                  "Warmup (avg): 304586, Inference (avg): 249684\n")
    assert android.parse_benchmark_output(old_format)["latency_ms"]["p50"] is None
    with pytest.raises(android.AndroidError, match="printed no timings"):
        android.parse_benchmark_output("ERROR: Failed to allocate tensors!")


@needs("tflite")
def test_android_without_device_or_binary_is_unavailable(fake_adb, tmp_path, capfd,
                                                         monkeypatch):
    monkeypatch.setenv("FAKE_ADB_DEVICES", "")
    argv = ["bench", "--target", "android", *SMALL, "-p", "A", "--out", str(tmp_path / "o"),
            "--cache", str(tmp_path / "cache"), "--adb", str(fake_adb["adb"]), "--json"]
    assert run([*argv, "--benchmark-binary", str(fake_adb["binary"])]) == 1  # nothing measured
    said = capfd.readouterr()
    (row,) = json.loads(said.out)["results"]
    assert row["status"] == "unavailable" and "no Android device attached" in row["error"]
    assert "nothing was measured: none of the 1 configuration(s)" in said.err
    assert not (tmp_path / "cache" / "artifacts").exists()  # nothing exported for nothing
    assert run([*argv, "--force"]) == 1
    (row,) = json.loads(capfd.readouterr().out)["results"]
    assert "pass --benchmark-binary" in row["error"]


@pytest.fixture(scope="session")
def bench_cache(tmp_path_factory):
    """One artifact cache for every real bench run of the session."""
    return tmp_path_factory.mktemp("bench_cache")


@pytest.mark.slow
def test_android_run_parses_into_the_same_schema(fake_adb, bench_cache, tmp_path, capfd):
    argv = ["bench", "--target", "android", *SMALL, "-p", "A", "-t", "4", "--out",
            str(tmp_path / "o"), "--cache", str(bench_cache), "--adb", str(fake_adb["adb"]),
            "--benchmark-binary", str(fake_adb["binary"]), "--accelerator", "xnnpack,gpu",
            "--json"]
    assert run(argv) == 0
    report = json.loads(capfd.readouterr().out)
    assert check_schema(report) == []
    rows = {r["accelerator"]: r for r in report["results"]}
    assert set(rows) == {"xnnpack", "gpu"} and all(r["status"] == "ok" for r in rows.values())
    assert rows["xnnpack"]["latency_ms"]["p50"] == pytest.approx(5.098)
    assert rows["xnnpack"]["load_ms"] == pytest.approx(31.204)
    assert rows["xnnpack"]["peak_rss_mb"] == pytest.approx(38.2852)
    # each row names the phone it ran on (never this host) and its accelerator
    for row in rows.values():
        assert row["device"] == {"serial": "emulator-5554", "manufacturer": "Google",
                                 "model": "Pixel 8", "soc": "Tensor G3", "android": "15",
                                 "sdk": "35", "abi": "arm64-v8a"}
        assert row["peak_fraction"] is None  # this host's GEMM peak says nothing of a phone
    text = markdown(report)
    assert "Measured on Google Pixel 8 (Tensor G3, Android 15, serial emulator-5554)" in text
    table = [line for line in text.splitlines() if line.startswith("| mobilevit_xxs")]
    assert sorted(line.split(" | ")[3] for line in table) == ["gpu", "xnnpack"]
    assert all(line.endswith("| Google Pixel 8 (Tensor G3, Android 15, serial "
                             "emulator-5554) |") for line in table)
    calls = fake_adb["log"].read_text()
    assert "push" in calls and "mobilevit_xxs_A_64x64.tflite" in calls
    assert "--num_threads=4" in calls and "--use_xnnpack=true" in calls
    assert "--use_gpu=true --use_xnnpack=false" in calls


@pytest.mark.slow
def test_android_failing_binary_is_reported_and_the_run_goes_on(fake_adb, bench_cache,
                                                                 tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("FAKE_ADB_FAIL", "1")
    argv = ["bench", "--target", "android", *SMALL, "-p", "A", "--out", str(tmp_path / "o"),
            "--cache", str(bench_cache), "--adb", str(fake_adb["adb"]),
            "--benchmark-binary", str(fake_adb["binary"]), "--json"]
    assert run(argv) == 1  # a failed configuration
    (row,) = json.loads(capfd.readouterr().out)["results"]
    assert row["status"] == "failed" and "Benchmarking failed" in row["error"]
    assert (tmp_path / "o" / "results.json").exists()


# ---------------------------------------------------------------- targets we do not have


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@needs("onnx")
def test_cuda_is_unavailable_with_its_reason(tmp_path, capfd):
    argv = ["bench", "--target", "cuda", *SMALL, "-p", "A", "-b", "torch,onnxruntime",
            "--accelerator", "cuda,tensorrt", "--out", str(tmp_path), "--json"]
    assert run(argv) == 1  # nothing measured is not success
    said = capfd.readouterr()
    rows = json.loads(said.out)["results"]
    assert said.err.strip().splitlines()[-1].startswith("mvdeploy: nothing was measured")
    assert {r["status"] for r in rows} == {"unavailable"}
    by_runtime = {(r["runtime"], r["accelerator"]): r["error"] for r in rows}
    assert "torch.cuda.is_available() is False" in by_runtime[("torch", "cuda")]
    assert "TensorrtExecutionProvider" in by_runtime[("onnxruntime", "tensorrt")]
    assert ("torch", "tensorrt") not in by_runtime  # TensorRT is onnxruntime's provider
    assert (tmp_path / "results.md").exists()


GPU_STUDY = Path(__file__).parents[1] / "benchmarks" / "gpu_study.py"


def test_gpu_study_plans_every_gpu_path_without_a_gpu():
    """The plan is the matrix the two suites build: eager fp32/fp16 and ORT CUDA; compiled
    fp16 and TensorRT; XXS/XS/S x A/B x batch 1 and 32; no eager row on TensorRT."""
    done = subprocess.run([sys.executable, str(GPU_STUDY), "--plan"], capture_output=True,
                          text=True, check=True)
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("  ")]
    paths = {(r[3], r[4], r[7]) for r in rows}  # runtime, precision, accelerator
    assert paths == {("torch", "fp32", "cuda"), ("torch", "fp16", "cuda"),
                     ("onnxruntime", "fp32", "cuda"), ("onnxruntime", "fp16", "cuda"),
                     ("torch-compile", "fp16", "cuda"), ("onnxruntime", "fp16", "tensorrt")}
    assert {(r[0], r[1], r[6]) for r in rows} == {
        (m, p, b) for m in ("mobilevit_xxs", "mobilevit_xs", "mobilevit_s")
        for p in ("A", "B") for b in ("b1", "b32")}
    assert "in all: 132 worker runs" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_study_without_a_gpu_is_one_line_and_measures_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(GPU_STUDY), "--out", str(tmp_path / "g")],
                          capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "no CUDA device here" in done.stderr
    assert "nothing was measured" in done.stderr and not (tmp_path / "g").exists()


@pytest.mark.skipif(sys.platform == "darwin", reason="runs Core ML on macOS")
@needs("coreml")
def test_apple_target_needs_macos(tmp_path, capfd):
    argv = ["bench", "--target", "apple", *SMALL, "-p", "A", "--out", str(tmp_path), "--json"]
    assert run(argv) == 1
    (row,) = json.loads(capfd.readouterr().out)["results"]
    assert row["status"] == "unavailable" and "need macOS" in row["error"]
    # comparing against a run that measured nothing says so, one line, exit 1
    write_all(_report([_row("A", "onnxruntime", 10.0)]), tmp_path / "old")
    assert run(["bench", "--compare", str(tmp_path / "old" / "results.json"),
                str(tmp_path / "results.json")]) == 1
    err = capfd.readouterr().err.strip()
    assert err.endswith("measured nothing (every configuration was unavailable or failed): "
                        "there is nothing to compare") and "\n" not in err


def test_bad_bench_flags_are_one_line_exit_2(tmp_path, capfd):
    (tmp_path / "threads.toml").write_text('[suite]\nthreads = "two"\n')
    (tmp_path / "weights.txt").write_text("not a checkpoint")
    for argv, match in [(["--threads", "two"], "whole numbers"),
                        (["--backend", "tensorflow"], "unknown runtime"),
                        (["--suite", str(tmp_path / "none.toml")], "does not exist"),
                        (["--suite", str(tmp_path / "threads.toml")],
                         "[suite] threads: expected int"),
                        (["--weights", str(tmp_path / "weights.txt")], "cannot read checkpoint")]:
        assert run(["bench", *argv, "--out", str(tmp_path)]) == 2
        err = capfd.readouterr().err.strip()
        assert match in err and "\n" not in err and "Traceback" not in err
    assert run(["bench", "--quick", "--out", ""]) == 2
    assert "--out is empty" in capfd.readouterr().err


# ---------------------------------------------------------------- real runs on this machine


@pytest.mark.slow
def test_bench_end_to_end_on_cpu(bench_cache, tmp_path, capfd):
    out = tmp_path / "run"
    argv = ["bench", *SMALL, "-b", "onnxruntime,litert,torch", "-t", "1", "--peer",
            "--out", str(out), "--cache", str(bench_cache)]
    assert run(argv) == 0
    report = load_report(out / "results.json")
    assert check_schema(report) == [] and not report["interrupted"]
    rows = report["results"]
    assert len(rows) == 2 * 3 + 3  # A and B for three runtimes, plus the peer for each (A)
    for r in rows:
        lat = r["latency_ms"]
        assert r["status"] == "ok", r["error"]
        assert lat["runs"] >= QUICK.min_runs and lat["min"] <= lat["p50"] <= lat["p90"]
        assert r["load_ms"] > 0 and r["first_ms"] > 0 and r["peak_rss_mb"] > 10
        assert r["peak_fraction"] > 0 and r["gflops"] > 0 and r["size_mb"] > 1
        # the worker loads exported artifacts through runtimes that import no torch
        assert r["torch_imported"] == (r["runtime"] == "torch")
    fidelity = [r["fidelity"] for r in rows if r["impl"] == "mvdeploy" and r["runtime"] != "torch"]
    assert all(f["status"] == "passed" and f["snr_db"] > 100 for f in fidelity)
    assert report["peaks"]["1"]["gflops"] > 0
    assert len(report["peer"]) == 3 and len(report["patch_speedups"]) == 3
    for name in ("results.csv", "results.md", "latency.png", "tradeoff.png"):
        assert (out / name).stat().st_size > 0
    assert run(argv) == 2  # results exist: refuse without --force
    capfd.readouterr()
    # a second run reuses the cached artifacts (no export), and --compare reads both
    manifests = {p: p.stat().st_mtime_ns for p in bench_cache.rglob("manifest.json")}
    assert run(["bench", *SMALL, "-b", "onnxruntime", "-t", "1", "--out",
                str(tmp_path / "again"), "--cache", str(bench_cache)]) == 0
    assert {p: p.stat().st_mtime_ns for p in bench_cache.rglob("manifest.json")} == manifests
    capfd.readouterr()
    # real timings vary: a threshold no change reaches makes the verdicts and exit certain,
    # and the pairing of configurations across the two files is what is checked
    code = run(["bench", "--compare", str(out / "results.json"),
                str(tmp_path / "again" / "results.json"), "--json", "--threshold", "1000"])
    rows = json.loads(capfd.readouterr().out)
    measured = {r["key"]: r for r in rows if r["verdict"] != "missing"}  # 2 of 9 timed again
    assert code == 0 and len(rows) == 9 and {r["verdict"] for r in measured.values()} == {"same"}
    again = {r["key"]: r["latency_ms"]["p50"]
             for r in json.loads((tmp_path / "again" / "results.json").read_text())["results"]}
    first = {r["key"]: r["latency_ms"]["p50"] for r in report["results"]}
    assert set(measured) == set(again)
    for key, r in measured.items():
        assert r["ratio"] == pytest.approx(again[key] / first[key])


@pytest.mark.slow
def test_crashing_configuration_is_reported_and_others_measured(bench_cache, tmp_path):
    """A corrupt artifact in the cache makes its worker fail; the other config still runs."""
    matrix = build_matrix(models=["mobilevit_xxs"], patches=["A", "B"], resolutions=["64"],
                          runtimes=["onnxruntime"], precisions=["fp32"], threads=[1])
    cache = tmp_path / "cache"
    run_matrix(matrix, QUICK, cache=cache)  # populate
    b = next(c for c in matrix.configs if c.preset == "B")
    (onnx,) = cache.glob("artifacts/*/onnx/mobilevit_xxs_B_64x64.onnx")
    onnx.write_bytes(b"not an onnx model")
    result = run_matrix(matrix, QUICK, cache=cache)
    rows = {r["preset"]: r for r in result.results}
    assert rows["A"]["status"] == "ok"
    assert rows["B"]["status"] == "failed" and rows["B"]["key"] == b.key
    assert rows["B"]["error"] and "Traceback" not in rows["B"]["error"]


@pytest.mark.slow
def test_interrupt_keeps_what_was_measured(bench_cache, tmp_path):
    """Ctrl-C while the second configuration runs: the first keeps its numbers."""
    matrix = build_matrix(models=["mobilevit_xxs"], patches=["A", "B"], resolutions=["64"],
                          runtimes=["onnxruntime"], precisions=["fp32"], threads=[1])

    def progress(done: int, total: int, text: str) -> None:
        if done == 1:  # the moment the second configuration would start
            raise KeyboardInterrupt

    result = run_matrix(matrix, QUICK, cache=bench_cache, progress=progress)
    assert result.interrupted
    statuses = sorted(r["status"] for r in result.results)
    assert statuses == ["interrupted", "ok"]


@pytest.mark.slow
def test_ctrl_c_on_the_command_line_writes_partial_results(bench_cache, tmp_path):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "mvdeploy.cli", "bench", "-m", "mobilevit_xxs", "-r", "64",
           "-p", "A", "-b", "onnxruntime", "-t", "1", "--warmup", "1", "--min-runs", "5",
           "--min-seconds", "3", "--repetitions", "4", "--out", str(out), "--cache",
           str(bench_cache)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # interrupt once round 1 is done and round 2 under way (the plain progress line of a pipe)
    seen = []
    for line in child.stderr:
        seen.append(line)
        if "round 2/4" in line:
            break
    assert any("round 2/4" in line for line in seen), "".join(seen)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "interrupted" in err
    report = load_report(out / "results.json")
    assert report["interrupted"]
    (row,) = report["results"]  # the finished round is kept: a measured row, not a lost one
    assert row["status"] == "ok" and 1 <= row["rounds"] < 4


def test_caveats_for_noisy_speedups_peaks_and_too_many_threads(tmp_path):
    """Figures a reader should not trust are marked as such, not printed plainly."""
    import os

    from mvdeploy.bench.session import plan

    a, b = _row("A", "onnxruntime", 10.0), _row("B", "onnxruntime", 8.0)
    b["latency_ms"]["noisy"] = True
    a["peak_fraction"] = 1.3
    report = _report([a, b])
    (speedup,) = report["patch_speedups"]
    assert speedup["noisy"]
    text = markdown(report)
    assert "A or B was noisy" in text and "+25.0 % ⚠" in text
    assert "130.0 †" in text and "GEMM peak, which therefore measured low" in text
    cores = len(os.sched_getaffinity(0))
    planned = plan(threads=[cores + 1], runtimes=["onnxruntime"], out=tmp_path / "o")
    assert f"--threads {cores + 1} above the {cores} CPUs" in planned.warnings[0]
    assert plan(threads=[1], runtimes=["onnxruntime"], out=tmp_path / "o").warnings == []


# ---------------------------------------------------------------- a second runtime of a format


def test_runtime_ratios_pair_the_same_file_across_runtimes():
    ort_a, ov_a = _row("A", "onnxruntime", 10.0), _row("A", "openvino", 8.0)
    ort_b, ov_b = _row("B", "onnxruntime", 12.0), _row("B", "openvino", 15.0)
    for row, name in ((ort_a, "a.onnx"), (ov_a, "a.onnx"), (ort_b, "b.onnx"), (ov_b, "b.onnx")):
        row["artifact"] = name
    report = _report([ort_a, ov_a, ort_b, ov_b, _row("A", "litert", 5.0)])
    ratios = {(q["preset"], q["runtime"], q["against"]): q["ratio"]
              for q in report["runtime_ratios"]}
    assert ratios == {("A", "openvino", "onnxruntime"): pytest.approx(0.8),
                      ("B", "openvino", "onnxruntime"): pytest.approx(1.25)}
    assert "## The same file on another runtime" in markdown(report)
    assert "| openvino | 8.00 | onnxruntime | 10.00 | 0.80 |" in markdown(report)


def test_openvino_is_timed_only_when_asked_for(tmp_path):
    from mvdeploy.bench.session import plan

    default = {c.runtime for c in plan(threads=[1], out=tmp_path / "o").matrix.configs}
    assert "onnxruntime" in default and "openvino" not in default
    asked = plan(threads=[1], runtimes=["ov"], out=tmp_path / "o").matrix.configs
    assert {c.runtime for c in asked} == {"openvino"} and {c.format for c in asked} == {"onnx"}


@pytest.mark.slow
def test_openvino_times_the_onnx_file_and_computes_what_onnxruntime_does(bench_cache, tmp_path,
                                                                         capfd):
    """Both runtimes load the same cached .onnx (fused attention included); OpenVINO's float32
    outputs equal onnxruntime's to 5e-6 of the largest logit on the photos."""
    pytest.importorskip("openvino")
    from mvdeploy.backends.onnx import load, load_openvino
    from mvdeploy.data import load_images, sample_image_paths

    argv = ["bench", *SMALL, "-p", "A", "-b", "onnxruntime,openvino", "-t", "1", "--out",
            str(tmp_path / "o"), "--cache", str(bench_cache), "--json"]
    assert run(argv) == 0
    report = json.loads(capfd.readouterr().out)
    rows = {r["runtime"]: r for r in report["results"]}
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert rows["openvino"]["artifact"] == rows["onnxruntime"]["artifact"]
    (ratio,) = report["runtime_ratios"]
    assert ratio["ratio"] == pytest.approx(rows["openvino"]["latency_ms"]["p50"]
                                           / rows["onnxruntime"]["latency_ms"]["p50"])
    artifact = Path(rows["openvino"]["artifact"])
    x, _, _ = load_images(sample_image_paths(), 64, 64)
    ort, ov = load(artifact, threads=1), load_openvino(artifact, threads=1)
    # the bench's file takes one image (batch 1), as an app feeds it
    ours = np.concatenate([ort(x[i:i + 1]) for i in range(len(x))])
    theirs = np.concatenate([ov(x[i:i + 1]) for i in range(len(x))])
    assert np.abs(theirs - ours).max() <= 5e-6 * np.abs(ours).max()
    assert len(set(ours.argmax(1).tolist())) > 1  # the photos tell apart: the check can fail


def test_getprop_gives_model_soc_and_android_version():
    device = android.parse_getprop(GETPROP.read_text())
    assert (device["model"], device["soc"], device["android"]) == ("Pixel 8", "Tensor G3", "15")
    # older phones have no ro.soc.model: the board platform stands in
    older = android.parse_getprop("[ro.board.platform]: [msm8998]\n[ro.product.model]: [G8]\n")
    assert older["soc"] == "msm8998" and older["android"] is None
    assert android.describe_device({"serial": "X1", **older}) == "G8 (msm8998, serial X1)"


def test_doctor_checks_the_device_and_that_the_binary_runs_there(fake_adb, capfd,
                                                                 monkeypatch):
    argv = ["doctor", "--android", "--adb", str(fake_adb["adb"]), "--benchmark-binary",
            str(fake_adb["binary"])]
    assert run([*argv, "--json"]) == 0
    report = json.loads(capfd.readouterr().out)["android"]
    assert report["ok"] and report["device"]["model"] == "Pixel 8"
    calls = fake_adb["log"].read_text()
    assert "push" in calls and "benchmark_model --help" in calls
    assert run(argv) == 0
    assert ("android: Google Pixel 8 (Tensor G3, Android 15, serial emulator-5554): "
            in capfd.readouterr().out)
    # a build for another ABI is said before any bench, one line, exit 1
    monkeypatch.setenv("FAKE_ADB_WRONG_ABI", "1")
    assert run(argv) == 1
    err = capfd.readouterr().err.strip()
    assert "does not run as benchmark_model" in err and "ABI is arm64-v8a" in err
    assert "\n" not in err
    # no binary: the same reason the bench would give
    assert run(["doctor", "--android", "--adb", str(fake_adb["adb"])]) == 1
    assert "no benchmark_model binary" in capfd.readouterr().err


# ---------------------------------------------------------------- Qualcomm AI Hub (replayed)
#
# The real qai-hub client runs against tests/aihub_replay.py, a local server answering with
# responses written to the shape of qai-hub 0.56's REST API (tests/data/aihub/recording.json:
# not captured from a live account). The code path is the one users run: mvdeploy's calls into
# qai_hub, and qai_hub's own HTTP, uploads and polling.

ON_S24 = ["--target", "aihub", "--device", "Samsung Galaxy S24", "--models", "mobilevit_xxs",
          "-r", "64"]
HUB = [*ON_S24, "--patch", "A,B", "-b", "litert,onnxruntime"]  # the command, at 64²


@pytest.fixture
def hub_replay(tmp_path, monkeypatch):
    pytest.importorskip("qai_hub")
    from tests.aihub_replay import start_replay

    replay = start_replay(tmp_path / "aihub")
    replay.running_polls = 0  # the client sleeps 10 s after each "running" answer
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(replay.ini))
    yield replay
    replay.stop()


def _recorded_profile(device: str, job: str) -> dict:
    recording = json.loads((Path(__file__).parent / "data" / "aihub" /
                            "recording.json").read_text())
    return recording["profiles"][device][job]


def test_aihub_profile_becomes_a_bench_round():
    """What AI Hub's profile says (its client's dict) is what the row says: per-run times as
    the latency samples, load time, peak memory, layers per compute unit."""
    from mvdeploy.bench.aihub import profile_result

    profile = {"execution_summary": {"estimated_inference_time": 1450,
                                     "all_inference_times": [1500, 1450, 1440, 1470],
                                     "first_load_time": 812000, "warm_load_time": 95000,
                                     "inference_memory_peak_range": (9 * 2**20, 12 * 2**20)},
               "execution_detail": [{"compute_unit": "NPU"}] * 5 + [{"compute_unit": "CPU"}]}
    result = profile_result(profile)
    assert result["samples_ms"] == [1.5, 1.45, 1.44, 1.47]
    assert (result["load_ms"], result["peak_rss_mb"]) == (812.0, 12.0)
    assert result["hub"]["compute_units"] == {"NPU": 5, "CPU": 1}
    assert result["hub"]["warm_load_ms"] == 95.0
    assert profile_result({"execution_summary": {}})["status"] == "failed"


@pytest.mark.slow
@needs("tflite", "onnx", "aihub")
def test_aihub_bench_rows_say_device_compute_units_and_latency(hub_replay, bench_cache,
                                                                tmp_path, capfd):
    out = tmp_path / "o"
    assert run(["bench", *HUB, "--out", str(out), "--cache", str(bench_cache), "--json"]) == 0
    report = json.loads(capfd.readouterr().out)
    rows = {(r["runtime"], r["preset"]): r for r in report["results"]}
    assert set(rows) == {(r, p) for r in ("litert", "onnxruntime") for p in ("A", "B")}
    for (runtime, preset), row in rows.items():
        fmt = {"litert": "tflite", "onnxruntime": "onnx"}[runtime]
        recorded = _recorded_profile("Samsung Galaxy S24", f"mvdeploy mobilevit_xxs {preset} "
                                                           f"fp32 {fmt}")
        assert row["status"] == "ok" and row["hub_device"] == "Samsung Galaxy S24"
        times = [t / 1e3 for t in recorded["all_execution_times"]]
        assert row["latency_ms"]["p50"] == pytest.approx(float(np.median(times)))
        assert row["device"]["name"] == "Samsung Galaxy S24"
        assert row["device"]["chipset"] == "qualcomm-snapdragon-8gen3"
        layers = sum(layer.get("repeat", 1) for layer in recorded["layer_details"])
        assert sum(row["device"]["compute_units"].values()) == layers
        assert row["device"]["job_url"].startswith(hub_replay.url)
    # the files AI Hub received are the artifacts mvdeploy exported and validated
    uploaded = {s["model_bytes"] for s in hub_replay.submitted}
    assert {Path(r["artifact"]).read_bytes() for r in rows.values()} == uploaded
    assert all(s["type"] in ("profile", "inference") for s in hub_replay.submitted)
    # per patch configuration, like CPU rows: B against A on the phone, plotted
    speedups = {s["runtime"]: s for s in report["patch_speedups"]}
    assert speedups["litert"]["hub_device"] == "Samsung Galaxy S24"
    assert speedups["litert"]["b_faster_pct"] > 0
    text = (out / "results.md").read_text()
    assert "Samsung Galaxy S24 (qualcomm-snapdragon-8gen3, Android 14; AI Hub)" in text
    assert "| compute units |" in text and "NPU " in text
    assert (out / "latency.png").exists()
    assert "compute_units" in (out / "results.csv").read_text().splitlines()[0]


@pytest.mark.slow
@needs("tflite", "aihub")
def test_aihub_validates_on_the_device_and_fails_when_the_phone_disagrees(
        hub_replay, bench_cache, tmp_path, capfd):
    argv = ["bench", *ON_S24, "-b", "litert", "-p", "A", "--validate-on-device", "--cache",
            str(bench_cache), "--json"]
    assert run([*argv, "--out", str(tmp_path / "same")]) == 0
    (row,) = json.loads(capfd.readouterr().out)["results"]
    fidelity = row["device_fidelity"]
    assert fidelity["passed"] and fidelity["images"] == 6 and fidelity["snr_db"] > 60
    assert [s["type"] for s in hub_replay.submitted] == ["inference"]  # photos, profiled too
    # the phone whose outputs are off by 30 % noise is caught, one line, exit 1
    hub_replay.output_noise = 0.3
    assert run([*argv, "--out", str(tmp_path / "off")]) == 1
    said = capfd.readouterr()
    (row,) = json.loads(said.out)["results"]
    assert row["device_fidelity"]["passed"] is False
    err = said.err.strip().splitlines()[-1]
    assert err.startswith("mvdeploy: on the device, 1 configuration(s) gave outputs")
    assert "of the largest reference value, above 0.0001" in err  # fp32's own tolerance


@needs("aihub")
def test_aihub_without_a_token_offline_or_unknown_device_is_one_line_exit_2(
        tmp_path, monkeypatch, capfd):
    from tests.aihub_replay import start_replay

    out = tmp_path / "o"
    argv = ["bench", *HUB, "--out", str(out), "--cache", str(tmp_path / "cache")]
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "missing.ini"))
    cases = {"no token": "no AI Hub API token is configured"}
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.qai_hub/client.ini either
    assert run(argv) == 2
    errors = {"no token": capfd.readouterr().err.strip()}
    refused = start_replay(tmp_path / "refused", token="not-the-token")
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(refused.ini))
    assert run(argv) == 2
    errors["refused"] = capfd.readouterr().err.strip()
    cases["refused"] = "AI Hub did not accept the API token"
    refused.stop()
    closed = tmp_path / "closed.ini"  # a server that is not there: offline
    closed.write_text(refused.ini.read_text().replace(refused.url, "http://127.0.0.1:9"))
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(closed))
    assert run(argv) == 2
    errors["offline"] = capfd.readouterr().err.strip()
    cases["offline"] = "cannot reach AI Hub"
    known = start_replay(tmp_path / "known")
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(known.ini))
    assert run([*argv[:4], "Galaxy S99", *argv[5:]]) == 2
    errors["unknown device"] = capfd.readouterr().err.strip()
    cases["unknown device"] = "AI Hub has no device named 'Galaxy S99'"
    known.stop()
    for case, expected in cases.items():
        assert expected in errors[case] and "\n" not in errors[case], (case, errors[case])
    assert not out.exists() and not (tmp_path / "cache").exists()  # nothing exported or written
