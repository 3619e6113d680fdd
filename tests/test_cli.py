"""The command line: real output, one-line errors with exit code 2, the installed entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from mvdeploy.cli import run
from mvdeploy.models import create_model
from mvdeploy.models.weights import save_checkpoint


def _one_line_error(capsys, argv, match):
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mvdeploy: error:")
    assert "\n" not in err and "Traceback" not in err
    assert match in err
    return err


def test_models_table_has_real_counts(capsys):
    assert run(["models"]) == 0
    out = capsys.readouterr().out
    for count in ("1,272,024", "2,317,848", "5,578,632"):
        assert out.count(count) == 2  # patch A and B
    assert "0.407" in out and "A (2,2,2)" in out and "B (8,4,2)" in out


def test_models_json(capsys):
    assert run(["models", "--json", "-p", "2x4,2,2", "-r", "224", "--family", "v1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["mobilevit_xxs", "mobilevit_xs", "mobilevit_s"]
    xxs = rows[0]
    assert xxs["params"] == 1_272_024
    assert xxs["patch_sizes"] == [[2, 4], [2, 2], [2, 2]]
    assert xxs["resized_stages"] == [32]
    assert 0 < xxs["attention_gmacs"] < xxs["gmacs"]


def test_models_lists_mobilevitv2(capsys):
    """The seven MobileViTv2 widths, with transformers' parameter counts; separable attention
    has no QK^T / AV matmuls, so its MACs are the same under A and B."""
    assert run(["models", "--json", "--family", "v2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows[::2]] == [f"mobilevitv2_{w}" for w in
                                              ("050", "075", "100", "125", "150", "175", "200")]
    v2_100 = [r for r in rows if r["model"] == "mobilevitv2_100"]
    assert [r["params"] for r in v2_100] == [4_901_841] * 2
    assert v2_100[0]["gmacs"] == v2_100[1]["gmacs"] and v2_100[0]["attention_gmacs"] == 0
    assert run(["models"]) == 0
    assert "mobilevitv2_200" in capsys.readouterr().out


def test_models_describes_a_checkpoint(capsys, tmp_path):
    save_checkpoint(create_model("mobilevit_xs", num_classes=7), tmp_path / "w.safetensors")
    assert run(["models", "--weights", str(tmp_path / "w.safetensors"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checkpoint"]["model"] == "mobilevit_xs"
    assert report["checkpoint"]["num_classes"] == 7
    assert {r["model"] for r in report["models"]} == {"mobilevit_xs"}


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["models", "--patch", "3,3"], "one entry per MobileViT stage"),
        (["models", "--resolution", "225"], "not a multiple of 32"),
        (["models", "--bogus"], "No such option"),
        (["modelz"], "No such command"),
        (["models", "--weights", "/nonexistent/ckpt.pt"], "does not exist"),
    ],
)
def test_user_mistakes_are_one_line_exit_2(capsys, argv, match):
    _one_line_error(capsys, argv, match)


def test_corrupt_checkpoint_is_one_line_exit_2(capsys, tmp_path):
    (tmp_path / "w.pt").write_bytes(b"not a checkpoint")
    _one_line_error(capsys, ["models", "-w", str(tmp_path / "w.pt")], "cannot read checkpoint")


def test_doctor_reports_every_component(capsys):
    assert run(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    by_name = {c["package"]: c for c in report["components"]}
    assert by_name["torch"]["importable"] and by_name["torch"]["version"].startswith("2.")
    assert {"onnx", "onnxruntime", "litert-torch", "ai-edge-litert", "coremltools"} <= set(by_name)
    for c in report["components"]:
        assert c["importable"] == (c["error"] is None)
    backends = {b["name"]: b for b in report["backends"]}
    assert backends["torch"]["can_export"] and backends["torch"]["can_run"]
    if sys.platform != "darwin":
        assert not backends["coreml"]["can_run"] and "macOS" in backends["coreml"]["note"]


def test_doctor_table(capsys):
    assert run(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "Backends" in out and "torch" in out


def test_help_and_bare_command(capsys):
    assert run(["--help"]) == 0
    assert "models" in capsys.readouterr().out
    assert run([]) == 0
    assert "doctor" in capsys.readouterr().out


def test_installed_console_script():
    exe = shutil.which("mvdeploy")
    if exe is None:
        pytest.skip("mvdeploy is not installed as a console script (pip install -e .)")
    ok = subprocess.run([exe, "models", "-p", "A", "--json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)[0]["params"] == 1_272_024
    bad = subprocess.run([exe, "models", "-r", "100"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr


def test_resolutions_whose_attention_cannot_fit_are_refused(tmp_path, capfd):
    """4096² with patch 2 would need 256 GiB for one attention matrix: refused up front, in one
    line, by every command that takes a resolution (it used to run 80 s and die)."""
    from mvdeploy.errors import ConfigError
    from mvdeploy.models.patches import (
        attention_bytes,
        check_attention_memory,
        parse_patch_sizes,
    )

    a, b = parse_patch_sizes("A"), parse_patch_sizes("B")
    assert attention_bytes(256, 256, a) == 4 * 4 * (16 * 16) ** 2 * 4  # stage 1: 16x16 patches
    check_attention_memory(2048, 2048, b)  # 1 GiB: allowed
    with pytest.raises(ConfigError, match="5 GiB"):
        check_attention_memory(1536, 1536, a)
    for argv in (["models", "-r", "4096"], ["export", "-r", "4096", "-o", str(tmp_path / "o")],
                 ["bench", "-r", "4096", "--quick", "-o", str(tmp_path / "b")]):
        assert run(argv) == 2
        err = capfd.readouterr().err.strip()
        assert "256 GiB for one attention matrix" in err and "\n" not in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "b").exists()


NOISY_CHILD = """
import os, sys
from mvdeploy.native_output import redirect_native_output
with redirect_native_output():
    os.write(2, b"[cpuinfo_utils.cpp:71] native noise\\n")  # as a C++ library writes it
    print("python noise", file=sys.stderr)
