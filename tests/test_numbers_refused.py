"""Numbers that cannot work are refused up front with one line, exit 2 (issue 27, item 7):
a NaN tolerance would pass every check and write a bare NaN into manifest.json (not JSON); a
huge batch or class count would fail as an allocation deep in PyTorch."""

from __future__ import annotations

import re

import pytest

from mvdeploy.cli import run
from mvdeploy.errors import ConfigError
from mvdeploy.pipeline.config import load_config


@pytest.mark.parametrize("key", ["validate.fp32_max_rel", "validate.quantized_min_snr_db",
                                 "quantize.min_snr_db", "preprocessing.scale"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_number_is_refused(key, value):
    with pytest.raises(ConfigError, match=re.escape(f"{key} must be a finite number")):
        load_config(overrides={key: float(value)})


def test_a_batch_whose_attention_cannot_fit_is_refused():
    with pytest.raises(ConfigError, match=r"export\.batch: a batch of 1000000 at 256x256"):
        load_config(overrides={"export.batch": 1_000_000})
    load_config(overrides={"export.batch": 8})  # an ordinary batch is fine


def test_a_class_count_beyond_any_dataset_is_refused():
    with pytest.raises(ConfigError, match=r"model\.num_classes must be between 1 and 100000"):
        load_config(overrides={"model.num_classes": 10**12})


@pytest.mark.parametrize("argv", [
    ["export", "--set", "validate.fp32_max_rel=nan"],
    ["export", "--batch", "1000000"],
    ["export", "--batch", "0"],
    ["export", "--threads", "0"],
    ["eval", "model.onnx", "--data", ".", "--threads", "0"],
    ["eval", "model.onnx", "--data", ".", "--limit", "0"],
], ids=["nan", "batch-huge", "batch-0", "export-threads-0", "eval-threads-0", "eval-limit-0"])
def test_on_the_command_line_it_is_one_line_and_exit_2(argv, tmp_path, capsys):
    assert run([*argv, *(["-o", str(tmp_path / "o")] if argv[0] == "export" else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "internal error" not in err and err
    assert not (tmp_path / "o").exists()
