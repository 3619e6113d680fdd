"""Converters that die hard and disks that fill: one line, the right exit code, nothing half
written.

A converter runs in a forked child (mvdeploy.isolate): the test format's converter dies the
ways native converters do (C++ abort, hard exit, ENOSPC) after writing half its output. The
full-disk cases are real: a small tmpfs mounted in a private mount namespace (`unshare`), and
real converters or writers filling it; they are skipped where no namespace can be made.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mvdeploy.cli import run
from mvdeploy.isolate import ChildCrashed, describe_exit, run_isolated
from tests.helpers import needs

REPO = Path(__file__).resolve().parents[1]


def _export_fake(out: Path, note: str) -> list[str]:
    return ["export", "-r", "64", "-f", "fake,onnx", "-o", str(out), "--set", f"fake.note={note}",
            "--set", "export.save_program=false"]


in_process = pytest.mark.skipif(sys.platform == "darwin",
                                reason="macOS converts in-process (no fork): a hard death ends it")


@pytest.mark.slow  # fast-suite time (3 minutes on 2 cores): CI's full run keeps it
@in_process
@pytest.mark.parametrize(("note", "said"), [
    ("abort", "converter crashed (exit 134, SIGABRT): terminate called after throwing"),
    ("exit", "converter crashed (exit 3): F0000 converter.cc:1] Check failed"),
])
@needs("onnx")
def test_a_converter_that_dies_hard_is_reported_and_the_export_goes_on(
        with_fake_format, tmp_path, capsys, note, said):
    assert run(_export_fake(tmp_path, note)) == 1
    printed = capsys.readouterr().out
    assert said in printed and "Traceback" not in printed
    assert (tmp_path / "onnx" / "manifest.json").is_file()  # the next format still ran
    assert not (tmp_path / "fake").exists()  # its half-written output is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake-error.log", "onnx"]
    assert said.split(": ", 1)[1] in (tmp_path / "fake-error.log").read_text()


@needs("onnx")
def test_a_converter_that_finds_the_disk_full_stops_the_export(with_fake_format, tmp_path,
                                                               capsys):
    assert run(_export_fake(tmp_path, "full")) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"mvdeploy: error: no space left on the disk holding {tmp_path}: free some "
                   "space there, or write somewhere else")
    assert list(tmp_path.iterdir()) == []  # no partial folder, no log, and onnx never began


@in_process
def test_run_isolated_returns_results_and_reraises_errors():
    assert run_isolated(sum, [1, 2, 3]) == 6
    with pytest.raises(ZeroDivisionError) as caught:
        run_isolated(divmod, 1, 0)
    assert "raised in the converter process" in "".join(caught.value.__notes__)
    with pytest.raises(ChildCrashed, match=r"converter crashed \(exit 7\)"):
        run_isolated(__import__("os")._exit, 7)
    assert describe_exit(-9) == "exit 137, SIGKILL, often the out-of-memory killer"


def _leak_a_temporary_file() -> str:
    handle, name = tempfile.mkstemp(suffix=".mlpackage")  # as coremltools does per conversion
    os.close(handle)
    return name


@in_process
def test_what_a_converter_leaves_in_tmp_goes_with_its_process():
    """Finalisers that would remove temporary files never run in a child that exits hard."""
    leaked = Path(run_isolated(_leak_a_temporary_file))
    assert leaked.name.endswith(".mlpackage") and not leaked.exists()
    assert not leaked.parent.exists()


# -- a real full disk ------------------------------------------------------------------------

def _namespaces_work() -> str | None:
    if not shutil.which("unshare"):
        return "no unshare(1) here"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot mount a tmpfs: {probe.stderr.strip()}"


needs_tmpfs = pytest.mark.skipif(_namespaces_work() is not None,
                                 reason=str(_namespaces_work()))


def _on_small_disk(tmp_path: Path, size: str, argv: list[str], before: str = ""
                   ) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `mvdeploy argv` with tmp_path/disk a tmpfs of `size`; what the disk held after."""
    disk = tmp_path / "disk"
    disk.mkdir()
    quoted = " ".join(f"'{a}'" for a in argv)
    script = (f"mount -t tmpfs -o size={size} tmpfs '{disk}' && {before} "
              f"'{sys.executable}' -m mvdeploy.cli {quoted}; code=$?; "
              f"find '{disk}' -mindepth 1 -printf '%P\\n'; exit $code")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    return done, sorted(done.stdout.split())


def _one_line_full_disk(done: subprocess.CompletedProcess, where: Path) -> None:
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mvdeploy: error: no space left on the disk holding {where}")
    assert "Traceback" not in done.stderr and "frame #" not in done.stderr