print("after", file=sys.stderr)
"""


@pytest.mark.parametrize(("env", "shown"), [({}, False), ({"MVDEPLOY_VERBOSE": "1"}, True)])
def test_native_output_is_dropped_unless_verbose(env, shown):
    import os

    done = subprocess.run([sys.executable, "-c", NOISY_CHILD], capture_output=True, text=True,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    assert ("native noise" in done.stderr) is shown and ("python noise" in done.stderr) is shown
    assert done.stderr.strip().endswith("after")


def test_verbose_holds_for_one_run_only(capsys):
    import os

    assert run(["--verbose", "models", "--json"]) == 0
    assert "MVDEPLOY_VERBOSE" not in os.environ
    assert "--verbose" in (run(["--help"]), capsys.readouterr().out)[1]


OWN_LINE = ("Building ", "Capturing ", "Saving ", "Converting ", "Validating ", "done: ",
            "mvdeploy: ")


@pytest.mark.slow
def test_an_executorch_export_prints_only_its_own_lines(tmp_path):
    """ExecuTorch and torchao print on import and lowering (torchao's _C_mxfp8, _pytree
    warnings, cpuinfo_utils.cpp): none of it reaches the terminal; --verbose shows it."""
    pytest.importorskip("executorch")
    from mvdeploy.fixtures import checkpoint_dir

    argv = [sys.executable, "-m", "mvdeploy.cli", "export", "-w", str(checkpoint_dir()), "-r",
            "64", "-f", "executorch", "-o", str(tmp_path / "out")]
    import os

    done = subprocess.run(argv, capture_output=True, text=True,  # wide: long paths unwrapped
                          env={**os.environ, "COLUMNS": "1000"})
    assert done.returncode == 0, done.stderr[-2000:]
    foreign = [line for line in done.stderr.splitlines() if line.strip()
               and not line.startswith(OWN_LINE)]
    assert foreign == []
    assert "executorch:" in done.stdout
