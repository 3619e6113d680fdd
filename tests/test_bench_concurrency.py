"""Two benches at once (issue 27, item 4): both exited 0, the second overwriting the first's
results, and both pinned to CPU 0 so each timed the other. Another bench is a real process
here, holding the locks a bench holds while it measures."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from mvdeploy.bench import session
from mvdeploy.cli import run

HOLD = """
import sys, time
from pathlib import Path
from mvdeploy.bench.locks import bench_locks
with bench_locks(Path(sys.argv[1])):
    print("holding", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def other_bench(tmp_path):
    """A second process in bench_locks for tmp_path/other, as a measuring bench would be."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "other")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_bench_into_the_same_out_is_refused_in_one_line(tmp_path, other_bench, capsys):
    began = time.monotonic()
    code = run(["bench", "--model", "mobilevit_xxs", "--resolution", "64", "--runtime",
                "onnxruntime", "--quick", "--out", str(tmp_path / "other")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("mvdeploy: error: another mvdeploy bench (pid ")
    assert f"is writing to {tmp_path / 'other'}" in err[-1]
    assert time.monotonic() - began < 60  # refused before measuring anything
    assert not (tmp_path / "other" / "results.json").exists()


def test_a_bench_while_another_measures_on_this_machine_is_warned(tmp_path, other_bench):
    planned = session.plan(models=["mobilevit_xxs"], resolutions=["64"],
                           runtimes=["onnxruntime"], quick=True, out=tmp_path / "mine")
    (warning,) = [w for w in planned.warnings if "another mvdeploy bench" in w]
    assert f"(pid {other_bench.pid})" in warning and "time each other" in warning


def test_no_warning_when_the_other_bench_has_ended(tmp_path, other_bench):
    other_bench.kill()
    other_bench.wait()  # the kernel drops a dead process's locks: nothing stale
    planned = session.plan(models=["mobilevit_xxs"], resolutions=["64"],
                           runtimes=["onnxruntime"], quick=True, out=tmp_path / "mine")
    assert not [w for w in planned.warnings if "another mvdeploy bench" in w]