@needs_tmpfs
@pytest.mark.slow
def test_saving_the_program_on_a_full_disk_is_one_line_not_an_abort(tmp_path):
    """torch's zip writer aborts the process (exit 134, a C++ backtrace) on a full disk."""
    done, left = _on_small_disk(tmp_path, "1m", ["export", "-r", "64", "-f", "onnx",
                                                 "-o", str(tmp_path / "disk" / "out")])
    _one_line_full_disk(done, tmp_path / "disk" / "out")
    assert left == ["out"]  # an empty folder: no partial .pt2, no log


@needs_tmpfs
@pytest.mark.slow
def test_a_real_converter_on_a_full_disk_is_one_line(tmp_path):
    """ONNX, the quickest converter: the child, the ENOSPC check and the cleanup are the same
    for every format (TFLite on a full disk reads the same, checked by hand)."""
    done, left = _on_small_disk(tmp_path, "2m", ["export", "-r", "64", "-f", "onnx",
                                                 "--set", "export.save_program=false",
                                                 "-o", str(tmp_path / "disk" / "out")])
    _one_line_full_disk(done, tmp_path / "disk" / "out")
    assert left == ["out"]


@needs_tmpfs
@needs("onnx")
def test_bench_results_on_a_full_disk_are_one_line(tmp_path):
    report = json.loads((REPO / "benchmarks" / "results" / "peer_study" /
                         "results.json").read_text())
    report["results"] = report["results"][:6]  # small enough to fit, its redraw is not
    results = tmp_path / "results.json"
    results.write_text(json.dumps(report))
    copy = tmp_path / "disk" / "results.json"
    done, left = _on_small_disk(tmp_path, "48k", ["bench", "--report", str(copy)],
                                before=f"cp '{results}' '{copy}' &&")
    _one_line_full_disk(done, tmp_path / "disk")
    assert all(not name.startswith(".") for name in left), left  # no partial files


@needs_tmpfs
@pytest.mark.slow
def test_the_default_formats_on_a_full_disk_end_in_one_line(tmp_path):
    """ONNX fits, TFLite does not: LLVM's fatal-error path calls exit() in the converter
    child, which ran the exit handler onnxruntime's validation had left in the parent and
    waited forever. Now it ends (the helper's timeout bounds it) with one line, the finished
    ONNX kept and nothing half-written."""
    done, left = _on_small_disk(tmp_path, "8m", ["export", "-r", "64",
                                                 "--set", "export.save_program=false",
                                                 "-o", str(tmp_path / "disk" / "out")])
    _one_line_full_disk(done, tmp_path / "disk" / "out")
    assert "Converting to tflite" in done.stderr
    assert all(not name.split("/")[-1].startswith(".") for name in left), left
    assert [n for n in left if n.startswith("out/") and n.count("/") == 1] == ["out/onnx"]


@needs_tmpfs
@pytest.mark.slow
def test_a_full_tmpdir_is_named_not_reported_as_the_converters_own_error(tmp_path):
    """Core ML on a full TMPDIR said "MIL FileWriter unknown error"."""
    disk = tmp_path / "disk"
    done, _ = _on_small_disk(tmp_path, "1m", ["export", "-r", "64", "-f", "coreml",
                                              "--set", "export.save_program=false",
                                              "-o", str(tmp_path / "out")],
                             before=f"TMPDIR='{disk}'")
    _one_line_full_disk(done, f"{disk} (TMPDIR, where converters write scratch files)")
    assert not (tmp_path / "out" / "coreml").exists()


EXIT_AFTER_ONNXRUNTIME = """
import ctypes, os
import numpy as np, onnxruntime
from onnx import TensorProto, helper
from mvdeploy.isolate import ChildCrashed, run_isolated
from tests.helpers import needs
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
session = onnxruntime.InferenceSession(model.SerializeToString())
session.run(None, {"x": np.ones((1, 4), np.float32)})  # as a validation leaves it
try:
    run_isolated(lambda: ctypes.CDLL(None).exit(5))  # what LLVM's fatal-error path does
except ChildCrashed as exc:
    print(exc, flush=True)
os._exit(0)
"""


def test_a_converter_calling_exit_after_onnxruntime_ran_is_reported_not_stuck():
    pytest.importorskip("onnxruntime")
    done = subprocess.run([sys.executable, "-c", EXIT_AFTER_ONNXRUNTIME], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.stdout.strip() == "converter crashed (exit 5)", done.stderr[-2000:]
